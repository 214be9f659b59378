"""Triton kernels for the entropy of ``softmax(logits / T)`` over the last dimension.

Forward reads every logit exactly once. Each program streams one row (or one slice of a row when
the row is split for parallelism) and keeps, for a running max ``m`` shared by all lanes,

    s = Σ exp(z - m)              u = Σ (z - m) · exp(z - m)

so that ``lse = m + log s`` and ``H = log s - u / s``. Keeping ``u`` relative to ``m`` (instead of
``Σ z·exp(z - m)``) avoids the cancellation ``lse - E[z]`` that loses all precision when logits
are large (|z| ~ 1e4). A larger max ``m'`` rescales by ``c = exp(m - m')``:
``s ← c·s``, ``u ← c·(u + (m - m')·s)``. Rows split over several programs write ``(m, s, u)``
partials that :func:`_entropy_combine_kernel` merges with the same rule.

Backward reads the logits once more and writes the gradient:
``dlogits = p · (g_lse - g_H · (log p + H)) / T`` with ``log p = (z - m) - log s`` from the
saved per-row ``stats = (m, log s)``.

Masked logits (``-inf``) are handled explicitly so no ``0 · inf`` NaN appears.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._launch import cdiv, launcher, next_pow2, sm_count
from ._online import online_softmax_update
from ._rows import row_layout



@triton.jit
def _row_start(row, n_inner, stride_outer, stride_inner):
    # int64: row * stride exceeds 2**31 for large batches of 150k-vocab rows.
    row64 = row.to(tl.int64)
    return (row64 // n_inner) * stride_outer + (row64 % n_inner) * stride_inner


@triton.jit
def _inv_temperature(row, row_temp_ptr, inv_temp, HAS_ROW_TEMP: tl.constexpr):
    if HAS_ROW_TEMP:
        return 1.0 / tl.load(row_temp_ptr + row).to(tl.float32)
    return inv_temp


@triton.jit
def _finish_row(row, m, s, u, entropy_ptr, lse_ptr, stats_ptr):
    # stats = (m, log s) lets the backward form log p = (z - m) - log s without the rounding
    # of a stored fp32 lse (ulp 1e-3 at |z| ~ 1e4).
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    log_s = tl.log(s)
    tl.store(lse_ptr + row, m + log_s)
    tl.store(entropy_ptr + row, log_s - u / s)
    tl.store(stats_ptr + 2 * row, m_safe)
    tl.store(stats_ptr + 2 * row + 1, log_s)


@triton.jit
def _entropy_fwd_kernel(
    x_ptr, row_temp_ptr, inv_temp,
    entropy_ptr, lse_ptr, stats_ptr, part_ptr,
    n_cols, n_inner, stride_outer, stride_inner, cols_per_split, n_splits,
    HAS_ROW_TEMP: tl.constexpr, SPLIT: tl.constexpr, ACC64: tl.constexpr, BLOCK: tl.constexpr,
):
    inv_temp = tl.cast(inv_temp, tl.float32)  # a Python float arrives as fp64 from inductor
    row = tl.program_id(0)
    split = tl.program_id(1)
    acc_ty = tl.float64 if ACC64 else tl.float32
    x_row = x_ptr + _row_start(row, n_inner, stride_outer, stride_inner)
    inv_t = _inv_temperature(row, row_temp_ptr, inv_temp, HAS_ROW_TEMP)

    col_begin = split * cols_per_split
    col_end = tl.minimum(col_begin + cols_per_split, n_cols)
    offs = tl.arange(0, BLOCK)
    m = tl.full((), float("-inf"), acc_ty)
    s_vec = tl.zeros((BLOCK,), acc_ty)
    u_vec = tl.zeros((BLOCK,), acc_ty)
    for start in range(col_begin, col_end, BLOCK):
        cols = start + offs
        x = tl.load(x_row + cols, mask=cols < col_end, other=float("-inf"))
        m, s_vec, u_vec = online_softmax_update(m, s_vec, u_vec, x.to(acc_ty) * inv_t)
    s = tl.sum(s_vec, axis=0)
    u = tl.sum(u_vec, axis=0)
    if SPLIT:
        part = part_ptr + (row.to(tl.int64) * n_splits + split) * 3
        tl.store(part + 0, m)
        tl.store(part + 1, s)
        tl.store(part + 2, u)
    else:
        _finish_row(row, m, s, u, entropy_ptr, lse_ptr, stats_ptr)


@triton.jit
def _entropy_combine_kernel(part_ptr, entropy_ptr, lse_ptr, stats_ptr, n_splits, BLOCK_S: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_S)
    valid = offs < n_splits
    part = part_ptr + (row.to(tl.int64) * n_splits + offs) * 3
    m_i = tl.load(part + 0, mask=valid, other=float("-inf"))
    s_i = tl.load(part + 1, mask=valid, other=0.0)
    u_i = tl.load(part + 2, mask=valid, other=0.0)
    m = tl.max(m_i, axis=0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp(m_i - m_safe)
    shift = tl.where(m_i == float("-inf"), 0.0, m_i - m_safe)
    s = tl.sum(w * s_i, axis=0)
    u = tl.sum(w * (u_i + shift * s_i), axis=0)
    _finish_row(row, m, s, u, entropy_ptr, lse_ptr, stats_ptr)


@triton.jit
def _entropy_bwd_kernel(
    x_ptr, row_temp_ptr, inv_temp,
    entropy_ptr, stats_ptr, grad_entropy_ptr, grad_lse_ptr, grad_x_ptr,
    n_cols, n_inner, stride_outer, stride_inner, cols_per_split,
    HAS_ROW_TEMP: tl.constexpr, ACC64: tl.constexpr, BLOCK: tl.constexpr,
):
    inv_temp = tl.cast(inv_temp, tl.float32)  # a Python float arrives as fp64 from inductor
    row = tl.program_id(0)
    split = tl.program_id(1)
    acc_ty = tl.float64 if ACC64 else tl.float32
    x_row = x_ptr + _row_start(row, n_inner, stride_outer, stride_inner)
    g_row = grad_x_ptr + row.to(tl.int64) * n_cols
    inv_t = _inv_temperature(row, row_temp_ptr, inv_temp, HAS_ROW_TEMP)
    m = tl.load(stats_ptr + 2 * row).to(acc_ty)
    log_s = tl.load(stats_ptr + 2 * row + 1).to(acc_ty)
    h = tl.load(entropy_ptr + row).to(acc_ty)
    g_h = tl.load(grad_entropy_ptr + row).to(acc_ty)
    g_lse = tl.load(grad_lse_ptr + row).to(acc_ty)

    col_begin = split * cols_per_split
    col_end = tl.minimum(col_begin + cols_per_split, n_cols)
    offs = tl.arange(0, BLOCK)
    for start in range(col_begin, col_end, BLOCK):
        cols = start + offs
        in_row = cols < col_end
        x = tl.load(x_row + cols, mask=in_row, other=float("-inf"))
        z = x.to(acc_ty) * inv_t
        log_p = (z - m) - log_s
        p = tl.exp(log_p)
        g = p * (g_lse - g_h * (log_p + h)) * inv_t
        g = tl.where(z == float("-inf"), 0.0, g)  # masked logits: p = 0, no gradient (not 0 * inf)
        tl.store(g_row + cols, g.to(grad_x_ptr.dtype.element_ty), mask=in_row)


# ----------------------------------------------------------------------------------------------
# Launch configuration. Heuristics, not autotuning: one config per dtype width keeps compile
# time and torch.compile tracing predictable.
# ----------------------------------------------------------------------------------------------

def _block_and_warps(dtype: torch.dtype, n_cols: int) -> Tuple[int, int]:
    # 16-byte vector loads per thread, 256 threads: 4096 16-bit or 2048 32-bit values per step.
    block = 4096 if dtype.itemsize <= 2 else 2048
    block = min(block, max(16, next_pow2(n_cols)))
    num_warps = 8 if block >= 2048 else 4
    return block, num_warps


def _num_splits(n_rows: int, n_cols: int, block: int, device: torch.device) -> int:
    """Split rows over several programs when there are too few rows to fill the GPU."""
    n_blocks = cdiv(n_cols, block)
    want_programs = 4 * sm_count(device)
    if n_rows >= want_programs or n_blocks < 4:
        return 1
    # keep at least 2 blocks per split so the partial/combine overhead stays small
    return max(1, min(cdiv(want_programs, n_rows), n_blocks // 2))


def _grid(lay, logits: torch.Tensor, block: Optional[int], num_splits: Optional[int]):
    """(block, num_warps, splits, columns per split) for a row layout; both kernels use it, so
    forward and backward agree on how rows are split."""
    default_block, num_warps = _block_and_warps(logits.dtype, lay.n_cols)
    block = block or default_block
    splits = num_splits or _num_splits(lay.n_rows, lay.n_cols, block, logits.device)
    splits = max(1, min(splits, cdiv(lay.n_cols, block)))
    cols_per_split = cdiv(cdiv(lay.n_cols, block), splits) * block
    return block, num_warps, cdiv(lay.n_cols, cols_per_split), cols_per_split


def entropy_forward(
    logits: torch.Tensor,
    row_temperature: Optional[torch.Tensor],
    temperature: float,
    *,
    block: Optional[int] = None,
    num_splits: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward kernel(s). Returns ``(entropy, lse, stats)``: ``logits.shape[:-1]``,
    and ``stats[..., 2]`` = (row max of z, log Σ exp(z - max)) for the backward.

    ``block`` and ``num_splits`` override the heuristics (tests use them to exercise multi-block
    and split rows on tiny shapes).

    Example
    -------
    >>> h, lse, stats = entropy_forward(torch.randn(8, 1000, device="cuda"), None, 1.0)  # doctest: +SKIP
    """
    lay = row_layout(logits)
    out_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    entropy = torch.empty(logits.shape[:-1], dtype=out_dtype, device=logits.device)
    lse = torch.empty(logits.shape[:-1], dtype=out_dtype, device=logits.device)
    stats = torch.empty((*logits.shape[:-1], 2), dtype=out_dtype, device=logits.device)
    if lay.n_rows == 0:
        return entropy, lse, stats
    block, num_warps, splits, cols_per_split = _grid(lay, logits, block, num_splits)
    has_row_temp = row_temperature is not None
    row_temp = row_temperature if has_row_temp else entropy  # dummy pointer, never read
    part = torch.empty((lay.n_rows, splits, 3) if splits > 1 else (1,), dtype=out_dtype, device=logits.device)
    acc64 = logits.dtype == torch.float64
    launcher(_entropy_fwd_kernel, lay.tensor)[(lay.n_rows, splits)](
        lay.tensor, row_temp, 1.0 / temperature,
        entropy, lse, stats, part,
        lay.n_cols, lay.n_inner, lay.stride_outer, lay.stride_inner, cols_per_split, splits,
        HAS_ROW_TEMP=has_row_temp, SPLIT=splits > 1, ACC64=acc64, BLOCK=block, num_warps=num_warps,
    )
    if splits > 1:
        launcher(_entropy_combine_kernel, part)[(lay.n_rows,)](
            part, entropy, lse, stats, splits, BLOCK_S=max(2, next_pow2(splits)), num_warps=1,
        )
    return entropy, lse, stats


