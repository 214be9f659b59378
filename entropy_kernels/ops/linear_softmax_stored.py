"""``entropy_kernels::linear_softmax_stats_stored``: the linear-softmax statistics computed
from logits that are *kept* (in the input dtype) for the backward — the speed-for-memory
alternative to :mod:`.linear_softmax` (which recomputes logits tile by tile).

Forward: one cuBLAS GEMM → ``[N, V]`` logits, a Triton row kernel → stats.
Backward: per chunk of rows, a Triton row kernel turns stored logits into their gradient
(into a chunk buffer: the stored logits are left intact, so a second backward stays valid),
then two cuBLAS GEMMs give ``dh`` and ``dW``: 3 GEMMs in all instead of 4.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch.library import triton_op

from .. import _backend
from ..reference.linear_softmax import (
    logits_grad_coefficients,
    raw_logits,
    rows_grad_reference,
    rows_stats_reference,
)

if _backend.triton_available():
    from ..kernels import logits_rows as _rows
else:  # pragma: no cover
    _rows = None

BACKWARD_CHUNK_BYTES = 256 * 2**20


@triton_op("entropy_kernels::linear_softmax_stats_stored", mutates_args=())
def linear_softmax_stats_stored(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    targets: torch.Tensor,
    softcap: float,
    inv_temperature: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(stats [N, 4], logits [N, V])``; the logits (input dtype) are kept for the backward."""
    if _backend.use_triton(h):
        logits = h @ weight.T if bias is None else torch.addmm(bias, h, weight.T)
        return _rows.rows_stats(logits, targets, softcap, inv_temperature), logits
    logits = raw_logits(h, weight, bias).to(h.dtype)  # kept in the input dtype, as on the GPU
    stats = rows_stats_reference(logits, targets, softcap, inv_temperature)
    return stats.to(torch.float64 if h.dtype == torch.float64 else torch.float32), logits


@triton_op("entropy_kernels::linear_softmax_stored_backward", mutates_args=())
def linear_softmax_stored_backward(
    grad_stats: torch.Tensor,
    stats: torch.Tensor,
    logits: torch.Tensor,
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    targets: torch.Tensor,
    softcap: float,
    inv_temperature: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dh, dW, db)`` from stored logits; ``db`` is empty without bias."""
    n, d = h.shape
    vocab = weight.shape[0]
    coeffs = logits_grad_coefficients(grad_stats.to(stats.dtype), stats).contiguous()
    dh = torch.empty_like(h)
    # dW accumulates in the weight dtype across a handful of chunks (each GEMM accumulates in
    # fp32 internally); an fp32 [V, D] buffer would cost as much memory as the logits saved.
    dw = torch.zeros((vocab, d), dtype=h.dtype, device=h.device)
    db = torch.zeros((vocab if bias is not None else 0,), dtype=torch.float64 if h.dtype == torch.float64 else torch.float32, device=h.device)
    triton_path = _backend.use_triton(h)
    chunk = max(1, min(n, BACKWARD_CHUNK_BYTES // max(1, vocab * logits.element_size())))
    for start in range(0, n, chunk):
        end = min(start + chunk, n)
        sl = slice(start, end)
        if triton_path:
            dz = torch.empty((end - start, vocab), dtype=logits.dtype, device=h.device)
            _rows.rows_grad_(logits[sl], targets[sl], stats[sl], coeffs[sl], softcap, inv_temperature, out=dz)
        else:
            dz = rows_grad_reference(logits[sl], targets[sl], stats[sl], coeffs[sl], softcap, inv_temperature).to(logits.dtype)
        dh[sl] = dz @ weight
        dw.addmm_(dz.T, h[sl])
        if bias is not None:
            db += dz.sum(0, dtype=db.dtype)
        del dz  # free this chunk before the next one is allocated: one chunk alive at a time
    return dh, dw, db.to(bias.dtype) if bias is not None else db


def _setup_context(ctx, inputs, output):
    h, weight, bias, targets, softcap, inv_temperature = inputs
    stats, logits = output
    ctx.mark_non_differentiable(logits)
    # The logits output never gets a gradient; without this autograd would materialise a zero
    # [N, V] gradient for it -- a second copy of the logits.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(h, weight, bias, targets, stats, logits)
    ctx.options = (softcap, inv_temperature)


def _backward(ctx, grad_stats, _grad_logits):
    h, weight, bias, targets, stats, logits = ctx.saved_tensors
    if grad_stats is None:  # only the logits output was used, and it has no gradient
        return (None,) * 6
    dh, dw, db = linear_softmax_stored_backward(grad_stats, stats, logits, h, weight, bias, targets, *ctx.options)
    return (
        dh if ctx.needs_input_grad[0] else None,
        dw if ctx.needs_input_grad[1] else None,
        db if bias is not None and ctx.needs_input_grad[2] else None,
        None, None, None,
    )


linear_softmax_stats_stored.register_autograd(_backward, setup_context=_setup_context)
