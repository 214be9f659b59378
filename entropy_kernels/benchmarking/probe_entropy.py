"""GPU-probe step ``entropy``: the entropy op forward and forward + backward at LM-head shapes,
eager, as a CUDA-graph replay, back to back and kernels only, the forward checked against
float64, beside a copy and a read of the same logits (the memory floors).
"""

from __future__ import annotations

from typing import List

import torch

from .. import native
from .cases import Case
from .probe_context import Ctx, Step
from .probe_hardware import has_read_floor
from .probe_rows import find_row, fmt_ms, measured, provider_name, timings_line


def _entropy(ctx: Ctx) -> None:
    from ..ops.entropy import entropy
    from .entropy import _inputs

    dev = ctx.device
    shapes, dtype = (((2, 2048), (8, 2048)), torch.float32) if ctx.dry else (((64, 151936), (1024, 151936)), torch.bfloat16)
    for b, v in shapes:
        for mode in ("fwd", "fwd+bwd"):
            if not ctx.mine(("entropy", b, mode)):
                continue
            case = Case("entropy", mode, {"B": b, "V": v}, dtype, dev)
            x, g = _inputs(case, mode != "fwd")
            if mode == "fwd":
                fn, grads = (lambda x=x: entropy(x)), []
                got = ctx.call(fn).double()
                z = x.detach().double()
                want = -(torch.softmax(z, -1) * torch.log_softmax(z, -1)).sum(-1)
                check = bool(((got - want).abs() <= 1e-3 + 1e-4 * want.abs()).all())
            else:
                fn, grads, check = (lambda x=x, g=g: entropy(x).backward(g)), [x], None
            dt = str(dtype).replace("torch.", "")
            for timing in ("eager", "graph", "wall", "kernel"):
                ctx.record(fn, timing, grads=grads, op="entropy", mode=mode, shape=f"B={b} V={v}", dtype=dt,
                           provider=provider_name("entropy_kernels", timing=timing), check=check)
            if ctx.warm:
                continue
            src = x.detach()
            dst = torch.empty_like(src)
            for timing in ("eager", "graph"):
                ctx.record(lambda: dst.copy_(src), timing, op="entropy", mode=mode, shape=f"B={b} V={v}", dtype=dt,
                           provider=provider_name("floor: copy", timing=timing), kind="floor")
            if mode == "fwd" and has_read_floor(ctx):
                for timing in ("eager", "graph"):
                    ctx.record(lambda: native.read_checksum(src), timing, op="entropy", mode=mode, shape=f"B={b} V={v}",
                               dtype=dt, provider=provider_name("floor: read (_C)", timing=timing), kind="floor")


def _entropy_summary(rows: List[dict]) -> List[str]:
    out = []
    for r in measured(rows):
        if r["provider"] == "entropy_kernels":
            floor = find_row(rows, mode=r["mode"], shape=r["shape"], provider="floor: read (_C) (CUDA graph)") or \
                find_row(rows, mode=r["mode"], shape=r["shape"], provider="floor: copy (CUDA graph)")
            out.append(timings_line(rows, r, f"{r['mode']:7s} {r['shape']}")
                       + (f"; {floor['provider'].replace(' (CUDA graph)', '')} {fmt_ms(floor['p50_ms'])}" if floor else ""))
    return out


STEPS = [
    Step("entropy", _entropy, 30, _entropy_summary, "entropy fwd, fwd+bwd: eager, graph, kernels, floors"),
]
