"""Triton row kernels over *materialised* logits ``[C, V]`` (a chunk written by a cuBLAS GEMM):
the statistics of :mod:`entropy_kernels.reference.linear_softmax` per row, and the logits
gradient ``dz = p·(A + B·z) + C·[j=y] + D`` (× 1/T × softcap slope) written in place.

They are the non-GEMM half of the paths that trade memory for cuBLAS speed: the chunked cut
cross-entropy (stats → coefficients → gradient, chunk by chunk, inside the forward) and the
stored-logits log-prob/entropy mode (stats in the forward, gradient in the backward).
Each kernel streams a row once (stats) or once for reading and once for writing (gradient).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._launch import launcher, next_pow2
from ._online import online_softmax_update



@triton.jit
def _scaled_logits(raw, softcap, inv_temp, SOFTCAP: tl.constexpr):
    """(z, capped): z = cap(raw)·inv_T with cap(x) = c·tanh(x/c) = c·(2σ(2x/c) - 1)."""
    capped = raw
    if SOFTCAP:
        capped = softcap * (2.0 * tl.sigmoid(2.0 * raw / softcap) - 1.0)
    return capped * inv_temp, capped


@triton.jit
def _rows_stats_kernel(
    x_ptr, stride_row, y_ptr, stats_ptr, V, softcap, inv_temp,
    SOFTCAP: tl.constexpr, BLOCK: tl.constexpr,
):
    softcap = tl.cast(softcap, tl.float32)  # a Python float arrives as fp64 from inductor
    inv_temp = tl.cast(inv_temp, tl.float32)  # a Python float arrives as fp64 from inductor
    row = tl.program_id(0)
    x_row = x_ptr + row.to(tl.int64) * stride_row
    y = tl.load(y_ptr + row)
    offs = tl.arange(0, BLOCK)
    m = tl.full((), float("-inf"), tl.float32)
    s_vec = tl.zeros((BLOCK,), tl.float32)
    u_vec = tl.zeros((BLOCK,), tl.float32)
    sum_z = tl.zeros((BLOCK,), tl.float32)
    z_y = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + offs
        ok = cols < V
        z, _ = _scaled_logits(tl.load(x_row + cols, mask=ok, other=0.0).to(tl.float32), softcap, inv_temp, SOFTCAP)
        z = tl.where(ok, z, float("-inf"))
        sum_z += tl.where(ok, z, 0.0)
        z_y += tl.where(cols == y, z, 0.0)
        m, s_vec, u_vec = online_softmax_update(m, s_vec, u_vec, z)
    s = tl.sum(s_vec, axis=0)
    log_s = tl.log(s)
    out = stats_ptr + row.to(tl.int64) * 4
    tl.store(out + 0, m + log_s)
    tl.store(out + 1, log_s - tl.sum(u_vec, axis=0) / s)
    tl.store(out + 2, tl.sum(sum_z, axis=0))
    tl.store(out + 3, tl.sum(z_y, axis=0))


@triton.jit
def _rows_grad_kernel(
    x_ptr, stride_row, out_ptr, out_stride_row, y_ptr, stats_ptr, coef_ptr, V, softcap, inv_temp,
    SOFTCAP: tl.constexpr, BLOCK: tl.constexpr,
):
    softcap = tl.cast(softcap, tl.float32)  # a Python float arrives as fp64 from inductor
    inv_temp = tl.cast(inv_temp, tl.float32)  # a Python float arrives as fp64 from inductor
    row = tl.program_id(0)
    x_row = x_ptr + row.to(tl.int64) * stride_row
    out_row = out_ptr + row.to(tl.int64) * out_stride_row
    y = tl.load(y_ptr + row)
    lse = tl.load(stats_ptr + row.to(tl.int64) * 4)
    coef = coef_ptr + row.to(tl.int64) * 4
    a = tl.load(coef + 0)
    b = tl.load(coef + 1)
    c = tl.load(coef + 2)
    d = tl.load(coef + 3)
    offs = tl.arange(0, BLOCK)
    for start in range(0, V, BLOCK):
        cols = start + offs
        ok = cols < V
        z, capped = _scaled_logits(tl.load(x_row + cols, mask=ok, other=0.0).to(tl.float32), softcap, inv_temp, SOFTCAP)
        dz = tl.exp(z - lse) * (a + b * z) + tl.where(cols == y, c, 0.0) + d
        dz = tl.where(z == float("-inf"), 0.0, dz) * inv_temp  # masked vocabulary: p = 0, no 0·inf
        if SOFTCAP:
            t = capped / softcap
            dz = dz * (1.0 - t * t)
        tl.store(out_row + cols, dz.to(out_ptr.dtype.element_ty), mask=ok)


def _block(logits: torch.Tensor, block: Optional[int]):
    v = logits.shape[1]
    block = block or min(4096 if logits.dtype.itemsize <= 2 else 2048, max(16, next_pow2(v)))
    return block, 8 if block >= 2048 else 4


def rows_stats(
    logits: torch.Tensor, targets: torch.Tensor, softcap: float, inv_temperature: float, *, block: Optional[int] = None
) -> torch.Tensor:
    """``[C, 4]`` stats (lse, entropy, sum_z, z_y) of ``softmax(cap(logits)·inv_T)`` row by row.

    Example
    -------
    >>> stats = rows_stats(logits, y, 0.0, 1.0)  # doctest: +SKIP
    """
    c, v = logits.shape
    stats = torch.empty((c, 4), dtype=torch.float64 if logits.dtype == torch.float64 else torch.float32, device=logits.device)
    if c:
        block, warps = _block(logits, block)
        launcher(_rows_stats_kernel, logits)[(c,)](
            logits, logits.stride(0), targets, stats, v, softcap, inv_temperature,
            SOFTCAP=softcap > 0, BLOCK=block, num_warps=warps,
        )
    return stats


def rows_grad_(
    logits: torch.Tensor, targets: torch.Tensor, stats: torch.Tensor, coeffs: torch.Tensor,
    softcap: float, inv_temperature: float, *, out: Optional[torch.Tensor] = None, block: Optional[int] = None,
) -> torch.Tensor:
    """Write d/d raw logits of ``Σ coeff-weighted stats`` into ``out`` (default: over ``logits``,
    in place) for raw ``logits [C, V]``; return it.

    Example
    -------
    >>> dz = rows_grad_(logits, y, stats, coeffs, 0.0, 1.0)  # doctest: +SKIP
    """
    c, v = logits.shape
    out = logits if out is None else out
    if c:
        block, warps = _block(logits, block)
        launcher(_rows_grad_kernel, logits)[(c,)](
            logits, logits.stride(0), out, out.stride(0), targets, stats, coeffs, v, softcap, inv_temperature,
            SOFTCAP=softcap > 0, BLOCK=block, num_warps=warps,
        )
    return out


def aot_configs():
    """Launch configurations compiled ahead of time by :mod:`.aot_check` (V = 151936).

    Example
    -------
    >>> [c.name for c in aot_configs()]
    ['rows_stats[bf16]', 'rows_grad[bf16]', 'rows_stats[fp32]', 'rows_grad[fp32]']
    """
    from .aot_spec import Config, launch_args

    v = 151936
    for dt in ("bf16", "fp32"):
        block = 4096 if dt == "bf16" else 2048
        yield Config(f"rows_stats[{dt}]", _rows_stats_kernel, launch_args({
            "x_ptr": f"*{dt}", "stride_row": "i32", "y_ptr": "*i64", "stats_ptr": "*fp32", "V": "i32",
            "softcap": "fp32", "inv_temp": "fp32",
        }, stride_row=v, V=v), {"SOFTCAP": True, "BLOCK": block})
        yield Config(f"rows_grad[{dt}]", _rows_grad_kernel, launch_args({
            "x_ptr": f"*{dt}", "stride_row": "i32", "out_ptr": f"*{dt}", "out_stride_row": "i32", "y_ptr": "*i64",
            "stats_ptr": "*fp32", "coef_ptr": "*fp32", "V": "i32", "softcap": "fp32", "inv_temp": "fp32",
        }, stride_row=v, out_stride_row=v, V=v), {"SOFTCAP": True, "BLOCK": block})
