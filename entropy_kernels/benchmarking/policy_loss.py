"""Benchmark cases for the Clip-Cov / KL-Cov policy losses (fwd+bwd on 65,536 and
1,048,576 tokens, fp32 log-probs).

Ours is timed called eagerly (each call pays the Python and launch cost of its kernels, which
dominates at these sizes) and replayed from a CUDA graph (the GPU time; what a step captured in a
graph or compiled with ``mode="reduce-overhead"`` pays -- possible because the selection never
synchronises with the host); on CUDA both with the one-launch kernel (the default) and with one
launch per phase (``EK_COV_FUSED=0``), and eagerly with verl's ``rollout_is_weights`` and a
data-parallel ``global_batch_info`` (one more ``[B, T]`` read). Baselines: the verl-style implementation of :mod:`entropy_kernels.reference.policy_loss`
(``nonzero``, ``randperm``, ``.item()``, a copy to the CPU), measured in the same run. Floor: a
device copy of the four ``[B, T]`` inputs (read once, written once).
"""

from __future__ import annotations

from typing import List

import torch

from .. import config
from ..reference.policy_loss import verl_clip_cov_loss, verl_kl_cov_loss
from ..training.policy_loss import clip_cov_policy_loss, kl_cov_policy_loss
from .cases import Case, Provider
from .timing import cuda_graph_replay

FULL = [(64, 1024), (256, 4096)]  # 65,536 and 1,048,576 tokens
QUICK = {"cpu": [(8, 512)], "cuda": [(64, 1024)]}


def _inputs(case: Case):
    b, t, dev = case.shape["B"], case.shape["T"], case.device
    g = torch.Generator(dev).manual_seed(0)
    old = -torch.rand(b, t, device=dev, generator=g) * 4
    lp = (old + 0.3 * torch.randn(b, t, device=dev, generator=g)).requires_grad_()
    adv = (torch.randn(b, 1, device=dev, generator=g) + 0.3 * torch.randn(b, t, device=dev, generator=g)) * 2
    lengths = torch.randint(t // 4, t + 1, (b, 1), device=dev, generator=g)
    mask = torch.arange(t, device=dev) < lengths  # right-padded responses
    return old, lp, adv, mask


def _phase_launches(fn):
    """``fn`` with ``EK_COV_FUSED=0``: the losses launch one kernel per phase."""

    def run():
        with config.override(cov_fused=False):
            fn()

    return run


def _ours(loss: str, graph: bool = False, one_launch: bool = True, verl_extras: bool = False) -> Provider:
    def setup(case: Case):
        old, lp, adv, mask = _inputs(case)
        extra = {}
        if verl_extras:  # what verl passes with rollout correction and dp_size 2
            weights = torch.rand(lp.shape, device=case.device, generator=torch.Generator(case.device).manual_seed(1)) * 2
            extra = dict(rollout_is_weights=weights, dp_size=2, batch_num_tokens=2 * lp.numel())
        if loss == "clip_cov":
            seed = torch.tensor([1], device=case.device)
            off = torch.tensor([0], device=case.device)
            fn = lambda: clip_cov_policy_loss(old, lp, adv, mask, seed=seed, offset=off, **extra)[0].backward()  # noqa: E731
        else:
            fn = lambda: kl_cov_policy_loss(old, lp, adv, mask, **extra)[0].backward()  # noqa: E731
        if not one_launch:
            fn = _phase_launches(fn)
        if graph:
            return cuda_graph_replay(fn, [lp]), []
        return fn, [lp]

    tags = ([] if one_launch else ["phase launches"]) + (["CUDA graph"] if graph else [])
    tags += ["rollout weights, dp 2"] if verl_extras else []
    name = f"entropy_kernels {loss}" + (f" ({', '.join(tags)})" if tags else "")
    on_cuda = lambda case: case.device.type == "cuda"  # noqa: E731
    return Provider(name, "ours", setup, available=on_cuda if graph or not one_launch else (lambda case: True))


def _verl(loss: str) -> Provider:
    def setup(case: Case):
        old, lp, adv, mask = _inputs(case)
        m = mask.float()
        fn = verl_clip_cov_loss if loss == "clip_cov" else verl_kl_cov_loss
        return (lambda: fn(old, lp, adv, m)[0].backward()), [lp]

    return Provider(f"verl-style {loss}", "baseline", setup)


def _copy_floor(case: Case):
    src = torch.stack([x.detach().float() for x in _inputs(case)])
    dst = torch.empty_like(src)
    return (lambda: dst.copy_(src)), []


def policy_loss_cases(size: str, device: torch.device) -> List[Case]:
    shapes = FULL if size == "full" else QUICK["cuda" if device.type == "cuda" else "cpu"]
    cases = []
    for b, t in shapes:
        case = Case("policy_loss", "fwd+bwd", {"B": b, "T": t}, torch.float32, device)
        case.providers = [
            *(p for loss in ("clip_cov", "kl_cov") for p in (
                _ours(loss), _ours(loss, graph=True), _ours(loss, one_launch=False),
                _ours(loss, graph=True, one_launch=False), _ours(loss, verl_extras=True), _verl(loss),
            )),
            Provider("floor: copy inputs", "floor", _copy_floor),
        ]
        case.providers = [p for p in case.providers if p.available(case)]
        cases.append(case)
    return cases
