"""Materialised logits, one chunk of tokens at a time: the pieces shared by the ops that run
cuBLAS GEMMs and Triton row kernels instead of the fused Triton tiles --
:mod:`.linear_softmax_chunked`, :mod:`.linear_softmax_stored` and the chunked cross-entropy of
:mod:`.linear_cross_entropy`.

Each piece routes like the ops do: the Triton row kernels of :mod:`entropy_kernels.kernels.logits_rows`
where :func:`entropy_kernels._backend.use_triton` says so (``triton_path``), the pure-torch
reference otherwise.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from .. import _backend
from ..reference.linear_softmax import raw_logits, rows_grad_reference, rows_stats_reference

if _backend.triton_available():
    from ..kernels import logits_rows as _rows
else:  # pragma: no cover
    _rows = None


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the ``[N, 4]`` statistics for inputs of ``dtype``: fp64 for fp64, else fp32.

    Example
    -------
    >>> stats_dtype(torch.bfloat16)
    torch.float32
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], gemm: bool) -> torch.Tensor:
    """``[C, V]`` raw logits ``h Wᵀ + b`` in the input dtype. ``gemm``: one GEMM in the input
    dtype (cuBLAS on the GPU); otherwise the fp32 (fp64) reference logits rounded to the input
    dtype, as the GPU's GEMM rounds them.

    Example
    -------
    >>> chunk_logits(torch.ones(2, 3), torch.ones(5, 3), None, gemm=True).shape
    torch.Size([2, 5])
    """
    if gemm:
        return h @ weight.T if bias is None else torch.addmm(bias, h, weight.T)
    return raw_logits(h, weight, bias).to(h.dtype)


def rows_stats(logits: torch.Tensor, targets: torch.Tensor, softcap: float, inv_temperature: float,
               triton_path: bool) -> torch.Tensor:
    """``[C, 4]`` stats (lse, entropy, Σz, z_y) of materialised raw ``logits [C, V]``, in
    :func:`stats_dtype` of the logits.

    Example
    -------
    >>> rows_stats(torch.zeros(1, 4), torch.tensor([1]), 0.0, 1.0, triton_path=False)
    tensor([[1.3863, 1.3863, 0.0000, 0.0000]])
    """
    if triton_path:
        return _rows.rows_stats(logits, targets, softcap, inv_temperature)
    return rows_stats_reference(logits, targets, softcap, inv_temperature)


def rows_grad(logits: torch.Tensor, targets: torch.Tensor, stats: torch.Tensor, coeffs: torch.Tensor, softcap: float,
              inv_temperature: float, triton_path: bool, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The gradient w.r.t. raw ``logits [C, V]`` for the coefficients ``coeffs [C, 4]`` (see
    :func:`entropy_kernels.reference.linear_softmax.logits_grad_coefficients`), in the logits'
    dtype. The Triton path writes it into ``out``, by default over ``logits`` (no second chunk).

    Example
    -------
    >>> x, y = torch.zeros(1, 4), torch.tensor([2])
    >>> ce = torch.tensor([[1.0, 0.0, -1.0, 0.0]])                      # cross-entropy, g = 1
    >>> rows_grad(x, y, rows_stats(x, y, 0.0, 1.0, False), ce, 0.0, 1.0, triton_path=False)
    tensor([[ 0.2500,  0.2500, -0.7500,  0.2500]])
    """
    if triton_path:
        return _rows.rows_grad_(logits, targets, stats, coeffs, softcap, inv_temperature, out=out)
    return rows_grad_reference(logits, targets, stats, coeffs, softcap, inv_temperature).to(logits.dtype)


def accumulate_chunk_grads(
    h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], chunk_size: int,
    chunk_grad: Callable[[slice], torch.Tensor], *, dw_dtype: torch.dtype, db_dtype: torch.dtype,
    need_dh: bool = True, need_dw: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dh, dW, db)`` from the logits gradients ``chunk_grad(rows)`` returns for each chunk of
    ``chunk_size`` tokens: ``dh[rows] = dz W`` and ``dW += dzᵀ h[rows]`` (two GEMMs a chunk),
    ``db += Σ dz``. ``dW`` is summed in ``dw_dtype`` and returned in the weight's dtype, ``db``
    summed in ``db_dtype`` and returned in the bias's (empty without bias); ``dh`` / ``dW`` are
    empty when ``need_dh`` / ``need_dw`` is False (a frozen LM head: no ``[V, D]`` buffer).

    Example
    -------
    >>> h, w = torch.randn(5, 3), torch.randn(7, 3)
    >>> dh, dw, db = accumulate_chunk_grads(h, w, None, 2, lambda rows: torch.ones(rows.stop - rows.start, 7),
    ...                                     dw_dtype=torch.float32, db_dtype=torch.float32)
    >>> torch.allclose(dh, torch.ones(5, 7) @ w), torch.allclose(dw, torch.ones(7, 5) @ h), db.shape
    (True, True, torch.Size([0]))
    """
    n, d = h.shape
    vocab = weight.shape[0]
    dh = torch.empty_like(h) if need_dh else h.new_empty((0, d))
    dw = torch.zeros((vocab if need_dw else 0, d), dtype=dw_dtype, device=h.device)
    db = torch.zeros((vocab if bias is not None else 0,), dtype=db_dtype, device=h.device)
    for start in range(0, n, chunk_size):
        rows = slice(start, min(start + chunk_size, n))
        dz = chunk_grad(rows)
        if need_dh:
            dh[rows] = dz @ weight
        if need_dw:
            if dw.dtype == dz.dtype:
                dw.addmm_(dz.T, h[rows])
            else:
                dw.addmm_(dz.T.to(dw.dtype), h[rows].to(dw.dtype))
        if bias is not None:
            db += dz.sum(0, dtype=db.dtype)
        del dz  # free this chunk before the next one is allocated: one chunk alive at a time
    return dh, dw.to(weight.dtype), db.to(bias.dtype) if bias is not None else db
