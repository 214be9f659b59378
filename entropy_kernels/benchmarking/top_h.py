"""Benchmark cases for :func:`entropy_kernels.top_h_mask` / :func:`top_h_sample`
(fp32 and bf16 logits, V=151936, B=1/64/256, both rules).

Baselines: transformers' ``TopHLogitsWarper`` (when importable) and the exact rule through
``torch.sort`` + cumulative sums + a multinomial draw; floor: one read of the logits (``_C``
pure read when compiled with CUDA, else a device copy).
"""

from __future__ import annotations

from typing import List

import torch

from .. import native
from ..ops.top_h import top_h_mask, top_h_sample
from .cases import Case, Provider

V = 151936
FULL_BATCHES = (1, 64, 256)
QUICK = {"cpu": (4,), "cuda": (64,)}


def torch_exact_top_h_sample(logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """The exact rule the usual way: full sort, cumulative sums, mask, multinomial."""
    z, order = torch.sort(logits.float(), dim=-1, descending=True)
    log_p = torch.log_softmax(z, dim=-1)
    p = log_p.exp()
    plogp = p * log_p
    entropy = -plogp.sum(-1, keepdim=True)
    s, t = torch.cumsum(p, -1), torch.cumsum(plogp, -1)
    keep = (torch.log(s) - t / s) <= alpha * entropy
    keep[:, 0] = True
    probs = torch.where(keep, p, torch.zeros_like(p))
    choice = torch.multinomial(probs, 1)
    return order.gather(-1, choice).squeeze(-1)


def _logits(case: Case) -> torch.Tensor:
    return (torch.randn(case.shape["B"], case.shape["V"], device=case.device) * 3).to(case.dtype)


def _ours(mode: str, sample: bool) -> Provider:
    def setup(case: Case):
        x = _logits(case)
        if sample:
            seed = torch.tensor([1], device=case.device)
            off = torch.tensor([0], device=case.device)
            return (lambda: top_h_sample(x, 0.4, mode=mode, seed=seed, offset=off)), []
        return (lambda: top_h_mask(x, 0.4, mode=mode)), []

    return Provider(f"entropy_kernels {mode} {'sample' if sample else 'mask'}", "ours", setup)


def _warper(case: Case):
    from transformers.generation.logits_process import TopHLogitsWarper

    warper, x = TopHLogitsWarper(top_h=0.4), _logits(case)
    return (lambda: warper(None, x)), []


def _sorted_exact(case: Case):
    x = _logits(case)
    return (lambda: torch_exact_top_h_sample(x, 0.4)), []


def _read_floor(case: Case):
    x = _logits(case)
    if case.device.type == "cuda" and native.cuda_compiled():
        return (lambda: native.read_checksum(x)), []
    dst = torch.empty_like(x)
    return (lambda: dst.copy_(x)), []


def _has_transformers(case: Case) -> bool:
    try:
        import transformers  # noqa: F401

        return True
    except Exception:
        return False


def top_h_cases(size: str, device: torch.device) -> List[Case]:
    batches = FULL_BATCHES if size == "full" else QUICK["cuda" if device.type == "cuda" else "cpu"]
    vocab = V if size == "full" or device.type == "cuda" else 8192
    dtypes = (torch.float32, torch.bfloat16) if device.type == "cuda" else (torch.float32,)
    cases = []
    for dtype in dtypes:
        for b in batches:
            case = Case("top_h", "fwd", {"B": b, "V": vocab}, dtype, device)
            case.providers = [
                _ours("transformers", False), _ours("exact", False),
                _ours("transformers", True), _ours("exact", True),
                Provider("transformers TopHLogitsWarper", "baseline", _warper, available=_has_transformers),
                Provider("torch.sort exact + sample", "baseline", _sorted_exact),
                Provider("floor: read", "floor", _read_floor),
            ]
            case.providers = [p for p in case.providers if p.available(case)]
            cases.append(case)
    return cases
