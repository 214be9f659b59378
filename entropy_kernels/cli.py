"""The ``entropy-kernels`` command.

    entropy-kernels info                 versions, build, GPU, backend of every op
    entropy-kernels bench --quick        small shapes (CPU or GPU), prints a table, writes files
    entropy-kernels bench --full         the ANCHORS.md shapes (GPU)
    entropy-kernels compress IN OUT      EKDF-code the bf16 tensors of a safetensors file / model dir
    entropy-kernels decompress IN OUT    back to plain safetensors, bit-identical
    entropy-kernels inspect PATH         per-tensor size, bits per value, entropy bound
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import List, Optional

import torch


def _info(_args) -> int:
    from . import __version__, _backend
    from .ops import OPS

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
    width = max(len(n) for n in OPS) + 2
    print(f"\n{'op':{width}s}{'cpu':24s} cuda")
    for name in OPS:
        cpu, cuda = NATIVE_OPS.get(name, (_backend.describe_backend("cpu"), _backend.describe_backend("cuda")))
        print(f"{name:{width}s}{cpu:24s} {cuda}")
    return 0


# ops whose kernels are C++/CUDA in _C rather than Triton
NATIVE_OPS = {"DFloatTensor.decompress": ("C++ (_C)", "CUDA C++ (_C)")}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _bench(args) -> int:
    from .benchmarking import cases_for, environment, run_cases, write_results
    from .benchmarking.report import markdown_table

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    size = "full" if args.full else "quick"
    if size == "full" and device.type != "cuda":
        print("warning: --full shapes are meant for a GPU; running them on CPU will be slow", file=sys.stderr)
    cases = cases_for(args.ops, size, device)
    providers = args.providers.split(",") if args.providers else None
    print(f"running {len(cases)} case(s) on {device} ({size})")
    results = run_cases(cases, providers, log=print if args.verbose else (lambda s: None))
    env = environment(device)
    stem = f"{_slug(env['gpu'] or 'cpu')}_{size}" + (f"_{'-'.join(args.ops)}" if args.ops else "")
    paths = write_results(results, env, Path(args.out), stem)
    print()
    print(markdown_table(results))
    print(f"\nwrote {paths['json']} and {paths['markdown']}")
    return 1 if any(r.error for r in results if r.kind == "ours") else 0


def _compress(args) -> int:
    from .decoding.dfloat_files import compress_path

    t = compress_path(args.src, args.dst, min_numel=args.min_numel, threads=args.threads, progress=not args.quiet)
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

    t = decompress_path(args.src, args.dst, progress=not args.quiet)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="entropy-kernels", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p_info = sub.add_parser("info", help="versions, build, GPU and the backend of each op")
    p_info.set_defaults(fn=_info)

    p_bench = sub.add_parser("bench", help="benchmark ours vs torch eager vs torch.compile vs floors")
    size = p_bench.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small shapes, CPU-friendly (default)")
    size.add_argument("--full", action="store_true", help="the ANCHORS.md shapes (GPU)")
    p_bench.add_argument("--ops", nargs="*", help="ops to benchmark (default: all)")
    p_bench.add_argument("--providers", help="comma-separated provider names, e.g. entropy_kernels,torch,floor (default: all)")
    p_bench.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    p_bench.add_argument("--out", default="ek-results", help="directory for JSON + markdown (default: ek-results)")
    p_bench.add_argument("-v", "--verbose", action="store_true", help="print each measurement as it finishes")
    p_bench.set_defaults(fn=_bench)

    p_comp = sub.add_parser("compress", help="EKDF-code the bf16 tensors of a safetensors file or model directory")
    p_comp.add_argument("src", help="a .safetensors file or a directory (other files are copied)")
    p_comp.add_argument("dst", help="output file or directory")
    p_comp.add_argument("--min-numel", type=int, default=65536, help="smaller tensors stay plain (default 65536)")
    p_comp.add_argument("--threads", type=int, default=0, help="encoder threads (default: all cores)")
    p_comp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p_comp.set_defaults(fn=_compress)

    p_dec = sub.add_parser("decompress", help="restore plain safetensors from EKDF-coded ones (bit-identical)")
    p_dec.add_argument("src")
    p_dec.add_argument("dst")
    p_dec.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p_dec.set_defaults(fn=_decompress)

    p_insp = sub.add_parser("inspect", help="per-tensor size, bits per value and entropy bound of a (compressed) file")
    p_insp.add_argument("path", help="a .safetensors file or a directory")
    p_insp.set_defaults(fn=_inspect)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
