"""Benchmark cases for the Clip-Cov / KL-Cov policy losses (ANCHORS.md: fwd+bwd on 65,536 and
1,048,576 tokens, fp32 log-probs).

Ours is timed twice: called eagerly (each call pays the Python and launch cost of ~8 kernels,
which dominates at these sizes) and replayed from a CUDA graph (the GPU time; what a step
captured in a graph or compiled with ``mode="reduce-overhead"`` pays -- possible because the
selection never synchronises with the host). Baselines: the verl-style implementation of :mod:`entropy_kernels.reference.policy_loss`
(``nonzero``, ``randperm``, ``.item()``, a copy to the CPU), measured in the same run. Floor: a
device copy of the four ``[B, T]`` inputs (read once, written once).
"""

from __future__ import annotations

from typing import List

import torch

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


def _ours(loss: str, graph: bool = False) -> Provider:
    def setup(case: Case):
        old, lp, adv, mask = _inputs(case)
        if loss == "clip_cov":
            seed = torch.tensor([1], device=case.device)
            off = torch.tensor([0], device=case.device)
            fn = lambda: clip_cov_policy_loss(old, lp, adv, mask, seed=seed, offset=off)[0].backward()  # noqa: E731
        else:
            fn = lambda: kl_cov_policy_loss(old, lp, adv, mask)[0].backward()  # noqa: E731
        if graph:
            return cuda_graph_replay(fn, [lp]), []
        return fn, [lp]

    if graph:
        return Provider(f"entropy_kernels {loss} (CUDA graph)", "ours", setup, available=lambda case: case.device.type == "cuda")
    return Provider(f"entropy_kernels {loss}", "ours", setup)


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
            _ours("clip_cov"), _ours("clip_cov", graph=True), _verl("clip_cov"),
            _ours("kl_cov"), _ours("kl_cov", graph=True), _verl("kl_cov"),
            Provider("floor: copy inputs", "floor", _copy_floor),
        ]
        case.providers = [p for p in case.providers if p.available(case)]
        cases.append(case)
    return cases
