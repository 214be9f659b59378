"""Compile every Triton kernel of the package ahead of time for real GPU targets — no GPU
needed — and report what the compiled code costs (registers, shared memory, spills).

Triton's wheel carries the NVIDIA backend, ptxas and cuobjdump, so a CPU-only machine (CI) can
lower each kernel to cubin: this catches what the interpreter cannot (globals that are not
constexpr, unsupported atomics, type errors in compiled-only code paths, register overflows at
the launch configurations we use).

Each configuration is compiled with the specialisation the JIT applies at launch: argument
values typical of the ops' real launches go through Triton's own binder, so pointers and
integers divisible by 16 get ``tt.divisibility = 16`` and integers equal to 1 become
constants, exactly as at a launch with those values. Without those attributes the compiler
sees unaligned pointers: no vectorised or asynchronous copies, more registers — numbers that
are not what runs.

    python -m entropy_kernels.kernels.aot_check --arch 80 90           # compile, print status
    python -m entropy_kernels.kernels.aot_check --write benchmarks/static/
    python -m entropy_kernels.kernels.aot_check --check benchmarks/static/ --arch 90

``--write DIR`` regenerates ``DIR/triton_kernels.{json,md}`` (registers, shared memory, spill
and stack bytes per configuration and arch); entries whose key (kernel source hash, argument
specialisation, launch options, arch, Triton version) is unchanged are reused, not recompiled.
``--check DIR`` compiles only the configurations whose key is missing from that file and fails
if any does not compile, or if the file is out of date for this Triton version.

Must run with TRITON_INTERPRET unset or 0 (the kernels must be JIT functions).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

from .aot_spec import BLOCK_NAMES, DEFAULT_INT, Config, launch_args  # noqa: F401  (re-exported)
from .linear_softmax import FWD_SWEEP as LSM_FWD_SWEEP  # noqa: F401  (the probe's sweep)

STATIC_STEM = "triton_kernels"
WRITE_COMMAND = "python -m entropy_kernels.kernels.aot_check --write benchmarks/static/"

_POINTER_DTYPES = {
    "*bf16": "bfloat16", "*fp16": "float16", "*fp32": "float32", "*fp64": "float64", "*i64": "int64",
    "*i32": "int32", "*i16": "int16", "*i8": "int8", "*u8": "uint8", "*i1": "bool",
}


def _configs() -> Iterator[Config]:
    """Every launch configuration: the ``aot_configs()`` of each module of this package (the
    ops' launches, and the probe's forward-tile sweep), found by importing the modules."""
    import importlib
    import pkgutil

    from .. import kernels

    for module in pkgutil.iter_modules(kernels.__path__):
        mod = importlib.import_module(f"{kernels.__name__}.{module.name}")
        if callable(getattr(mod, "aot_configs", None)):
            yield from mod.aot_configs()


def _launch_kwargs(cfg: Config) -> Dict[str, object]:
    kw: Dict[str, object] = {"num_warps": cfg.num_warps, **cfg.options}
    if cfg.num_stages is not None:
        kw["num_stages"] = cfg.num_stages
    return kw


def _mock_args(cfg: Config) -> Dict[str, object]:
    import torch
    from triton.runtime.jit import MockTensor

    return {name: MockTensor(getattr(torch, _POINTER_DTYPES[v])) if isinstance(v, str) else v
            for name, v in cfg.args.items()}


def specialise(cfg: Config, target, by_hand: bool = False):
    """``(signature, constexprs, attrs, options, how)`` of ``cfg``'s launch on ``target``: from
    Triton's own launch binder when this Triton has the one it was written for (``how`` =
    "jit binder"); else (or with ``by_hand``) the same rules by hand ("by hand": pointers and
    integers divisible by 16 get ``tt.divisibility = 16``, integers equal to 1 become constants).

    Example
    -------
    >>> from triton.backends.compiler import GPUTarget                                   # doctest: +SKIP
    >>> sig, constexprs, attrs, options, how = specialise(find_config("entropy_combine"),
    ...                                                  GPUTarget("cuda", 90, 32))      # doctest: +SKIP
    >>> sig["part_ptr"], attrs[(0,)], how                                                # doctest: +SKIP
    ('*fp32', [['tt.divisibility', 16]], 'jit binder')
    """
    from triton.compiler import make_backend

    backend = make_backend(target)
    kwargs = {**cfg.constexprs, **_launch_kwargs(cfg)}
    try:
        if by_hand:
            raise ImportError("by hand")
        from triton.runtime.jit import create_function_from_signature

        binder = create_function_from_signature(cfg.kernel.signature, cfg.kernel.params, backend)
        bound, spec, opts = binder(**_mock_args(cfg), **kwargs)
        options, signature, constexprs, attrs = cfg.kernel._pack_args(backend, kwargs, bound, spec, opts)
        return signature, constexprs, attrs, options.__dict__, "jit binder"
    except (ImportError, AttributeError):
        pass
    names = [p.name for p in cfg.kernel.params]
    missing = [n for n in names if n not in cfg.args and n not in cfg.constexprs]
    if missing:
        raise TypeError(f"{cfg.name}: no value for arguments {missing}")
    signature, constexprs = {}, {}
    attrs = {(i,): [] for i in range(len(names))}
    for i, name in enumerate(names):
        if name in cfg.constexprs:
            signature[name], constexprs[(i,)] = "constexpr", cfg.constexprs[name]
            continue
        value = cfg.args[name]
        if isinstance(value, str):  # Triton's own name of the pointer type where it has one (bool: *u1)
            signature[name], attrs[(i,)] = _pointer_type(value), [["tt.divisibility", 16]]
        elif isinstance(value, float):  # floats are not specialised: no attribute at all
            signature[name] = "fp32"
            del attrs[(i,)]
        elif value == 1:
            signature[name], constexprs[(i,)] = "constexpr", 1
        else:
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs, _launch_kwargs(cfg), "by hand"


def _pointer_type(ty: str) -> str:
    try:
        import torch
        from triton.runtime.jit import MockTensor, mangle_type

        return mangle_type(MockTensor(getattr(torch, _POINTER_DTYPES[ty])))
    except Exception:
        return ty


def config_key(cfg: Config, arch: int) -> str:
    """Hash of everything the compiled code depends on: the kernel's source (with the JIT
    functions it calls), the specialisation, the launch options, the arch and Triton's version.

    Example
    -------
    >>> cfg = next(c for c in _configs() if c.name == "entropy_combine")  # doctest: +SKIP
    >>> len(config_key(cfg, 90))                                          # doctest: +SKIP
    64
    """
    import triton
    from triton.backends.compiler import GPUTarget

    signature, constexprs, attrs, _, _ = specialise(cfg, GPUTarget("cuda", arch, 32))
    blob = json.dumps([cfg.kernel.cache_key, signature, sorted((str(k), repr(v)) for k, v in constexprs.items()),
                       sorted((str(k), v) for k, v in attrs.items()), _launch_kwargs(cfg), arch, triton.__version__],
                      sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()


def _cuobjdump() -> Optional[str]:
    try:
        from triton import knobs

        path = knobs.nvidia.cuobjdump.path
        if path and os.path.exists(path):
            return path
    except Exception:
        pass
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return path if os.path.exists(path) else None


def resource_usage(cubin: bytes) -> Dict[str, int]:
    """``{"regs", "stack_bytes", "local_bytes", "static_smem_bytes"}`` per thread / block of the
    one kernel in ``cubin``, read by ``cuobjdump --dump-resource-usage`` (in Triton's wheel);
    empty if that tool is missing. Local memory is where spilled registers go.

    Example
    -------
    >>> resource_usage(compile_kernel(find_config("entropy_combine"), 90)[0].asm["cubin"])  # doctest: +SKIP
    {'regs': 17, 'stack_bytes': 0, 'static_smem_bytes': 0, 'local_bytes': 0}
    """
    tool = _cuobjdump()
    if tool is None:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text))
    names = {"REG": "regs", "STACK": "stack_bytes", "LOCAL": "local_bytes", "SHARED": "static_smem_bytes"}
    return {names[k]: int(v) for k, v in fields.items()}


def compile_kernel(cfg: Config, arch: int):
    """``(compiled kernel, how it was specialised)``: ``cfg`` compiled for ``sm_<arch>`` (its
    ``asm`` holds the PTX and cubin).

    Example
    -------
    >>> compiled, how = compile_kernel(find_config("entropy_combine"), 90)  # doctest: +SKIP
    >>> "ld.global" in compiled.asm["ptx"]                                   # doctest: +SKIP
    True
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    signature, constexprs, attrs, options, how = specialise(cfg, target)
    src = ASTSource(fn=cfg.kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=target, options=options), how


def find_config(name: str) -> Config:
    """The configuration called ``name``.

    Example
    -------
    >>> find_config("lsm_fwd[bf16,128x256x64,s4]").num_stages
    4
    """
    for cfg in _configs():
        if cfg.name == name:
            return cfg
    raise KeyError(f"no configuration named {name!r}")


def _typed_ops(cfg: Config, target, signature, constexprs, attrs, options):
    """Counter of ``(operation, result type)`` in the TTIR of ``cfg`` with this specialisation."""
    from collections import Counter

    from triton._C.libtriton import ir
    from triton.compiler import ASTSource, make_backend

    backend = make_backend(target)
    opts = backend.parse_options({k: v for k, v in options.items() if k in ("num_warps", "num_stages", "num_ctas")})
    ctx = ir.context()
    ir.load_dialects(ctx)
    backend.load_dialects(ctx)
    mod = ASTSource(fn=cfg.kernel, signature=signature, constexprs=constexprs, attrs=attrs).make_ir(
        target, opts, backend.get_codegen_implementation(opts), backend.get_module_map(), ctx)
    ops = Counter()
    for line in str(mod).splitlines():
        m = re.search(r'=\s*"?([a-z_]+\.[a-z_.]+)"?.*?:\s*(.*)$', line)
        if m:
            ops[(m.group(1), re.sub(r"loc\(.*\)", "", m.group(2)).strip())] += 1
    return ops


def fp64_float_check(cfg: Config, arch: int) -> str:
    """``"same"`` if ``cfg`` does the same typed arithmetic when its float arguments arrive as
    fp64 -- how torch.compile's launcher of a user kernel types a Python float, where Triton's
    own launcher uses fp32 -- as with fp32; ``"no floats"`` if it has none; otherwise what
    differs. The fp64 form may only add the casts back (``arith.truncf``) and calls of helpers
    (whose bodies are compared too). Seen on a GPU before this check: a policy loss's fp32
    accumulator turned fp64 (a compile error) and Clip-Cov's clipping ran in fp64.

    Example
    -------
    >>> fp64_float_check(find_config("entropy_combine"), 90)   # doctest: +SKIP
    'no floats'
    """
    from triton.backends.compiler import GPUTarget

    target = GPUTarget("cuda", arch, 32)
    signature, constexprs, attrs, options, _ = specialise(cfg, target)
    if "fp32" not in signature.values():
        return "no floats"
    sig64 = {k: "fp64" if v == "fp32" else v for k, v in signature.items()}
    try:
        extra = _typed_ops(cfg, target, sig64, constexprs, attrs, options) - \
            _typed_ops(cfg, target, signature, constexprs, attrs, options)
    except Exception as exc:
        return f"does not compile with fp64 floats: {str(exc).strip().splitlines()[-1][:200]}"
    extra = [op for op in extra if op[0] not in ("arith.truncf", "tt.call")]
    return f"fp64 floats add {extra[:3]}" if extra else "same"


def compile_config(cfg: Config, arch: int) -> Dict[str, object]:
    """Compile ``cfg`` for ``sm_<arch>``: a row with its key, status ("ok" or the error),
    registers, shared memory (dynamic, as launched, plus static) and spill/stack bytes.

    Example
    -------
    >>> compile_config(find_config("entropy_combine"), 90)["regs"]  # doctest: +SKIP
    17
    """
    row: Dict[str, object] = {"name": cfg.name, "arch": arch, "num_warps": cfg.num_warps}
    try:
        row["key"] = config_key(cfg, arch)
        compiled, row["specialised_by"] = compile_kernel(cfg, arch)
        usage = resource_usage(compiled.asm["cubin"])
        row.update(status="ok", num_stages=getattr(compiled.metadata, "num_stages", None),
                   regs=usage.get("regs"), smem_bytes=int(compiled.metadata.shared) + usage.get("static_smem_bytes", 0),
                   local_bytes=usage.get("local_bytes"), stack_bytes=usage.get("stack_bytes"),
                   fp64_floats=fp64_float_check(cfg, arch))
        if row["fp64_floats"] not in ("same", "no floats"):
            row["status"] = f"torch.compile's fp64 floats change the kernel: {row['fp64_floats']}"
    except Exception as exc:  # report every failure, not just the first
        row["status"] = f"{type(exc).__name__}: {str(exc).strip()[-600:]}"
    return row


_POOL_CONFIGS: List[Config] = []


def _compile_index(job):
    index, arch = job
    return compile_config(_POOL_CONFIGS[index], arch)


def compile_all(archs: Sequence[int], cached: Optional[Dict[str, dict]] = None, jobs: int = 1,
                only: Optional[str] = None) -> List[Dict[str, object]]:
    """Compile every configuration for every arch (rows of :func:`compile_config`); a row of
    ``cached`` (by key) whose status is "ok" is reused instead of compiling again.

    Example
    -------
    >>> rows = compile_all([90], only="entropy_combine")   # doctest: +SKIP
    >>> [r["status"] for r in rows]                        # doctest: +SKIP
    ['ok']
    """
    configs = [c for c in _configs() if only is None or only in c.name]
    rows: List[Optional[Dict[str, object]]] = []
    todo = []
    for i, cfg in enumerate(configs):
        for arch in archs:
            try:
                key = config_key(cfg, arch)
            except Exception:  # e.g. arguments out of date: compile_config reports it
                key = None
            hit = (cached or {}).get(key)
            if hit is not None and hit.get("status") == "ok":
                row = dict(hit, name=cfg.name, arch=arch)
                if "fp64_floats" not in row:  # a report written before the check existed
                    row["fp64_floats"] = fp64_float_check(cfg, arch)
                    if row["fp64_floats"] not in ("same", "no floats"):
                        row["status"] = f"torch.compile's fp64 floats change the kernel: {row['fp64_floats']}"
                rows.append(row)
            else:
                rows.append(None)
                todo.append((len(rows) - 1, i, arch))
    if jobs > 1 and len(todo) > 1:
        import multiprocessing

        _POOL_CONFIGS[:] = configs  # forked workers inherit the list: configs hold kernels, not picklable
        with multiprocessing.get_context("fork").Pool(min(jobs, len(todo))) as pool:
            done = pool.map(_compile_index, [(i, arch) for _, i, arch in todo], chunksize=1)
    else:
        done = [compile_config(configs[i], arch) for _, i, arch in todo]
    for (slot, _, _), row in zip(todo, done):
        rows[slot] = row
    return [r for r in rows if r is not None]


# ---------------------------------------------------------------------------------------------
# the committed report


def _note() -> str:
    import triton

    return (f"Compiled with Triton {triton.__version__} (the GPU machine may run another version, e.g. 3.6: "
            "its numbers can differ), at the specialisation the JIT applies to typical launch values "
            "(tt.divisibility = 16 on pointers and integers divisible by 16, integers equal to 1 constant). "
            "regs: registers per thread; smem_bytes: shared memory per program (dynamic + static); "
            "local_bytes: local memory per thread (register spills; 0 = none); from cuobjdump.")


def load_static(directory: Path) -> Optional[dict]:
    """The committed report in ``directory`` (None if there is none).

    Example
    -------
    >>> load_static(Path("benchmarks/static"))["command"]  # doctest: +SKIP
    'python -m entropy_kernels.kernels.aot_check --write benchmarks/static/'
    """
    path = Path(directory) / f"{STATIC_STEM}.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_static(rows: Sequence[Dict[str, object]], directory: Path) -> List[Path]:
    """Write ``triton_kernels.json`` and ``.md`` into ``directory`` (no date: an unchanged
    kernel set rewrites identical files).

    Example
    -------
    >>> write_static(compile_all([80, 90]), Path("benchmarks/static"))  # doctest: +SKIP
    """
    import triton

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: (str(r["name"]), int(r["arch"])))
    doc = {"command": WRITE_COMMAND, "triton": triton.__version__, "note": _note(), "kernels": list(rows)}
    paths = [directory / f"{STATIC_STEM}.json", directory / f"{STATIC_STEM}.md"]
    paths[0].write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    archs = sorted({int(r["arch"]) for r in rows})
    lines = [f"# Triton kernels: compiled resources (Triton {triton.__version__})", "", f"Regenerate: `{WRITE_COMMAND}`",
             "", _note(), "",
             "| configuration | warps | stages | " + " | ".join(f"sm_{a} regs / smem / spill" for a in archs) + " |",
             "|---|---|---|" + "---|" * len(archs)]
    by_name: Dict[str, Dict[int, dict]] = {}
    for r in rows:
        by_name.setdefault(str(r["name"]), {})[int(r["arch"])] = r

    def cell(r):
        if r is None:
            return "-"
        if r.get("status") != "ok":
            return "FAILED"
        return f"{r.get('regs')} / {int(r.get('smem_bytes') or 0) // 1024} KiB / {r.get('local_bytes')} B"

    for name, per_arch in by_name.items():
        first = next(iter(per_arch.values()))
        lines.append(f"| `{name}` | {first.get('num_warps')} | {first.get('num_stages', '-')} | "
                     + " | ".join(cell(per_arch.get(a)) for a in archs) + " |")
    paths[1].write_text("\n".join(lines) + "\n")
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", nargs="+", type=int, default=[80, 90])
    parser.add_argument("--write", metavar="DIR", help="regenerate DIR/triton_kernels.{json,md}")
    parser.add_argument("--check", metavar="DIR", help="compile only what DIR/triton_kernels.json lacks; fail if stale")
    parser.add_argument("--force", action="store_true", help="with --write: compile everything again")
    parser.add_argument("--only", help="only configurations whose name contains this")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compile processes")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("error: unset TRITON_INTERPRET (the kernels must be compiled, not interpreted)", file=sys.stderr)
        return 2
    import triton

    directory = args.write or args.check
    static = load_static(Path(directory)) if directory else None
    cached = {r["key"]: r for r in (static or {}).get("kernels", []) if r.get("key")} if not args.force else {}
    rows = compile_all(args.arch, cached, jobs=args.jobs, only=args.only)
    for r in rows:
        detail = "ok" if r["status"] != "ok" or r.get("regs") is None else \
            f"ok  regs {r['regs']}, smem {r['smem_bytes']} B, local {r['local_bytes']} B"
        print(f"sm_{r['arch']} {r['name']:45s} {detail if r['status'] == 'ok' else r['status']}")
    failed = [r for r in rows if r["status"] != "ok"]
    print(f"{len(rows) - len(failed)} compiled, {len(failed)} failed")
    status = 1 if failed else 0
    if args.write and not failed and args.only is None:
        for path in write_static(rows, Path(args.write)):
            print(f"wrote {path}")
    if args.check:
        reused = sum(1 for r in rows if r.get("key") in cached)
        print(f"{reused} of {len(rows)} from {Path(args.check) / (STATIC_STEM + '.json')}")
        if static is None or static.get("triton") != triton.__version__:
            print(f"note: the committed report is for Triton {(static or {}).get('triton')}, this is "
                  f"{triton.__version__}: compiled everything, staleness not judged")
        elif reused < len(rows):
            print(f"error: {len(rows) - reused} configuration(s) changed since the committed report; "
                  f"regenerate it: {WRITE_COMMAND}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
