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

from .. import _backend
from ..reference.linear_softmax import logits_grad_coefficients
from ._registry import define_op
from .linear_softmax import head_samples, stats_autograd
from .logits_chunks import accumulate_chunk_grads, chunk_logits, rows_grad, rows_stats, stats_dtype

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


def _stats(
    h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
    softcap: float, inv_temperature: float, chunk_size: int, accum_fp32: bool,
) -> torch.Tensor:
    """``stats [N, 4]`` (lse, entropy, Σz, z_y), fp32 (fp64 for fp64 inputs). ``accum_fp32``:
    the backward accumulates ``dW`` over the chunks in fp32 (else in the weight's dtype)."""
    n = h.shape[0]
    stats = torch.empty((n, 4), dtype=stats_dtype(h.dtype), device=h.device)
    triton_path = _backend.use_triton(h)
    for start in range(0, n, chunk_size):
        rows = slice(start, min(start + chunk_size, n))
        logits = chunk_logits(h[rows], weight, bias, gemm=triton_path)
        stats[rows] = rows_stats(logits, targets[rows], softcap, inv_temperature, triton_path)
        del logits  # one chunk alive at a time
    return stats


def _backward_impl(
    grad_stats: torch.Tensor, stats: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
    targets: torch.Tensor, softcap: float, inv_temperature: float, chunk_size: int, accum_fp32: bool,
    need_dh: bool, need_dw: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dh, dW, db)`` recomputing each chunk's logits; ``db`` is empty without bias, ``dh`` /
    ``dW`` empty when not needed (a frozen LM head: no ``[V, D]`` buffer, no ``dW`` GEMM)."""
    coeffs = logits_grad_coefficients(grad_stats.to(stats.dtype), stats).contiguous()
    triton_path = _backend.use_triton(h)

    def chunk_grad(rows: slice) -> torch.Tensor:
        logits = chunk_logits(h[rows], weight, bias, gemm=triton_path)
        # the row kernel writes the gradient over the logits: one chunk alive
        return rows_grad(logits, targets[rows], stats[rows], coeffs[rows], softcap, inv_temperature, triton_path)

    # dW accumulates across the chunks in the weight dtype by default (each GEMM accumulates in
    # fp32 internally), as the stored-logits backward does: an fp32 [V, D] buffer costs twice
    # the memory; accum_fp32 takes it (the bf16 sum's error grows with the number of chunks)
    acc = torch.float32 if accum_fp32 and h.dtype != torch.float64 else h.dtype
    return accumulate_chunk_grads(h, weight, bias, chunk_size, chunk_grad, dw_dtype=acc, db_dtype=stats_dtype(h.dtype),
                                  need_dh=need_dh, need_dw=need_dw)


def _stats_samples():
    for args, label in head_samples():
        yield (*args, 4, False), label


def _backward_samples():
    for args, label in _stats_samples():
        stats = _stats(*args)
        yield (torch.randn_like(stats), stats, *args, True, True), label


_PUBLIC = "linear_logprob_entropy"
BACKWARD = define_op("linear_softmax_chunked_backward", public=_PUBLIC,
                     implementation=_backward_impl, eager=False, samples=_backward_samples)
_backward, _setup_context = stats_autograd(BACKWARD.op)
STATS = define_op("linear_softmax_stats_chunked", public=_PUBLIC, implementation=_stats,
                  backward=_backward, setup_context=_setup_context, eager=False, samples=_stats_samples)
# the torch.library ops themselves (what torch.compile sees)
linear_softmax_stats_chunked, linear_softmax_chunked_backward = STATS.op, BACKWARD.op
