"""Benchmark cases for :func:`entropy_kernels.entropy` (bf16, V=151936: a Qwen-sized vocabulary; B=64/1024).

Baselines: torch eager and ``torch.compile`` of the plain formula in fp32. Floors: a device copy
of the logits (the memory floor: a read + write of the same bytes) and, where ``_C`` has
CUDA, a pure read of the logits through its read-checksum kernel. For fwd+bwd the floors add a
read (the backward must read the logits again and write a gradient of the same size).
"""

from __future__ import annotations

import functools
from typing import List

import torch

from .. import native
from ..ops.entropy import entropy
from .cases import Case, Provider, pick_shapes

QUICK = {"cpu": [(8, 8192)], "cuda": [(64, 32000)]}
FULL = [(64, 151936), (1024, 151936)]


def torch_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The baseline users write: fp32 log-softmax, then -Σ p log p (materialises [N, V] fp32)."""
    log_p = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


@functools.lru_cache(maxsize=None)
def _compiled_torch_entropy():
    return torch.compile(torch_entropy)


def _inputs(case: Case, requires_grad: bool):
    b, v = case.shape["B"], case.shape["V"]
    x = (torch.randn(b, v, device=case.device) * 2).to(case.dtype).requires_grad_(requires_grad)
    return x, torch.randn(b, device=case.device)


def _fn_provider(name: str, kind: str, fn_factory) -> Provider:
    def setup(case: Case):
        fn = fn_factory()
        if case.mode == "fwd":
            x, _ = _inputs(case, False)
            return (lambda: fn(x)), []
        x, g = _inputs(case, True)
        return (lambda: fn(x).backward(g)), [x]

    return Provider(name, kind, setup)


def _copy_floor(case: Case):
    x, _ = _inputs(case, False)
    dst = torch.empty_like(x)
    if case.mode == "fwd":
        return (lambda: dst.copy_(x)), []
    if native.cuda_compiled() and case.device.type == "cuda":
        return (lambda: (dst.copy_(x), native.read_checksum(x))), []
    return (lambda: (dst.copy_(x), dst.copy_(x))), []


def _read_floor(case: Case):
    x, _ = _inputs(case, False)
    return (lambda: native.read_checksum(x)), []


def _providers() -> List[Provider]:
    return [
        _fn_provider("entropy_kernels", "ours", lambda: entropy),
        _fn_provider("torch", "baseline", lambda: torch_entropy),
        _fn_provider("torch.compile", "baseline", _compiled_torch_entropy),
        Provider("floor: copy", "floor", _copy_floor),
        Provider(
            "floor: read (_C)",
            "floor",
            _read_floor,
            available=lambda case: case.mode == "fwd" and case.device.type == "cuda" and native.cuda_compiled(),
        ),
    ]


def entropy_cases(size: str, device: torch.device) -> List[Case]:
    shapes, dtype = pick_shapes(size, device, FULL, QUICK)
    cases = []
    for mode in ("fwd", "fwd+bwd"):
        for b, v in shapes:
            case = Case("entropy", mode, {"B": b, "V": v}, dtype, device)
            case.providers = [p for p in _providers() if p.available(case)]
            cases.append(case)
    return cases
