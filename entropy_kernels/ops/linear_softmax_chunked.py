"""``entropy_kernels::linear_softmax_stats_chunked``: the linear-softmax statistics from cuBLAS
GEMMs one chunk of tokens at a time, keeping no logits -- the backward recomputes each chunk's
logits. For log-probs and entropy, whose upstream gradients arrive only in the backward (cross-
entropy's chunked path computes its gradient in the forward instead).

Forward: per chunk, one GEMM → ``[C, V]`` logits → a Triton row kernel → the chunk's stats; the
chunk is freed. Backward: per chunk, the GEMM again, the row kernel turning the logits into their
gradient in place, then the ``dh`` and ``dW`` GEMMs: 4 GEMMs in all, one chunk of logits alive.
Against :mod:`.linear_softmax_stored` (3 GEMMs, all N·V logits kept) it trades one GEMM for the
memory; against the fused Triton op (:mod:`.linear_softmax`) it runs cuBLAS GEMMs instead of
Triton tiles (on an H100 the fused backward took 4× the stored path at 8192×4096×151936).
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

CHUNK_BYTES = 512 * 2**20  # logits of one chunk


def chunk_tokens(n: int, vocab: int, itemsize: int, budget_bytes: Optional[int] = None) -> int:
    """Tokens per chunk so that one chunk of logits fits ``budget_bytes`` (default
    ``CHUNK_BYTES``, read at each call; at least 1, at most n).

    Example
    -------
    >>> chunk_tokens(8192, 151936, 2)
    1766
    """
    budget = CHUNK_BYTES if budget_bytes is None else budget_bytes
    return max(1, min(max(n, 1), budget // max(1, vocab * itemsize)))


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], triton_path: bool) -> torch.Tensor:
    """``[C, V]`` logits of a chunk in the input dtype (cuBLAS on the GPU)."""
    if triton_path:
        return h @ weight.T if bias is None else torch.addmm(bias, h, weight.T)
    return raw_logits(h, weight, bias).to(h.dtype)  # in the input dtype, as on the GPU


@triton_op("entropy_kernels::linear_softmax_stats_chunked", mutates_args=())
def linear_softmax_stats_chunked(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    targets: torch.Tensor,
    softcap: float,
    inv_temperature: float,
    chunk_size: int,
    accum_fp32: bool,
) -> torch.Tensor:
    """``stats [N, 4]`` (lse, entropy, Σz, z_y), fp32 (fp64 for fp64 inputs). ``accum_fp32``:
    the backward accumulates ``dW`` over the chunks in fp32 (else in the weight's dtype)."""
    n = h.shape[0]
    stats = torch.empty((n, 4), dtype=torch.float64 if h.dtype == torch.float64 else torch.float32, device=h.device)
    triton_path = _backend.use_triton(h)
    for start in range(0, n, chunk_size):
        sl = slice(start, min(start + chunk_size, n))
        logits = _chunk_logits(h[sl], weight, bias, triton_path)
        if triton_path:
            stats[sl] = _rows.rows_stats(logits, targets[sl], softcap, inv_temperature)
        else:
            stats[sl] = rows_stats_reference(logits, targets[sl], softcap, inv_temperature).to(stats.dtype)
        del logits  # one chunk alive at a time
    return stats


@triton_op("entropy_kernels::linear_softmax_chunked_backward", mutates_args=())
def linear_softmax_chunked_backward(
    grad_stats: torch.Tensor,
    stats: torch.Tensor,
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    targets: torch.Tensor,
    softcap: float,
    inv_temperature: float,
    chunk_size: int,
    accum_fp32: bool,
    need_dh: bool,
    need_dw: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dh, dW, db)`` recomputing each chunk's logits; ``db`` is empty without bias, ``dh`` /
    ``dW`` empty when not needed (a frozen LM head: no ``[V, D]`` buffer, no ``dW`` GEMM)."""
    n, d = h.shape
    vocab = weight.shape[0]
    coeffs = logits_grad_coefficients(grad_stats.to(stats.dtype), stats).contiguous()
    dh = torch.empty_like(h) if need_dh else h.new_empty((0, d))
    # dW accumulates across the chunks in the weight dtype by default (each GEMM accumulates in
    # fp32 internally), as the stored-logits backward does: an fp32 [V, D] buffer costs twice
    # the memory; accum_fp32 takes it (the bf16 sum's error grows with the number of chunks)
    acc = torch.float32 if accum_fp32 and h.dtype != torch.float64 else h.dtype
    dw = torch.zeros((vocab if need_dw else 0, d), dtype=acc, device=h.device)
    db = torch.zeros((vocab if bias is not None else 0,), dtype=torch.float64 if h.dtype == torch.float64 else torch.float32,
                     device=h.device)
    triton_path = _backend.use_triton(h)
    for start in range(0, n, chunk_size):
        sl = slice(start, min(start + chunk_size, n))
        logits = _chunk_logits(h[sl], weight, bias, triton_path)
        if triton_path:
            dz = _rows.rows_grad_(logits, targets[sl], stats[sl], coeffs[sl], softcap, inv_temperature)  # in place
        else:
            dz = rows_grad_reference(logits, targets[sl], stats[sl], coeffs[sl], softcap, inv_temperature).to(logits.dtype)
        if need_dh:
            dh[sl] = dz @ weight
        if need_dw:
            if acc == dz.dtype:
                dw.addmm_(dz.T, h[sl])
            else:
                dw.addmm_(dz.T.to(acc), h[sl].to(acc))
        if bias is not None:
            db += dz.sum(0, dtype=db.dtype)
        del logits, dz
    return dh, dw.to(weight.dtype), db.to(bias.dtype) if bias is not None else db


def _setup_context(ctx, inputs, output):
    h, weight, bias, targets, softcap, inv_temperature, chunk_size, accum_fp32 = inputs
    ctx.save_for_backward(h, weight, bias, targets, output)
    ctx.options = (softcap, inv_temperature, chunk_size, accum_fp32)


def _backward(ctx, grad_stats):
    h, weight, bias, targets, stats = ctx.saved_tensors
    need_dh, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    dh, dw, db = linear_softmax_chunked_backward(grad_stats, stats, h, weight, bias, targets, *ctx.options,
                                                 need_dh, need_dw)
    return (
        dh if need_dh else None,
        dw if need_dw else None,
        db if bias is not None and ctx.needs_input_grad[2] else None,
        None, None, None, None, None,
    )


linear_softmax_stats_chunked.register_autograd(_backward, setup_context=_setup_context)
