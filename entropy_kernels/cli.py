"""The ``entropy-kernels`` command.

    entropy-kernels info                 versions, build, GPU, backend of every op
    entropy-kernels bench --quick        small shapes (CPU or GPU), prints a table, writes files
    entropy-kernels bench --full         the production-size shapes (GPU)
    entropy-kernels compress IN OUT      EKDF-code the bf16 tensors of a safetensors file / model dir
    entropy-kernels decompress IN OUT    back to plain safetensors, bit-identical
    entropy-kernels inspect PATH         per-tensor size, bits per value, entropy bound

Errors are one line on stderr, ``entropy-kernels: error: ...``, with exit status 2 for a usage
error (bad arguments, OUT that is IN or already exists), 1 for a failure while running (missing or
corrupted input, I/O error) and 130 for Ctrl-C; ``--debug`` adds the traceback. ``compress`` and
``decompress`` write OUT all-or-nothing (see ``docs/cli.md``).

Example
-------
>>> main(["inspect", "/nonexistent/model"])  # stderr: entropy-kernels: error: /nonexistent/model: path does not exist
1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Callable, List, Optional


def _info(_args) -> int:
    import torch

    from . import __version__, _backend
    from .ops import op_table

    print(f"entropy_kernels {__version__} ({Path(__file__).resolve().parent})")
    print(f"torch           {torch.__version__} (CUDA {torch.version.cuda})")
    try:
        import triton

        print(f"triton          {triton.__version__}{' (interpreter)' if _backend.interpreting() else ''}")
    except Exception:
        print("triton          not installed: CUDA ops fall back to the torch reference")
    C = _backend.native()
    if C is None:
        print(f"_C              FAILED to import: {_backend.native_error()}")
    else:
        info = C.build_info()
        cuda = f"CUDA {info['cuda_runtime_version']} for sm {info['cuda_archs']}" if info["with_cuda"] else "CPU only"
        print(f"_C              {cuda} ({info['compiler']})")
        if info["with_cuda"]:
            n = C.cuda_device_count()
            names = ", ".join(C.cuda_device_name(i) for i in range(n)) or "none"
            print(f"_C sees         {n} GPU(s): {names}; driver {C.cuda_driver_version()}")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"torch GPU       {gpu}")
    table = op_table()
    width = max(len(row[0]) for row in table) + 2
    print(f"\n{'op':{width}s}{'cpu':24s} cuda")
    for name, _, cpu, cuda in table:
        print(f"{name:{width}s}{cpu:24s} {cuda}")
    from . import config

    print("\nswitch (environment, read at import)")
    for var, value, meaning in config.describe():
        print(f"{var}={value:3s} {meaning}")
    return 0


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


class UsageError(ValueError):
    """A bad command line (exit status 2, like argparse's own errors)."""


def _error_line(message: str) -> None:
    """The one line every failure prints (a multi-line message is joined into it); results
    already on stdout come first."""
    sys.stdout.flush()
    print(f"entropy-kernels: error: {' '.join(message.split())}", file=sys.stderr, flush=True)


def _check_out_dir(out: Path) -> None:
    """Fail before a long benchmark run, not after it, when its results could not be written."""
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"bench --out {str(out)!r}: {str(probe)!r} exists and is not a directory")


