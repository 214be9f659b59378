"""Benchmark cases for :func:`entropy_kernels.linear_logprob_entropy` (bf16, N=8192, D=4096,
V=151936: a Qwen-sized vocabulary; forward, and forward + backward with gradients of both outputs) and
for :func:`entropy_kernels.high_entropy_mask` (1M tokens).

Baselines: the verl-style torch code (fp32 logits, log-softmax, gather, entropy) eager and
under ``torch.compile``, and TRL's chunked kernel when TRL is installed; floors: the GEMMs alone (1 forward; 4 for fwd+bwd with recomputed
logits, 3 when logits are stored). The mask's baseline is the usual torch code, a quantile over
the valid tokens (boolean indexing: a host synchronisation).
"""

from __future__ import annotations

import functools
from typing import List

import torch

from .. import config
from ..ops.high_entropy_mask import high_entropy_mask
from ..ops.linear_logprob_entropy import linear_logprob_entropy
from ..reference.high_entropy import high_entropy_mask_reference
from .cases import Case, Provider, pick_shapes
from .linear_cross_entropy import _gemm_floor, head_provider

FULL = [(8192, 4096, 151936)]
QUICK = {"cpu": [(256, 64, 2048)], "cuda": [(2048, 1024, 32000)]}


def torch_logprob_entropy(h, w, y, temperature: float = 1.0):
    """verl-style: fp32 logits, log_softmax, gather the label, entropy from the same logits."""
    logits = (h @ w.T).float() / temperature
    logp = torch.log_softmax(logits, dim=-1)
    lp = logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    ent = torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)
    return lp, ent


def trl_available() -> bool:
    """Whether TRL's chunked log-prob kernel (``trl.kernels.ChunkedLogProbFunction``) imports."""
    try:
        from trl.kernels import ChunkedLogProbFunction  # noqa: F401
        return True
    except Exception:  # any failure to import a peer only drops its row
        return False


def trl_logprob_entropy(h, w, y, temperature: float = 1.0):
    """TRL's own fused-LM-head kernel (what ``add_fused_lm_head`` runs): ``(log_probs, entropy)``.

    Example
    -------
    >>> import torch
    >>> h, w, y = torch.randn(4, 8), torch.randn(30, 8), torch.randint(0, 30, (4,))
    >>> lp, ent = trl_logprob_entropy(h, w, y) if trl_available() else torch_logprob_entropy(h, w, y)
    >>> torch.allclose(lp, torch_logprob_entropy(h, w, y)[0], atol=1e-5)
    True
    """
    from trl.kernels import ChunkedLogProbFunction

    out = ChunkedLogProbFunction.apply(h, w, None, y, temperature, 32768, None, 1.0, ("log_probs", "entropy"))
    return out[0], out[1]


@functools.lru_cache(maxsize=None)
def _compiled():
    return torch.compile(torch_logprob_entropy)


def _inputs(case: Case, grad: bool):
    n, d, v = case.shape["N"], case.shape["D"], case.shape["V"]
    h = torch.randn(n, d, device=case.device).to(case.dtype).requires_grad_(grad)
    w = (torch.randn(v, d, device=case.device) / d**0.5).to(case.dtype).requires_grad_(grad)
    return h, w, torch.randint(0, v, (n,), device=case.device)


def _backward_of_both(case: Case, fn, h, w, y):
    """Forward and backward with random upstream gradients for both outputs."""
    g1 = torch.randn(case.shape["N"], device=case.device)
    g2 = torch.randn(case.shape["N"], device=case.device)

    def run():
        lp, ent = fn(h, w, y)
        torch.autograd.backward([lp, ent], [g1, g2])

    return run


def _provider(name, kind, make_fn) -> Provider:
    return head_provider(name, kind, make_fn, _inputs, _backward_of_both)


def _mask_provider(name, kind, fn) -> Provider:
    def setup(case: Case):
        n = case.shape["tokens"]
        ent = torch.rand(n, device=case.device) * 4
        mask = torch.rand(n, device=case.device) < 0.8
        return (lambda: fn(ent, mask)), []

    return Provider(name, kind, setup)


def _quantile_mask(entropy, mask, top_fraction=0.2):
    threshold = torch.quantile(entropy[mask].float(), 1 - top_fraction)  # boolean index: host sync
    return mask & (entropy >= threshold)


def _mask_four_launches(entropy, mask, top_fraction=0.2):
    """high_entropy_mask with ``EK_COV_FUSED=0``: four launches instead of one cooperative launch."""
    with config.override(cov_fused=False):
        return high_entropy_mask(entropy, mask, top_fraction)


def _sort_mask(entropy, mask, top_fraction=0.2):
    """The torch reference: a stable device sort of the keys (the op's CPU path)."""
    return high_entropy_mask_reference(entropy, mask, top_fraction)


def linear_logprob_entropy_cases(size: str, device: torch.device) -> List[Case]:
    shapes, dtype = pick_shapes(size, device, FULL, QUICK)
    cases = []
    for n, d, v in shapes:
        for mode in ("fwd", "fwd+bwd"):
            case = Case("linear_logprob_entropy", mode, {"N": n, "D": d, "V": v}, dtype, device)
            case.providers = [
                _provider("entropy_kernels fused", "ours", lambda: functools.partial(linear_logprob_entropy, impl="fused")),
                _provider("entropy_kernels stored", "ours", lambda: functools.partial(linear_logprob_entropy, impl="stored")),
                _provider("entropy_kernels chunked", "ours", lambda: functools.partial(linear_logprob_entropy, impl="chunked")),
                _provider("torch", "baseline", lambda: torch_logprob_entropy),
                _provider("torch.compile", "baseline", _compiled),
            ]
            if trl_available():  # TRL's chunked kernel, where the TRL trainers' log-probs come from
                case.providers.append(_provider("trl chunked", "baseline", lambda: trl_logprob_entropy))
            if mode == "fwd":
                case.providers.append(Provider("floor: 1 GEMM", "floor", _gemm_floor(1)))
            else:
                case.providers += [Provider("floor: 3 GEMMs", "floor", _gemm_floor(3)),
                                   Provider("floor: 4 GEMMs", "floor", _gemm_floor(4))]
            cases.append(case)
    return cases


def high_entropy_mask_cases(size: str, device: torch.device) -> List[Case]:
    """The 80/20 mask on 1M tokens (GPU or --full; 65K on a CPU --quick run)."""
    tokens = 1 << 20 if size == "full" or device.type == "cuda" else 1 << 16
    mask_case = Case("high_entropy_mask", "fwd", {"tokens": tokens}, torch.float32, device)
    mask_case.providers = [
        _mask_provider("entropy_kernels", "ours", high_entropy_mask),
        _mask_provider("entropy_kernels (four launches)", "ours", _mask_four_launches),
        _mask_provider("torch sort (reference)", "baseline", _sort_mask),
        _mask_provider("torch quantile", "baseline", _quantile_mask),
    ]
    return [mask_case]
