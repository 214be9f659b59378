"""Benchmark cases for :func:`entropy_kernels.linear_cross_entropy` (bf16,
Gemma-2-2B 8192×2304×256000 and Llama-3-8B 8192×4096×128256, fwd+bwd; forward only at the
Gemma shape; dense and peaked inputs).

Providers: ours (``chunked`` and ``fused``), torch eager and ``torch.compile`` of
``F.cross_entropy(h @ Wᵀ)``, apple's ``cut_cross_entropy`` and Liger's fused linear CE when they
are importable, and the GEMM floors (the same GEMMs through torch: 1 for forward, 3 and 4 for
fwd+bwd).
"""

from __future__ import annotations

import functools
from typing import List

import torch
import torch.nn.functional as F

from ..ops.linear_cross_entropy import linear_cross_entropy
from .cases import Case, Provider, pick_shapes

FULL = [("gemma2-2b", 8192, 2304, 256000), ("llama3-8b", 8192, 4096, 128256)]
QUICK = {"cpu": [("tiny", 256, 64, 2048)], "cuda": [("small", 2048, 1024, 32000)]}
PEAKED_ENTROPY = 3.6  # nats: mean entropy of LM-like peaked inputs


def torch_linear_cross_entropy(h, w, y):
    """The baseline users write: fp32 logits, then F.cross_entropy."""
    return F.cross_entropy((h @ w.T).float(), y)


@functools.lru_cache(maxsize=None)
def _compiled():
    return torch.compile(torch_linear_cross_entropy)


def _peaked_scale(w, y, noise, target_entropy):
    """Scale a of h = a·W[y] + noise giving mean softmax entropy ≈ target (bisection on 256 rows)."""
    lo, hi = 0.0, 64.0
    wy, nz = w[y[:256]].float(), noise[:256].float()
    for _ in range(20):
        a = (lo + hi) / 2
        logp = torch.log_softmax((a * wy + nz) @ w.float().T, dim=-1)
        ent = -(logp.exp() * logp).sum(-1).mean().item()
        lo, hi = (a, hi) if ent > target_entropy else (lo, a)
    return (lo + hi) / 2


def make_inputs(case: Case, requires_grad: bool):
    n, d, v = case.shape["N"], case.shape["D"], case.shape["V"]
    dev, dt = case.device, case.dtype
    w = (torch.randn(v, d, device=dev) / d**0.5).to(dt)
    y = torch.randint(0, v, (n,), device=dev)
    if case.shape.get("peaked"):
        noise = torch.randn(n, d, device=dev) / d**0.5
        h = (_peaked_scale(w, y, noise, PEAKED_ENTROPY) * w[y].float() + noise).to(dt)
    else:
        h = torch.randn(n, d, device=dev).to(dt)
    return h.requires_grad_(requires_grad), w.requires_grad_(requires_grad), y


def head_provider(name, kind, make_fn, make_inputs, backward_run, available=lambda case: True) -> Provider:
    """A provider timing ``fn = make_fn()`` on LM-head inputs ``make_inputs(case, requires_grad)
    -> (h, w, y)``: ``fn(h, w, y)`` for a ``fwd`` case, else ``backward_run(case, fn, h, w, y)``
    (a callable that runs the forward and the backward; the grads of ``h`` and ``w`` are reset between runs).

    Example
    -------
    >>> p = head_provider("torch", "baseline", lambda: torch_linear_cross_entropy, make_inputs,
    ...                   lambda case, fn, h, w, y: lambda: fn(h, w, y).backward())
    >>> p.name, p.kind
    ('torch', 'baseline')
    """
    def setup(case: Case):
        fn = make_fn()
        if case.mode == "fwd":
            h, w, y = make_inputs(case, False)
            return (lambda: fn(h, w, y)), []
        h, w, y = make_inputs(case, True)
        return backward_run(case, fn, h, w, y), [h, w]

    return Provider(name, kind, setup, available)


def _loss_provider(name, kind, make_fn, available=lambda case: True) -> Provider:
    return head_provider(name, kind, make_fn, make_inputs, lambda case, fn, h, w, y: lambda: fn(h, w, y).backward(),
                         available)


def _importable(module: str) -> bool:
    try:
        __import__(module)
        return True
    except Exception:
        return False


def _cce():
    from cut_cross_entropy import linear_cross_entropy as cce

    return lambda h, w, y: cce(h, w, y, impl="cce")


def _liger():
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    loss = LigerFusedLinearCrossEntropyLoss()
    return lambda h, w, y: loss(w, h, y)


def _torch_builtin():
    """torch's own ``F.linear_cross_entropy`` (torch >= 2.13), chunked (``LinearCrossEntropyOptions()``)."""
    options = torch.nn.LinearCrossEntropyOptions()
    return lambda h, w, y: torch.nn.functional.linear_cross_entropy(h, w, y, options=options)


def _gemm_floor(n_gemms: int):
    def setup(case: Case):
        h, w, _ = make_inputs(case, False)
        logits = torch.empty(h.shape[0], w.shape[0], device=h.device, dtype=h.dtype)
        dh, dw = torch.empty_like(h), torch.empty_like(w)

        def run():
            torch.matmul(h, w.T, out=logits)  # forward logits
            if n_gemms >= 3:
                torch.matmul(logits, w, out=dh)  # dh = dz W
                torch.matmul(logits.T, h, out=dw)  # dW = dzᵀ h
            if n_gemms == 4:
                torch.matmul(h, w.T, out=logits)  # recomputed logits
        return run, []

    return setup


def _providers(case: Case) -> List[Provider]:
    gpu = case.device.type == "cuda"
    ours = [
        _loss_provider("entropy_kernels chunked", "ours", lambda: functools.partial(linear_cross_entropy, impl="chunked"),
                       available=lambda c: c.mode != "fwd"),
        _loss_provider("entropy_kernels fused", "ours", lambda: functools.partial(linear_cross_entropy, impl="fused")),
    ]
    baselines = [
        _loss_provider("torch", "baseline", lambda: torch_linear_cross_entropy),
        _loss_provider("torch.compile", "baseline", _compiled),
        _loss_provider("torch F.linear_cross_entropy", "baseline", _torch_builtin,
                       available=lambda c: hasattr(torch.nn.functional, "linear_cross_entropy")),
        _loss_provider("apple cce", "baseline", _cce, available=lambda c: gpu and _importable("cut_cross_entropy")),
        _loss_provider("liger flce", "baseline", _liger, available=lambda c: gpu and _importable("liger_kernel")),
    ]
    if case.mode == "fwd":
        floors = [Provider("floor: 1 GEMM", "floor", _gemm_floor(1))]
    else:
        floors = [Provider("floor: 3 GEMMs", "floor", _gemm_floor(3)), Provider("floor: 4 GEMMs", "floor", _gemm_floor(4))]
    return [p for p in ours + baselines + floors if p.available(case)]


def linear_cross_entropy_cases(size: str, device: torch.device) -> List[Case]:
    shapes, dtype = pick_shapes(size, device, FULL, QUICK)
    cases = []
    for name, n, d, v in shapes:
        for mode, peaked in (("fwd+bwd", False), ("fwd+bwd", True), ("fwd", False)):
            if mode == "fwd" and name != shapes[0][0]:
                continue
            shape = {"N": n, "D": d, "V": v}
            if peaked:
                shape["peaked"] = 1
            case = Case("linear_cross_entropy", mode, shape, dtype, device)
            case.providers = _providers(case)
            cases.append(case)
    return cases
