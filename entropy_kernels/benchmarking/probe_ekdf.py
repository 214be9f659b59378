"""GPU-probe step ``ekdf``: the EKDF decoder at sizes from 256K to 512M values, eager and as a
CUDA-graph replay, beside a copy of the same bytes and dfloat11's decoder; every decode checked
bit for bit against the original weights, and Nsight Compute's counters of one decode at the
anchor size where ``ncu`` is on the PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import torch

from .. import _backend
from .dfloat import ANCHOR
from .probe_context import Ctx, Step
from .probe_rows import find_row, fmt_ms, provider_name


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.equal(a.reshape(-1).view(torch.int16), b.reshape(-1).view(torch.int16)))


DFLOAT_SIZES = (262_144, 1_048_576, ANCHOR, 536_870_912)
NCU_METRICS = (
    "gpu__time_duration.sum", "smsp__inst_executed.sum", "l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum",
    "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum", "sm__warps_active.avg.pct_of_peak_sustained_active",
    "smsp__issue_active.avg.pct_of_peak_sustained_active",
)


def _weights(n: int, device: torch.device, seed: int) -> torch.Tensor:
    """N(0, 0.02) bf16 values made on ``device`` (fast for the 1 GiB tensor)."""
    g = torch.Generator(device=device).manual_seed(seed)
    return (torch.randn(n, generator=g, device=device) * 0.02).to(torch.bfloat16)


_NCU_SCRIPT = """
import sys, torch
from entropy_kernels.decoding.dfloat import DFloatTensor
x = (torch.randn({n}, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)
c = DFloatTensor.compress(x).to("cuda")
o = torch.empty({n}, dtype=torch.bfloat16, device="cuda")
c.decompress(out=o)
torch.cuda.synchronize()
"""


def ncu_counters(n: int, timeout_s: float = 90) -> Dict[str, str]:
    """``{metric: value}`` of one decode of ``n`` values under Nsight Compute (clocks not
    locked: the rates of a normal run).

    Example
    -------
    >>> ncu_counters(16_777_216)["gpu__time_duration.sum"]  # doctest: +SKIP
    '76.7 usecond'
    """
    import csv

    with tempfile.TemporaryDirectory() as tmp:
        script, log = os.path.join(tmp, "decode.py"), os.path.join(tmp, "ncu.csv")
        with open(script, "w") as f:
            f.write(_NCU_SCRIPT.format(n=n))
        cmd = [shutil.which("ncu") or "ncu", "--clock-control", "none", "--csv", "--log-file", log,
               "--kernel-name", "regex:decode_kernel", "--launch-count", "1",
               "--metrics", ",".join(NCU_METRICS), sys.executable, script]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        text = (open(log).read() if os.path.exists(log) else "") + "\n" + proc.stdout
        lines = [ln for ln in text.splitlines() if ln.startswith('"')]  # the CSV rows; not ==PROF== lines
    header = next((i for i, ln in enumerate(lines) if ln.startswith('"ID"')), None)
    if header is None:
        raise RuntimeError(f"no ncu metrics (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-300:]}")
    table = [row for row in csv.DictReader(lines[header:]) if row.get("ID", "").isdigit()]
    if not table:
        raise RuntimeError(f"no ncu metrics (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-300:]}")
    first = min((row["ID"] for row in table), key=int)  # the decode (one launch is profiled)
    return {row["Metric Name"]: f"{row['Metric Value']} {row.get('Metric Unit', '')}".strip()
            for row in table if row["ID"] == first}


def _ekdf(ctx: Ctx) -> None:
    if ctx.warm:  # CUDA C++ in _C: nothing for Triton to compile
        return
    if _backend.native() is None:
        ctx.row(op="dfloat_decompress", mode="fwd", provider="entropy_kernels", status=f"skipped: _C not built "
                f"({_backend.native_error()})"[:300])
        return
    from ..decoding.dfloat import DFloatTensor
    from .dfloat import dfloat11_available, dfloat11_encode

    dev = ctx.device
    sizes = (4096, 16_384) if ctx.dry else DFLOAT_SIZES
    for n in sizes:
        shape = f"N={n}"
        x = _weights(n, dev, seed=n)
        t0 = time.perf_counter()
        c = DFloatTensor.compress(x.cpu())
        encode_s = time.perf_counter() - t0
        c = c.to(dev)
        out = torch.empty(n, dtype=torch.bfloat16, device=dev)
        dst = torch.empty_like(x)
        gbps = lambda ms, n=n: {"GB/s of output": round(2 * n / ms / 1e6, 1)}  # noqa: E731
        for timing in ("eager", "graph"):
            ctx.record(lambda: dst.copy_(x), timing, calls=20, op="dfloat_decompress", mode="fwd", shape=shape,
                       dtype="bfloat16", provider=provider_name("floor: copy", timing=timing), kind="floor", derive=gbps)
        out.fill_(float("nan"))
        c.decompress(out=out)
        exact = _bits_equal(out, x)
        for timing in ("eager", "graph"):
            ctx.record(lambda: c.decompress(out=out), timing, calls=20, op="dfloat_decompress", mode="fwd",
                       shape=shape, dtype="bfloat16", provider=provider_name("entropy_kernels", timing=timing), check=exact,
                       derive=gbps, info={"ratio": round(c.ratio, 4), "encode_s": round(encode_s, 2)})
        if ctx.cuda and n <= ANCHOR and dfloat11_available():
            try:
                t0 = time.perf_counter()
                decode11, size11 = dfloat11_encode(x.cpu(), dev)
                enc11 = time.perf_counter() - t0
                exact11 = _bits_equal(decode11(), x)
                ctx.record(decode11, "eager", op="dfloat_decompress", mode="fwd", shape=shape, dtype="bfloat16",
                           provider="dfloat11", kind="baseline", check=exact11, derive=gbps,
                           info={"ratio": round(size11 / (2 * n), 4), "encode_s": round(enc11, 2)})
            except Exception as exc:
                ctx.row(op="dfloat_decompress", mode="fwd", shape=shape, dtype="bfloat16", provider="dfloat11",
                        kind="baseline", status=f"error: {type(exc).__name__}: {str(exc)[:200]}")
        del x, c, out, dst
        if ctx.cuda:
            torch.cuda.empty_cache()
    shape = f"N={ANCHOR}"
    if not ctx.cuda:
        ctx.row(op="dfloat_decompress", mode="ncu", shape=shape, dtype="bfloat16", provider="ncu counters", kind="info",
                status="skipped: needs CUDA")
    elif shutil.which("ncu") is None:
        ctx.row(op="dfloat_decompress", mode="ncu", shape=shape, dtype="bfloat16", provider="ncu counters", kind="info",
                status="skipped: ncu not on PATH")
    else:
        try:
            ctx.row(op="dfloat_decompress", mode="ncu", shape=shape, dtype="bfloat16", provider="ncu counters",
                    kind="info", info=ncu_counters(ANCHOR))
        except Exception as exc:
            ctx.row(op="dfloat_decompress", mode="ncu", shape=shape, dtype="bfloat16", provider="ncu counters",
                    kind="info", status=f"error: {type(exc).__name__}: {str(exc)[:300]}")


def _ekdf_summary(rows: List[dict]) -> List[str]:
    out = []
    for shape in dict.fromkeys(r["shape"] for r in rows if r["mode"] == "fwd"):
        cells = []
        r = (find_row(rows, shape=shape, provider="entropy_kernels (CUDA graph)")
             or find_row(rows, shape=shape, provider="entropy_kernels"))
        if r:
            exact = {True: "exact", False: "NOT EXACT", None: ""}[r.get("check")]
            cells.append(f"ekdf {fmt_ms(r['p50_ms'])} {(r.get('info') or {}).get('GB/s of output', '')}GB/s {exact}")
        copy = find_row(rows, shape=shape, provider="floor: copy (CUDA graph)") or find_row(rows, shape=shape, provider="floor: copy")
        d11 = find_row(rows, shape=shape, provider="dfloat11")
        out.append(f"{shape}: " + "; ".join(cells) + f"; copy {fmt_ms((copy or {}).get('p50_ms'))}"
                   + (f"; dfloat11 {fmt_ms(d11['p50_ms'])}" if d11 else ""))
    for r in rows:
        if r["provider"].startswith("ncu counters") and r["status"] == "ok":
            i = r["info"]
            out.append("ncu: " + ", ".join(f"{k.split('.')[0].split('__')[-1]}={i[k]}" for k in NCU_METRICS if k in i))
    return out


STEPS = [
    Step("ekdf", _ekdf, 100, _ekdf_summary, "EKDF decoder x sizes: graph replay, bit-exact, dfloat11, ncu"),
]
