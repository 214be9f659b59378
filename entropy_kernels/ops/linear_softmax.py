"""``entropy_kernels::linear_softmax_stats`` and its backward: the differentiable core that the
cut cross-entropy (:mod:`.linear_cross_entropy`) and the per-token log-prob/entropy ops build
their losses from. Statistics and gradient algebra: :mod:`entropy_kernels.reference.linear_softmax`.

Not public by itself; it follows the template of :mod:`entropy_kernels.ops.entropy`.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch.library import triton_op

from .. import _backend
from ..reference.linear_softmax import (
    linear_softmax_backward_reference,
    linear_softmax_stats_reference,
    logits_grad_coefficients,
)
from .logits_chunks import stats_dtype

if _backend.triton_available():
    from ..kernels import linear_softmax as _kernels
else:  # pragma: no cover
    _kernels = None


@triton_op("entropy_kernels::linear_softmax_stats", mutates_args=())
def linear_softmax_stats(
    h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
    softcap: float, inv_temperature: float, filter_eps: float, accum_fp32: bool,
) -> torch.Tensor:
    """``[N, 4]`` (lse, entropy, sum_z, z_y) of ``softmax(cap(h Wᵀ + b)·inv_T)``: fp32, fp64 for fp64 ``h``.

    ``filter_eps`` and ``accum_fp32`` only affect the backward; they are arguments here so that
    autograd can hand them to it.
    """
    if _backend.use_triton(h):
        return _kernels.linear_softmax_forward(h, weight, bias, targets, softcap, inv_temperature)
    return linear_softmax_stats_reference(h, weight, bias, targets, softcap, inv_temperature).to(stats_dtype(h.dtype))


@triton_op("entropy_kernels::linear_softmax_backward", mutates_args=())
def linear_softmax_backward(
    grad_stats: torch.Tensor, stats: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
    targets: torch.Tensor, softcap: float, inv_temperature: float, filter_eps: float, accum_fp32: bool,
    need_dh: bool = True, need_dw: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dh, dW, db)`` of ``Σ grad_stats · stats``; ``db`` is empty when there is no bias, and
    ``dh``/``dW`` are empty (not computed) when ``need_dh``/``need_dw`` is False."""
    coeffs = logits_grad_coefficients(grad_stats.to(stats.dtype), stats).contiguous()
    if _backend.use_triton(h):
        thresh = None
        if filter_eps > 0:
            # Skip a tile when every |dz| < eps · (largest upstream gradient of its row): relative
            # to the row's own scale, so a 1/N mean-reduction factor does not filter everything.
            thresh = (filter_eps * grad_stats.to(stats.dtype).abs().amax(dim=-1)).contiguous()
        return _kernels.linear_softmax_backward(
            coeffs, thresh, h, weight, bias, targets, stats, softcap, inv_temperature, accum_fp32,
            need_dh=need_dh, need_dw=need_dw,
        )
    dh, dw, db = linear_softmax_backward_reference(coeffs, h, weight, bias, targets, stats, softcap, inv_temperature)
    return (
        dh if need_dh else dh.new_empty((0, dh.shape[1])),
        dw if need_dw else dw.new_empty((0, dw.shape[1])),
        db if db is not None else torch.zeros(0, dtype=h.dtype, device=h.device),
    )


def register_stats_autograd(stats_op, backward_op) -> None:
    """Connect a statistics op ``stats_op(h, weight, bias, targets, *options) -> stats`` to
    its backward op ``backward_op(grad_stats, stats, h, weight, bias, targets, *options,
    need_dh, need_dw) -> (dh, dW, db)``: the options travel unchanged from one to the other,
    and ``dh`` / ``dW`` are computed only where autograd asks for them (a frozen LM head).

    Example
    -------
    >>> register_stats_autograd(linear_softmax_stats, linear_softmax_backward)  # doctest: +SKIP
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

    stats_op.register_autograd(backward, setup_context=setup_context)


register_stats_autograd(linear_softmax_stats, linear_softmax_backward)
