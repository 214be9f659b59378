"""GPU-probe steps that measure the hardware rather than an op: ``ceilings`` (a 1 GiB copy and
read, cuBLAS GEMMs at the cross-entropy shapes: the floors the ops are compared with) and
``histogram`` (what one ``tl.histogram`` call costs by bin count, keys per call and key spread,
through a micro-kernel of its own, each result checked against ``torch.bincount``).
"""

from __future__ import annotations

from typing import List

import torch
import triton
import triton.language as tl

from .. import _backend, native
from .probe_context import Ctx, Step
from .probe_rows import find_row, fmt_ms, measured, provider_name


def has_read_floor(ctx: Ctx) -> bool:
    """Whether ``native.read_checksum`` runs here: ``_C`` built (with CUDA, on a GPU).

    Example
    -------
    >>> has_read_floor(Ctx("demo", torch.device("cpu"), dry=True, out=None)) in (True, False)
    True
    """
    return _backend.native() is not None and (native.cuda_compiled() or not ctx.cuda)


def _ceilings(ctx: Ctx) -> None:
    if ctx.warm:  # nothing of ours to compile
        return
    dev = ctx.device
    n_bytes = (1 << 22) if ctx.dry else (1 << 30)
    x = torch.randn(n_bytes // 2, device=dev).to(torch.bfloat16)
    dst = torch.empty_like(x)
    gbps = lambda reads_writes: (lambda ms: {"GB/s": round(reads_writes * n_bytes / ms / 1e6, 1)})  # noqa: E731
    shape = f"bytes={n_bytes}"
    for timing in ("eager", "graph"):
        ctx.record(lambda: dst.copy_(x), timing, op="ceiling", mode="copy", shape=shape, dtype="bfloat16",
                   provider=provider_name("floor: copy", timing=timing), kind="floor", derive=gbps(2))
    if has_read_floor(ctx):
        ctx.record(lambda: native.read_checksum(x), "eager", op="ceiling", mode="read", shape=shape, dtype="bfloat16",
                   provider="floor: read (_C)", kind="floor", derive=gbps(1))
    del x, dst
    shapes = [("tiny", 64, 32, 512)] if ctx.dry else [("gemma2-2b", 8192, 2304, 256000), ("llama3-8b", 8192, 4096, 128256)]
    for name, n, d, v in shapes:
        h = torch.randn(n, d, device=dev).to(torch.bfloat16)
        w = (torch.randn(v, d, device=dev) / d**0.5).to(torch.bfloat16)
        out = torch.empty(n, v, device=dev, dtype=torch.bfloat16)
        ctx.record(lambda: torch.matmul(h, w.T, out=out), "eager", op="ceiling", mode="gemm",
                   shape=f"N={n} D={d} V={v}", dtype="bfloat16", provider="cuBLAS GEMM h·Wᵀ", kind="floor",
                   derive=lambda ms, f=2 * n * d * v: {"TFLOP/s": round(f / ms / 1e9, 1)}, info={"model": name})
        del h, w, out


def _ceilings_summary(rows: List[dict]) -> List[str]:
    out = []
    for r in measured(rows):
        info = r.get("info") or {}
        rate = info.get("GB/s") or info.get("TFLOP/s")
        unit = "GB/s" if "GB/s" in info else "TFLOP/s"
        out.append(f"{r['mode']:5s} {r['shape']:28s} {r['provider']:28s} {fmt_ms(r['p50_ms']):>9s}  {rate} {unit}")
    return out


@triton.jit
def _histogram_probe_kernel(x_ptr, out_ptr, iters, NB: tl.constexpr, BLOCK: tl.constexpr, HIST: tl.constexpr):
    """Each program makes ``iters`` calls of ``tl.histogram`` over ``BLOCK`` keys (one of 8
    key blocks, L2/L1 resident) and stores the summed histogram; ``HIST=False`` does the same
    loads and a sum instead: the loop's cost without the histogram."""
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros((NB,), tl.int32)
    total = tl.zeros((BLOCK,), tl.int32)
    for i in range(iters):
        k = tl.load(x_ptr + ((pid + i) % 8) * BLOCK + offs)
        if HIST:
            acc += tl.histogram(k, NB)
        else:
            total += k
    if HIST:
        tl.store(out_ptr + pid * NB + tl.arange(0, NB), acc)
    else:
        tl.store(out_ptr + pid * NB + tl.arange(0, NB), acc + tl.sum(total, 0))


HIST_BINS = (256, 512, 1024, 2048)
HIST_BLOCKS = (1024, 4096)
HIST_ITERS = 200


def _expected_histograms(x: torch.Tensor, programs: int, iters: int, nb: int, block: int) -> torch.Tensor:
    """What every program must store: Σ over its iterations of the bincount of its key block."""
    per_block = torch.stack([torch.bincount(x[b * block:(b + 1) * block].long(), minlength=nb) for b in range(8)])
    uses = torch.zeros(programs, 8, dtype=torch.long)
    for p in range(programs):
        for b in range(8):
            uses[p, b] = len(range((b - p) % 8, iters, 8))
    return (uses @ per_block).to(torch.int32)


def _histogram(ctx: Ctx) -> None:
    from ..kernels._launch import sm_count

    dev = ctx.device
    programs = 2 if ctx.dry else sm_count(dev)
    iters = 2 if ctx.dry else HIST_ITERS
    bins, blocks = ((256, 2048), (1024,)) if ctx.dry else (HIST_BINS, HIST_BLOCKS)
    g = torch.Generator().manual_seed(0)
    for block in blocks:
        base_ms = None
        if ctx.mine(("hist", 0, block)):
            x = torch.randint(0, 256, (8 * block,), generator=g, dtype=torch.int32).to(dev)
            out = torch.empty(programs, 256, dtype=torch.int32, device=dev)
            row = ctx.record(lambda: _histogram_probe_kernel[(programs,)](x, out, iters, NB=256, BLOCK=block, HIST=False,
                                                                          num_warps=8),
                             "eager", op="tl.histogram", mode="loop without histogram", shape=f"NB=0 BLOCK={block}",
                             dtype="int32", provider="load + sum loop", kind="floor",
                             info={"programs": programs, "iters": iters})
            base_ms = row["p50_ms"] if row and row.get("p50_ms") is not None else None
        for nb in bins:
            if not ctx.mine(("hist", nb, block)):
                continue
            for spread in ("uniform", "crowded"):
                hi = nb if spread == "uniform" else 4  # crowded: every key in 4 neighbouring bins
                x = (torch.randint(0, hi, (8 * block,), generator=g, dtype=torch.int32) + (0 if hi == nb else nb // 2)).to(dev)
                out = torch.empty(programs, nb, dtype=torch.int32, device=dev)

                def run(x=x, out=out, nb=nb):
                    _histogram_probe_kernel[(programs,)](x, out, iters, NB=nb, BLOCK=block, HIST=True, num_warps=8)

                def derive(ms, base=base_ms):
                    per = ms / iters * 1e3
                    net = None if base is None else (ms - base) / iters * 1e3
                    return {"us_per_call": round(per, 3), "us_per_call_net": None if net is None else round(net, 3)}

                row = ctx.record(run, "eager", op="tl.histogram", mode=spread, shape=f"NB={nb} BLOCK={block}",
                                 dtype="int32", provider="tl.histogram per call", derive=derive,
                                 info={"programs": programs, "iters": iters, "num_warps": 8})
                if row is not None and row["status"] == "ok":
                    run()
                    ctx.sync()
                    ok = torch.equal(out.cpu(), _expected_histograms(x.cpu(), programs, iters, nb, block))
                    ctx.row(**{k: row[k] for k in ("op", "mode", "shape", "dtype")}, provider="check vs torch.bincount",
                            kind="info", check=ok)


def _histogram_summary(rows: List[dict]) -> List[str]:
    out = []
    for block in HIST_BLOCKS:
        for spread in ("uniform", "crowded"):
            cells = []
            for nb in HIST_BINS:
                r = find_row(rows, mode=spread, shape=f"NB={nb} BLOCK={block}", provider="tl.histogram per call")
                info = (r or {}).get("info") or {}
                v = info.get("us_per_call_net", info.get("us_per_call"))
                cells.append(f"{nb}:{v if v is not None else '-'}")
            out.append(f"us per call (net of the load loop), {block} keys, {spread}: " + "  ".join(cells))
    r = find_row(rows, mode="uniform", shape="NB=2048 BLOCK=1024", provider="tl.histogram per call")
    v = ((r or {}).get("info") or {}).get("us_per_call_net")
    if v is not None:
        verdict = "confirmed (within 2x)" if 5 <= v <= 20 else "refuted"
        out.append(f"static model: ~10 us per 2048-bin call over 1024 keys -> measured {v} us: {verdict}")
    return out


STEPS = [
    Step("ceilings", _ceilings, 20, _ceilings_summary, "1 GiB copy and read, bf16 GEMM at the CE shapes"),
    Step("histogram", _histogram, 25, _histogram_summary, "tl.histogram cost per call: bins x keys x spread"),
]
