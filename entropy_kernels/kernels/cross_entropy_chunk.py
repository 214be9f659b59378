"""Triton kernel of the chunked cut cross-entropy: given one chunk of materialised logits
``[C, V]`` (written by a cuBLAS GEMM), compute each row's statistics and overwrite the row
with the gradient of the weighted loss ``w_i · loss_i`` with respect to the raw logits.

Per row: pass 1 streams the logits with the online rule of :mod:`.entropy` (max, Σe, Σ(z-m)e,
Σz, z_y) on softcapped values; then ``lse`` gives the coefficients of the cross-entropy gradient

    dz_j = p_j · w(1 + 2·s·lse)  -  w(1 - ε)·[j = y]  -  w·ε / V       (then × softcap slope)

and pass 2 rewrites the row in place. Reads the chunk twice, writes it once, nothing else.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

NEG_INF = float("-inf")


@triton.jit
def _softcapped(x, softcap, SOFTCAP: tl.constexpr):
    if SOFTCAP:
        return softcap * (2.0 * tl.sigmoid(2.0 * x / softcap) - 1.0)
    return x


@triton.jit
def _ce_chunk_grad_kernel(
    logits_ptr, stride_row, y_ptr, weight_ptr, stats_ptr,
    V, softcap, label_smoothing, z_loss,
    SOFTCAP: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    row_ptr = logits_ptr + row.to(tl.int64) * stride_row
    y = tl.load(y_ptr + row)
    w = tl.load(weight_ptr + row).to(tl.float32)
    offs = tl.arange(0, BLOCK)

    m = tl.full((), NEG_INF, tl.float32)
    s_vec = tl.zeros((BLOCK,), tl.float32)
    u_vec = tl.zeros((BLOCK,), tl.float32)
    sum_z = tl.zeros((BLOCK,), tl.float32)
    z_y = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + offs
        ok = cols < V
        z = _softcapped(tl.load(row_ptr + cols, mask=ok, other=0.0).to(tl.float32), softcap, SOFTCAP)
        sum_z += tl.where(ok, z, 0.0)
        z_y += tl.where(cols == y, z, 0.0)
        z = tl.where(ok, z, NEG_INF)
        m_new = tl.maximum(m, tl.max(z, axis=0))  # finite after the first block: logits are finite
        scale = tl.exp(m - m_new)
        shift = tl.where(m == NEG_INF, 0.0, m - m_new)
        e = tl.exp(z - m_new)
        u_vec = scale * (u_vec + shift * s_vec) + tl.where(ok, (z - m_new) * e, 0.0)
        s_vec = scale * s_vec + e
        m = m_new
    s = tl.sum(s_vec, axis=0)
    log_s = tl.log(s)
    lse = m + log_s
    out = stats_ptr + row.to(tl.int64) * 4
    tl.store(out + 0, lse)
    tl.store(out + 1, log_s - tl.sum(u_vec, axis=0) / s)
    tl.store(out + 2, tl.sum(sum_z, axis=0))
    tl.store(out + 3, tl.sum(z_y, axis=0))

    coef_p = w * (1.0 + 2.0 * z_loss * lse)
    coef_y = -w * (1.0 - label_smoothing)
    coef_all = -w * label_smoothing / V
    for start in range(0, V, BLOCK):
        cols = start + offs
        ok = cols < V
        raw = tl.load(row_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        z = _softcapped(raw, softcap, SOFTCAP)
        dz = tl.exp(z - lse) * coef_p + tl.where(cols == y, coef_y, 0.0) + coef_all
        if SOFTCAP:
            t = z / softcap
            dz = dz * (1.0 - t * t)
        tl.store(row_ptr + cols, dz.to(logits_ptr.dtype.element_ty), mask=ok)


def ce_chunk_grad_(
    logits: torch.Tensor,
    targets: torch.Tensor,
    token_weight: torch.Tensor,
    softcap: float,
    label_smoothing: float,
    z_loss: float,
    *,
    block: Optional[int] = None,
) -> torch.Tensor:
    """Overwrite ``logits [C, V]`` with d(Σ w_i loss_i)/d logits; return ``[C, 4]`` stats.

    Example
    -------
    >>> stats = ce_chunk_grad_(logits, y, w, 0.0, 0.0, 0.0)  # doctest: +SKIP
    """
    c, v = logits.shape
    stats = torch.empty((c, 4), dtype=torch.float64 if logits.dtype == torch.float64 else torch.float32, device=logits.device)
    if c == 0:
        return stats
    block = block or min(4096 if logits.dtype.itemsize <= 2 else 2048, max(16, triton.next_power_of_2(v)))
    wrap_triton(_ce_chunk_grad_kernel)[(c,)](
        logits, logits.stride(0), targets, token_weight, stats,
        v, softcap, label_smoothing, z_loss,
        SOFTCAP=softcap > 0, BLOCK=block, num_warps=8 if block >= 2048 else 4,
    )
    return stats