def entropy_backward(
    grad_entropy: torch.Tensor,
    grad_lse: torch.Tensor,
    logits: torch.Tensor,
    entropy: torch.Tensor,
    stats: torch.Tensor,
    row_temperature: Optional[torch.Tensor],
    temperature: float,
    *,
    block: Optional[int] = None,
    num_splits: Optional[int] = None,
) -> torch.Tensor:
    """Launch the backward kernel. Returns ``dlogits`` (contiguous, dtype of ``logits``).

    Example
    -------
    >>> g = entropy_backward(gh, gl, x, h, stats, None, 1.0)  # doctest: +SKIP
    """
    lay = row_layout(logits)
    grad_x = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    if lay.n_rows == 0:
        return grad_x
    block, num_warps, splits, cols_per_split = _grid(lay, logits, block, num_splits)
    has_row_temp = row_temperature is not None
    launcher(_entropy_bwd_kernel, lay.tensor)[(lay.n_rows, splits)](
        lay.tensor, row_temperature if has_row_temp else entropy, 1.0 / temperature,
        entropy.contiguous(), stats.contiguous(), grad_entropy.contiguous(), grad_lse.contiguous(), grad_x,
        lay.n_cols, lay.n_inner, lay.stride_outer, lay.stride_inner, cols_per_split,
        HAS_ROW_TEMP=has_row_temp, ACC64=logits.dtype == torch.float64, BLOCK=block, num_warps=num_warps,
    )
    return grad_x

