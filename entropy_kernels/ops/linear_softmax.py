"""``entropy_kernels::linear_softmax_stats`` and its backward: the differentiable core that the
cut cross-entropy (:mod:`.linear_cross_entropy`) and the per-token log-prob/entropy ops build
their losses from. Statistics and gradient algebra: :mod:`entropy_kernels.reference.linear_softmax`.

Not public by itself; it follows the template of :mod:`entropy_kernels.ops.entropy`.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import _backend
from ..reference.linear_softmax import (
    linear_softmax_backward_reference,
    linear_softmax_stats_reference,
    logits_grad_coefficients,
)
from ._registry import define_op
from .logits_chunks import stats_dtype

if _backend.triton_available():
    from ..kernels import linear_softmax as _kernels
else:  # pragma: no cover
    _kernels = None


def _stats_signature(
    h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
    softcap: float, inv_temperature: float, filter_eps: float, accum_fp32: bool,
) -> torch.Tensor:
    """``[N, 4]`` (lse, entropy, sum_z, z_y) of ``softmax(cap(h Wᵀ + b)·inv_T)``: fp32, fp64 for fp64 ``h``.

    ``filter_eps`` and ``accum_fp32`` only affect the backward; they are arguments here so that
    autograd can hand them to it.
    """


def _stats_kernel(h, weight, bias, targets, softcap, inv_temperature, filter_eps, accum_fp32):
    return _kernels.linear_softmax_forward(h, weight, bias, targets, softcap, inv_temperature)


def _stats_reference(h, weight, bias, targets, softcap, inv_temperature, filter_eps, accum_fp32):
    return linear_softmax_stats_reference(h, weight, bias, targets, softcap, inv_temperature).to(stats_dtype(h.dtype))


def _backward_signature(
    grad_stats: torch.Tensor, stats: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
    targets: torch.Tensor, softcap: float, inv_temperature: float, filter_eps: float, accum_fp32: bool,
    need_dh: bool = True, need_dw: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dh, dW, db)`` of ``Σ grad_stats · stats``; ``db`` is empty when there is no bias, and
    ``dh``/``dW`` are empty (not computed) when ``need_dh``/``need_dw`` is False."""


def _backward_kernel(grad_stats, stats, h, weight, bias, targets, softcap, inv_temperature, filter_eps, accum_fp32,
                     need_dh=True, need_dw=True):
    coeffs = logits_grad_coefficients(grad_stats.to(stats.dtype), stats).contiguous()
    thresh = None
    if filter_eps > 0:
        # Skip a tile when every |dz| < eps · (largest upstream gradient of its row): relative
        # to the row's own scale, so a 1/N mean-reduction factor does not filter everything.
        thresh = (filter_eps * grad_stats.to(stats.dtype).abs().amax(dim=-1)).contiguous()
    return _kernels.linear_softmax_backward(
        coeffs, thresh, h, weight, bias, targets, stats, softcap, inv_temperature, accum_fp32,
        need_dh=need_dh, need_dw=need_dw,
    )


def _backward_reference(grad_stats, stats, h, weight, bias, targets, softcap, inv_temperature, filter_eps, accum_fp32,
                        need_dh=True, need_dw=True):
    coeffs = logits_grad_coefficients(grad_stats.to(stats.dtype), stats).contiguous()
    dh, dw, db = linear_softmax_backward_reference(coeffs, h, weight, bias, targets, stats, softcap, inv_temperature)
    return (
        dh if need_dh else dh.new_empty((0, dh.shape[1])),
        dw if need_dw else dw.new_empty((0, dw.shape[1])),
        db if db is not None else torch.zeros(0, dtype=h.dtype, device=h.device),
    )


def stats_autograd(backward_op):
    """``(backward, setup_context)`` connecting a statistics op ``(h, weight, bias, targets,
    *options) -> stats`` to its backward op ``backward_op(grad_stats, stats, h, weight, bias,
    targets, *options, need_dh, need_dw) -> (dh, dW, db)``: the options travel unchanged from
    one to the other, and ``dh`` / ``dW`` are computed only where autograd asks for them (a
    frozen LM head).

    Example
    -------
    >>> backward, setup_context = stats_autograd(BACKWARD)
    >>> callable(backward) and callable(setup_context)
    True
    """

    def setup_context(ctx, inputs, output):
        h, weight, bias, targets, *options = inputs
        ctx.save_for_backward(h, weight, bias, targets, output)
        ctx.options = tuple(options)

    def backward(ctx, grad_stats):
        h, weight, bias, targets, stats = ctx.saved_tensors
        need_dh, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dh, dw, db = backward_op(grad_stats, stats, h, weight, bias, targets, *ctx.options, need_dh, need_dw)
        return (
            dh if need_dh else None,
            dw if need_dw else None,
            db if bias is not None and ctx.needs_input_grad[2] else None,
            *(None for _ in range(1 + len(ctx.options))),  # targets and the options
        )

    return backward, setup_context


def head_samples(with_backward_options: bool = False):
    """Small sample calls ``(h, weight, bias, targets, softcap, inv_temperature)`` of the
    linear-head ops, for the shared op tests (CPU, fresh random data).

    Example
    -------
    >>> [label for _, label in head_samples()]
    ['fp32', 'bias, softcap']
    """
    n, d, v = 6, 8, 40
    yield (torch.randn(n, d), torch.randn(v, d) * 0.5, None, torch.randint(0, v, (n,)), 0.0, 1.0), "fp32"
    yield (torch.randn(n, d), torch.randn(v, d) * 0.5, torch.randn(v), torch.randint(0, v, (n,)), 20.0, 0.7), \
        "bias, softcap"


def _stats_samples():
    for args, label in head_samples():
        yield (*args, 0.0, False), label


def _backward_samples():
    for args, label in _stats_samples():
        stats = _stats_reference(*args)
        yield (torch.randn_like(stats), stats, *args), label


_PUBLIC = "linear_cross_entropy / linear_logprob_entropy"
BACKWARD = define_op(
    "linear_softmax_backward", _backward_signature, public=_PUBLIC, kernel=_backward_kernel,
    reference=_backward_reference, eager=False, samples=_backward_samples,
)
_backward, _setup_context = stats_autograd(BACKWARD.op)
STATS = define_op(
    "linear_softmax_stats", _stats_signature, public=_PUBLIC, kernel=_stats_kernel,
    reference=_stats_reference, backward=_backward, setup_context=_setup_context, eager=False, samples=_stats_samples,
)
# the torch.library ops themselves (what torch.compile sees)
linear_softmax_stats, linear_softmax_backward = STATS.op, BACKWARD.op