def _bench(args) -> int:
    import torch

    from .benchmarking import cases_for, environment, run_cases, write_results
    from .benchmarking.cases import CASES
    from .benchmarking.progress import run_with_progress
    from .benchmarking.report import markdown_table

    unknown = [name for name in args.ops or [] if name not in CASES]
    if unknown:
        raise UsageError(f"bench --ops: unknown op(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("bench --device cuda: torch sees no GPU")
    _check_out_dir(Path(args.out))
    if args.plot:
        try:
            import matplotlib  # noqa: F401 - checked before minutes of measuring, used at the end
        except ImportError:
            raise UsageError("bench --plot needs matplotlib: pip install 'entropy_kernels[plot]'") from None
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    size = "full" if args.full else "quick"
    if size == "full" and device.type != "cuda":
        print("entropy-kernels: warning: --full shapes are meant for a GPU; running them on CPU will be slow", file=sys.stderr)
    cases = cases_for(args.ops, size, device)
    providers = None
    if args.providers is not None:
        providers = [p.strip() for p in args.providers.split(",") if p.strip()]
        known = {n for c in cases for p in c.providers for n in (p.name, p.name.split(":")[0])}
        bad = [p for p in providers if p not in known]
        if bad or not providers:
            raise UsageError(f"bench --providers: unknown provider(s) {', '.join(bad) or repr(args.providers)}; "
                             f"known: {', '.join(sorted(known))}")
    if device.type != "cuda":
        print("entropy-kernels: note: no GPU here, so these rows time the CPU reference paths (the correctness "
              "fallbacks), not the GPU kernels: expect them to lose to torch.")
    print(f"running {len(cases)} case(s) on {device} ({size})")
    results = run_with_progress(cases, providers, run_cases, log=print if args.verbose else None)
    env = environment(device)
    stem = f"{_slug(env['gpu'] or 'cpu')}_{size}" + (f"_{'-'.join(args.ops)}" if args.ops else "")
    paths = write_results(results, env, Path(args.out), stem)
    print()
    print(markdown_table(results))
    print(f"\nwrote {paths['json']} and {paths['markdown']}")
    if args.plot:
        from .benchmarking.plots import plot_results

        pngs = plot_results(results, Path(args.out) / f"{stem}_plots", title=str(env["gpu"] or env["cpu"]))
        print(f"wrote {len(pngs)} chart(s) into {Path(args.out) / f'{stem}_plots'}")
    if device.type != "cuda":
        print("GPU numbers: the README's table and benchmarks/results/ (committed GPU runs); to measure the kernels, "
              "run `entropy-kernels bench --full` or `bash scripts/gpu_check.sh` on a CUDA machine.")
    failed = [r for r in results if r.kind == "ours" and r.error]
    if failed:
        _error_line(f"{len(failed)} of our measurement(s) failed, first: {failed[0].error} "
                    f"(the table's error column has each)")
        return 1
    return 0


def _compress(args) -> int:
    from .decoding.dfloat_files import compress_path

    t = compress_path(args.src, args.dst, min_numel=args.min_numel, threads=args.threads, progress=not args.quiet,
                      overwrite=args.overwrite)
    print(f"{args.src} -> {args.dst}: {t['tensors_compressed']} of {t['tensors']} tensors EKDF-coded in "
          f"{t['seconds']:.1f} s; size {t['compressed_bytes'] / 2**20:.1f} MiB of {t['original_bytes'] / 2**20:.1f} MiB "
          f"({100 * t['ratio']:.2f}%)")
    if t["bf16_bits_per_value"]:
        over = 100 * (t["bf16_bits_per_value"] / t["bound_bits_per_value"] - 1)
        print(f"coded bf16 tensors: {t['bf16_bits_per_value']:.3f} bits/value; entropy bound "
              f"{t['bound_bits_per_value']:.3f} (+{over:.2f}%); bf16 = 16")
    return 0


def _decompress(args) -> int:
    from .decoding.dfloat_files import decompress_path

    t = decompress_path(args.src, args.dst, progress=not args.quiet, overwrite=args.overwrite)
    print(f"{args.src} -> {args.dst}: {t['tensors']} tensors restored in {t['seconds']:.1f} s")
    return 0


def _inspect(args) -> int:
    from .decoding.dfloat_files import inspect_path

    rows = inspect_path(args.path)
    print(f"{'tensor':48s} {'shape':>18s} {'dtype':>9s} {'MiB':>9s} {'bits/val':>8s} {'bound':>7s}")
    for r in rows:
        bound = f"{r['bound_bits']:7.3f}" if r["bound_bits"] is not None else "      -"
        print(f"{r['name'][:48]:48s} {str(tuple(r['shape'])):>18s} {('ekdf' if r['ekdf'] else r['dtype']):>9s} "
              f"{r['bytes'] / 2**20:9.2f} {r['bits_per_value']:8.3f} {bound}")
    coded = [r for r in rows if r["ekdf"]]
    total = sum(r["bytes"] for r in rows)
    print(f"{len(rows)} tensors, {len(coded)} EKDF-coded, {total / 2**20:.2f} MiB")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (raised as :class:`UsageError`) instead of usage + exit."""

    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _add_file_command(sub, debug: argparse.ArgumentParser, name: str, fn: Callable, help: str, src_help: str,
                      options: Callable[[argparse.ArgumentParser], None] = lambda p: None) -> None:
    """Add subcommand ``name`` running ``fn``: ``src dst``, the arguments ``options`` adds, then
    ``--overwrite`` and ``-q`` (what ``compress`` and ``decompress`` share)."""
    p = sub.add_parser(name, parents=[debug], help=help)
    p.add_argument("src", help=src_help)
    p.add_argument("dst", help="output file or directory: must not exist (see --overwrite), nor be or lie in src")
    options(p)
    p.add_argument("--overwrite", "--force", action="store_true", dest="overwrite",
                   help="replace an existing OUT (only once the new one is complete)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=fn)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="entropy-kernels", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    # also accepted after the subcommand; SUPPRESS keeps a subcommand from resetting the global flag
    debug = _Parser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="print the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p_info = sub.add_parser("info", parents=[debug], help="versions, build, GPU and the backend of each op")
    p_info.set_defaults(fn=_info)

    p_bench = sub.add_parser("bench", parents=[debug], help="benchmark ours vs torch eager vs torch.compile vs floors")
    size = p_bench.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small shapes, CPU-friendly (default)")
    size.add_argument("--full", action="store_true", help="the production-size shapes (GPU)")
    p_bench.add_argument("--ops", nargs="*", help="ops to benchmark (default: all)")
    p_bench.add_argument("--providers", help="comma-separated provider names, e.g. entropy_kernels,torch,floor (default: all)")
    p_bench.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    p_bench.add_argument("--out", default="ek-results", help="directory for JSON + markdown (default: ek-results)")
    p_bench.add_argument("-v", "--verbose", action="store_true", help="print each measurement as it finishes")
    p_bench.add_argument("--plot", action="store_true", help="also write PNG charts per op (needs matplotlib: the [plot] extra)")
    p_bench.set_defaults(fn=_bench)

    def compress_options(p):
        p.add_argument("--min-numel", type=_count(0), default=65536, help="smaller tensors stay plain (default 65536)")
        p.add_argument("--threads", type=_count(0), default=0, help="encoder threads (default: all cores)")

    _add_file_command(sub, debug, "compress", _compress,
                      "EKDF-code the bf16 tensors of a safetensors file or model directory",
                      "a .safetensors file or a directory (other files are copied)", compress_options)
    _add_file_command(sub, debug, "decompress", _decompress,
                      "restore plain safetensors from EKDF-coded ones (bit-identical)",
                      "a compressed .safetensors file or a directory")

    p_insp = sub.add_parser("inspect", parents=[debug],
                            help="per-tensor size, bits per value and entropy bound of a (compressed) file")
    p_insp.add_argument("path", help="a .safetensors file or a directory")
    p_insp.set_defaults(fn=_inspect)
    return parser


def _expected_errors() -> tuple:
    """What a user can cause (bad paths, damaged files, full disks, out of memory): one line, no
    traceback. Anything else is a defect in this package and gets a hint to report it."""
    kinds = [OSError, ValueError, TypeError, RuntimeError, MemoryError, ImportError, json.JSONDecodeError]
    try:
        from safetensors import SafetensorError

        kinds.append(SafetensorError)
    except ImportError:  # pragma: no cover - safetensors is a dependency
        pass
    return tuple(kinds)


def _path_text(path) -> str:
    return os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)  # may be a descriptor


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        where = _path_text(exc.filename)
        if exc.filename2 is not None:
            where += f" -> {_path_text(exc.filename2)}"
        text = f"{where}: {exc.strerror}"
    else:
        text = str(exc)
        if isinstance(exc, KeyError) or not text:  # KeyError's str is just the quoted key
            text = f"{type(exc).__name__}: {text}".rstrip(": ")
    return text


def _fail(exc: BaseException, debug: bool) -> int:
    if debug:
        sys.stdout.flush()
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    if isinstance(exc, KeyboardInterrupt):
        _error_line("interrupted")
        return 130
    from .decoding.dfloat_files import OutputPathError

    if isinstance(exc, (UsageError, OutputPathError)):
        _error_line(_describe(exc))
        return 2
    if isinstance(exc, _expected_errors()):
        _error_line(_describe(exc))
        return 1
    hint = "" if debug else "; rerun with --debug for the traceback"
    _error_line(f"unexpected {type(exc).__name__}: {_describe(exc)}{hint}")
    return 1


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return its exit status.

    Never raises: errors print one line to stderr (see the module docstring).

    Example
    -------
    >>> main(["bench", "--ops", "nope"])  # stderr: entropy-kernels: error: bench --ops: unknown op(s) nope; known: ...
    2
    """
    debug = False
    try:
        args = build_parser().parse_args(argv)
        debug = bool(getattr(args, "debug", False))
        return args.fn(args)
    except SystemExit as exc:  # --help and --version exit through argparse
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BrokenPipeError:  # stdout closed early (`| head`): stop quietly, as other tools do
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one line and an exit status
        return _fail(exc, debug)


if __name__ == "__main__":
    sys.exit(main())
