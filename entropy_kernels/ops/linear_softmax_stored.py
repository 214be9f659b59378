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

from .. import _backend
from ..reference.linear_softmax import logits_grad_coefficients
from ._registry import define_op
from .linear_softmax import head_samples
from .linear_softmax_chunked import chunk_tokens
from .logits_chunks import accumulate_chunk_grads, chunk_logits, rows_grad, rows_stats, stats_dtype

BACKWARD_CHUNK_BYTES = 256 * 2**20


def _stats(
    h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
    softcap: float, inv_temperature: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(stats [N, 4], logits [N, V])``; the logits (input dtype) are kept for the backward."""
    triton_path = _backend.use_triton(h)
    logits = chunk_logits(h, weight, bias, gemm=triton_path)  # kept in the input dtype, as on the GPU
    return rows_stats(logits, targets, softcap, inv_temperature, triton_path), logits


def _backward_impl(
    grad_stats: torch.Tensor, stats: torch.Tensor, logits: torch.Tensor, h: torch.Tensor, weight: torch.Tensor,
    bias: Optional[torch.Tensor], targets: torch.Tensor, softcap: float, inv_temperature: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dh, dW, db)`` from stored logits; ``db`` is empty without bias."""
    coeffs = logits_grad_coefficients(grad_stats.to(stats.dtype), stats).contiguous()
    triton_path = _backend.use_triton(h)

    def chunk_grad(rows: slice) -> torch.Tensor:
        # into a chunk buffer: the stored logits stay intact, so a second backward stays valid
        out = None
        if triton_path:
            out = torch.empty((rows.stop - rows.start, logits.shape[1]), dtype=logits.dtype, device=h.device)
        return rows_grad(logits[rows], targets[rows], stats[rows], coeffs[rows], softcap, inv_temperature, triton_path,
                         out=out)

    chunk = chunk_tokens(h.shape[0], weight.shape[0], logits.element_size(), BACKWARD_CHUNK_BYTES)
    # dW accumulates in the weight dtype across a handful of chunks (each GEMM accumulates in
    # fp32 internally); an fp32 [V, D] buffer would cost as much memory as the logits saved.
    return accumulate_chunk_grads(h, weight, bias, chunk, chunk_grad, dw_dtype=h.dtype, db_dtype=stats_dtype(h.dtype))


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
    dh, dw, db = BACKWARD.op(grad_stats, stats, logits, h, weight, bias, targets, *ctx.options)
    return (
        dh if ctx.needs_input_grad[0] else None,
        dw if ctx.needs_input_grad[1] else None,
        db if bias is not None and ctx.needs_input_grad[2] else None,
        None, None, None,
    )


def _backward_samples():
    for args, label in head_samples():
        stats, logits = _stats(*args)
        yield (torch.randn_like(stats), stats, logits, *args), label


_PUBLIC = "linear_logprob_entropy"
BACKWARD = define_op("linear_softmax_stored_backward", public=_PUBLIC, implementation=_backward_impl,
                     eager=False, samples=_backward_samples)
STATS = define_op("linear_softmax_stats_stored", public=_PUBLIC, implementation=_stats, backward=_backward,
                  setup_context=_setup_context, eager=False, samples=head_samples)
# the torch.library ops themselves (what torch.compile sees)
linear_softmax_stats_stored, linear_softmax_stored_backward = STATS.op, BACKWARD.op
