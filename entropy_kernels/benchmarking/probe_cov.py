"""GPU-probe step ``cov``: Clip-Cov / KL-Cov forward + backward and ``high_entropy_mask``, each
with its one cooperative launch and with one launch per phase (the ``cov_fused`` switch,
``EK_COV_FUSED``), eager, as a CUDA-graph replay, back to back and kernels only -- the two
variants checked bit for bit against each other, and the decision the rows make of the switch.
"""

from __future__ import annotations

from typing import List

import torch

from .. import config
from .cases import Case
from .probe_context import Ctx, Step
from .probe_rows import decide, measured, provider_name, timings_line


def _cov(ctx: Ctx) -> None:
    from ..ops.high_entropy_mask import high_entropy_mask
    from ..reference.high_entropy import high_entropy_mask_reference
    from ..training.policy_loss import clip_cov_policy_loss, kl_cov_policy_loss
    from .policy_loss import _inputs

    dev = ctx.device
    sizes = ((4, 256),) if ctx.dry else ((64, 1024), (256, 4096))
    for b, t in sizes:
        case = Case("policy_loss", "fwd+bwd", {"B": b, "T": t}, torch.float32, dev)
        old, lp, adv, mask = _inputs(case)
        seed, off = torch.tensor([1], device=dev), torch.tensor([0], device=dev)
        for loss in ("clip_cov", "kl_cov"):
            def step(loss=loss):
                if loss == "clip_cov":
                    out = clip_cov_policy_loss(old, lp, adv, mask, seed=seed, offset=off)[0]
                else:
                    out = kl_cov_policy_loss(old, lp, adv, mask)[0]
                out.backward()
                return out

            results = {}
            for fused in ("1", "0"):
                if not ctx.mine(("cov", loss, fused, b * t)):
                    continue
                tags = () if fused == "1" else ("phase launches",)
                with config.override(cov_fused=fused == "1"):
                    lp.grad = None
                    value = ctx.call(step).detach().clone()
                    results[fused] = (value, lp.grad.clone())
                    check = None
                    if fused == "0" and "1" in results:
                        check = all(torch.equal(a, c) for a, c in zip(results["0"], results["1"]))
                    for timing in ("eager", "graph", "wall", "kernel"):
                        ctx.record(step, timing, grads=[lp], op="policy_loss", mode="fwd+bwd", shape=f"B={b} T={t}",
                                   dtype="float32", provider=provider_name(f"entropy_kernels {loss}", *tags, timing=timing),
                                   variant=f"fused={fused}", check=check)
    n = 4096 if ctx.dry else 1 << 20
    ent = torch.rand(n, device=dev) * 4
    valid = torch.rand(n, device=dev) < 0.8
    want = high_entropy_mask_reference(ent, valid, 0.2)
    for fused in ("1", "0"):
        if not ctx.mine(("high_entropy_mask", fused)):
            continue
        tags = () if fused == "1" else ("four launches",)
        with config.override(cov_fused=fused == "1"):
            fn = lambda: high_entropy_mask(ent, valid, 0.2)  # noqa: E731
            got = ctx.call(fn)
            for timing in ("eager", "graph", "wall", "kernel"):
                ctx.record(fn, timing, op="high_entropy_mask", mode="fwd",
                           shape=f"tokens={n}", dtype="float32", provider=provider_name("entropy_kernels", *tags, timing=timing),
                           variant=f"fused={fused}", check=bool(torch.equal(got, want)))


def _cov_summary(rows: List[dict]) -> List[str]:
    out = [timings_line(rows, r, f"{r['op'][:6]} {r['shape']} {r['provider'].replace('entropy_kernels ', '')}")
           for r in measured(rows) if r["timing"] == "eager"]
    out += decide(rows, "fused=1", "fused=0", "EK_COV_FUSED")
    return out


STEPS = [
    Step("cov", _cov, 45, _cov_summary, "Clip-Cov/KL-Cov and high_entropy_mask: eager, graph, kernels; EK_COV_FUSED"),
]