def aot_configs():
    """Launch configurations compiled ahead of time by :mod:`.aot_check` (V = 151936: B = 64
    rows split over 9 programs each, B = 1024 unsplit).

    Example
    -------
    >>> sorted({c.name.split("[")[0] for c in aot_configs()})
    ['entropy_bwd', 'entropy_combine', 'entropy_fwd']
    """
    from .aot_spec import Config, launch_args

    v = 151936
    for dt in ("bf16", "fp32"):
        block = 4096 if dt == "bf16" else 2048
        blocks = -(-v // block)
        for split in (False, True):
            # [B, V] contiguous: one inner dimension of B rows (stride V); B = 64 splits each
            # row over 9 programs, B = 1024 does not split
            splits = 9 if split else 1
            rows = 64 if split else 1024
            for row_temp in (False, True):
                yield Config(f"entropy_fwd[{dt},split={split},row_temp={row_temp}]", _entropy_fwd_kernel, launch_args({
                    "x_ptr": f"*{dt}", "row_temp_ptr": "*fp32", "inv_temp": "fp32", "entropy_ptr": "*fp32",
                    "lse_ptr": "*fp32", "stats_ptr": "*fp32", "part_ptr": "*fp32", "n_cols": "i32", "n_inner": "i32",
                    "stride_outer": "i64", "stride_inner": "i64", "cols_per_split": "i32", "n_splits": "i32",
                }, n_cols=v, n_inner=rows, stride_outer=0, stride_inner=v, n_splits=splits,
                    cols_per_split=-(-blocks // splits) * block),
                    {"HAS_ROW_TEMP": row_temp, "SPLIT": split, "ACC64": False, "BLOCK": block})
        yield Config(f"entropy_bwd[{dt}]", _entropy_bwd_kernel, launch_args({
            "x_ptr": f"*{dt}", "row_temp_ptr": "*fp32", "inv_temp": "fp32", "entropy_ptr": "*fp32", "stats_ptr": "*fp32",
            "grad_entropy_ptr": "*fp32", "grad_lse_ptr": "*fp32", "grad_x_ptr": f"*{dt}", "n_cols": "i32", "n_inner": "i32",
            "stride_outer": "i64", "stride_inner": "i64", "cols_per_split": "i32",
        }, n_cols=v, n_inner=1024, stride_outer=0, stride_inner=v, cols_per_split=blocks * block),
            {"HAS_ROW_TEMP": False, "ACC64": False, "BLOCK": block})
    yield Config("entropy_fwd[fp64]", _entropy_fwd_kernel, launch_args({
        "x_ptr": "*fp64", "row_temp_ptr": "*fp32", "inv_temp": "fp32", "entropy_ptr": "*fp64", "lse_ptr": "*fp64",
        "stats_ptr": "*fp64", "part_ptr": "*fp64", "n_cols": "i32", "n_inner": "i32", "stride_outer": "i64",
        "stride_inner": "i64", "cols_per_split": "i32", "n_splits": "i32",
    }, n_splits=1, stride_outer=0), {"HAS_ROW_TEMP": False, "SPLIT": False, "ACC64": True, "BLOCK": 2048})
    yield Config("entropy_combine", _entropy_combine_kernel, launch_args({
        "part_ptr": "*fp32", "entropy_ptr": "*fp32", "lse_ptr": "*fp32", "stats_ptr": "*fp32", "n_splits": "i32",
    }, n_splits=9), {"BLOCK_S": 16}, num_warps=1)

