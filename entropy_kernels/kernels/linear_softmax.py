"""Triton kernels of the linear-softmax core: per-token statistics of ``softmax(z)`` for
``z = cap(h Wᵀ + b)·inv_T`` and their backward, without ``[N, V]`` logits in global memory.
The math and the meaning of the statistics are in :mod:`entropy_kernels.reference.linear_softmax`.

Forward: programs own a tile of ``BLOCK_N`` tokens and a contiguous slice of the vocabulary
(``n_splits`` slices); they compute ``BLOCK_N × BLOCK_V`` logits tiles with ``tl.dot`` over D and
fold each tile into per-row online statistics ``(m, s = Σe^{z-m}, u = Σ(z-m)e^{z-m}, Σz, z_y)``,
written as partials and merged by :func:`_lsm_combine_kernel` (same rescaling rule as the
entropy kernel). Memory: ``O(N · n_splits)``.

Backward: one program per (token tile, vocabulary tile) recomputes its logits tile, forms
``dz = p·(A + B·z) + C·[j=y] + D`` from per-token coefficients, optionally skips the tile when
every entry is below the filter threshold (peaked LM distributions), and accumulates
``dh += dz·W`` and ``dW += dzᵀ·h`` with fp32 atomic adds (``dh`` whole, ``dW`` one vocabulary
chunk per launch; see :func:`linear_softmax_backward` for why not 16-bit atomics).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._launch import cdiv, launcher, next_pow2, sm_count
from ._online import online_softmax_update_rows


@triton.jit
def _logits_tile(
    h_ptr, w_ptr, b_ptr, rows64, row_ok, cols, col_ok, D, stride_h, stride_w, softcap, inv_temp,
    HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """(z, capped) for a BLOCK_N × BLOCK_V tile: fp32 logits after bias, softcap, temperature."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    cols64 = cols.to(tl.int64)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        d_ok = dd < D
        hb = tl.load(h_ptr + rows64[:, None] * stride_h + dd[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        wb = tl.load(w_ptr + cols64[None, :] * stride_w + dd[:, None], mask=col_ok[None, :] & d_ok[:, None], other=0.0)
        acc = tl.dot(hb, wb, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    capped = acc
    if SOFTCAP:
        # c·tanh(x/c) with tanh(t) = 2·sigmoid(2t) - 1 (available in every Triton backend)
        capped = softcap * (2.0 * tl.sigmoid(2.0 * acc / softcap) - 1.0)
    return capped * inv_temp, capped


@triton.jit
def _lsm_fwd_kernel(
    h_ptr, w_ptr, b_ptr, y_ptr, part_ptr,
    N, V, D, stride_h, stride_w, cols_per_split, n_splits, softcap, inv_temp,
    HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
):
    softcap = tl.cast(softcap, tl.float32)  # a Python float arrives as fp64 from inductor
    inv_temp = tl.cast(inv_temp, tl.float32)  # a Python float arrives as fp64 from inductor
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    rows64 = rows.to(tl.int64)
    y = tl.load(y_ptr + rows, mask=row_ok, other=-1)

    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_N,), tl.float32)
    u = tl.zeros((BLOCK_N,), tl.float32)
    sum_z = tl.zeros((BLOCK_N,), tl.float32)
    z_y = tl.zeros((BLOCK_N,), tl.float32)
    v_begin = split * cols_per_split
    v_end = tl.minimum(v_begin + cols_per_split, V)
    for v0 in range(v_begin, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < v_end
        z, _ = _logits_tile(
            h_ptr, w_ptr, b_ptr, rows64, row_ok, cols, col_ok, D, stride_h, stride_w, softcap, inv_temp,
            HAS_BIAS, SOFTCAP, PRECISION, BLOCK_N, BLOCK_V, BLOCK_D,
        )
        valid = col_ok[None, :]
        sum_z += tl.sum(tl.where(valid, z, 0.0), axis=1)
        z_y += tl.sum(tl.where(cols[None, :] == y[:, None], z, 0.0), axis=1)
        m, s, u = online_softmax_update_rows(m, s, u, tl.where(valid, z, float("-inf")))
    part = part_ptr + (rows64 * n_splits + split) * 5
    tl.store(part + 0, m, mask=row_ok)
    tl.store(part + 1, s, mask=row_ok)
    tl.store(part + 2, u, mask=row_ok)
    tl.store(part + 3, sum_z, mask=row_ok)
    tl.store(part + 4, z_y, mask=row_ok)


@triton.jit
def _lsm_combine_kernel(part_ptr, stats_ptr, N, n_splits, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < N
    splits = tl.arange(0, BLOCK_S)
    ok = row_ok[:, None] & (splits < n_splits)[None, :]
    part = part_ptr + (rows.to(tl.int64)[:, None] * n_splits + splits[None, :]) * 5
    m_i = tl.load(part + 0, mask=ok, other=float("-inf"))
    s_i = tl.load(part + 1, mask=ok, other=0.0)
    u_i = tl.load(part + 2, mask=ok, other=0.0)
    sum_z = tl.sum(tl.load(part + 3, mask=ok, other=0.0), axis=1)
    z_y = tl.sum(tl.load(part + 4, mask=ok, other=0.0), axis=1)
    m = tl.max(m_i, axis=1)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp(m_i - m_safe[:, None])
    shift = tl.where(m_i == float("-inf"), 0.0, m_i - m_safe[:, None])
    s = tl.sum(w * s_i, axis=1)
    u = tl.sum(w * (u_i + shift * s_i), axis=1)
    log_s = tl.log(s)
    out = stats_ptr + rows.to(tl.int64) * 4
    tl.store(out + 0, m + log_s, mask=row_ok)
    tl.store(out + 1, log_s - u / s, mask=row_ok)
    tl.store(out + 2, sum_z, mask=row_ok)
    tl.store(out + 3, z_y, mask=row_ok)


@triton.jit
def _lsm_bwd_kernel(
    h_ptr, w_ptr, b_ptr, y_ptr, stats_ptr, coef_ptr, thresh_ptr,
    dh_ptr, dw_ptr, db_ptr,
    N, V, D, stride_h, stride_w, softcap, inv_temp, n_tiles_v,
    HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr, FILTER: tl.constexpr, PRECISION: tl.constexpr,
    NEED_DH: tl.constexpr, NEED_DW: tl.constexpr,
    GROUP_N: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
):
    softcap = tl.cast(softcap, tl.float32)  # a Python float arrives as fp64 from inductor
    inv_temp = tl.cast(inv_temp, tl.float32)  # a Python float arrives as fp64 from inductor
    # Grouped order: GROUP_N token tiles sweep the vocabulary together, so a W tile is reused
    # from L2 by neighbouring programs while their dW atomics go to different rows of W.
    pid = tl.program_id(0)
    n_tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_N * n_tiles_v
    group = pid // per_group
    first_n = group * GROUP_N
    group_size = tl.minimum(n_tiles_n - first_n, GROUP_N)
    pid_n = first_n + (pid % per_group) % group_size
    pid_v = (pid % per_group) // group_size

    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    rows64 = rows.to(tl.int64)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    col_ok = cols < V
    cols64 = cols.to(tl.int64)
    z, capped = _logits_tile(
        h_ptr, w_ptr, b_ptr, rows64, row_ok, cols, col_ok, D, stride_h, stride_w, softcap, inv_temp,
        HAS_BIAS, SOFTCAP, PRECISION, BLOCK_N, BLOCK_V, BLOCK_D,
    )
    y = tl.load(y_ptr + rows, mask=row_ok, other=-1)
    lse = tl.load(stats_ptr + rows64 * 4, mask=row_ok, other=0.0)
    coef = coef_ptr + rows64 * 4
    a = tl.load(coef + 0, mask=row_ok, other=0.0)
    b = tl.load(coef + 1, mask=row_ok, other=0.0)
    c = tl.load(coef + 2, mask=row_ok, other=0.0)
    d = tl.load(coef + 3, mask=row_ok, other=0.0)
    p = tl.exp(z - lse[:, None])
    dz = p * (a[:, None] + b[:, None] * z) + tl.where(cols[None, :] == y[:, None], c[:, None], 0.0) + d[:, None]
    # out-of-tile rows/cols and masked vocabulary (-inf logits: p = 0, no 0·inf) get nothing
    dz = tl.where(row_ok[:, None] & col_ok[None, :] & (z != float("-inf")), dz, 0.0)
    keep = True
    if FILTER:
        thresh = tl.load(thresh_ptr + rows, mask=row_ok, other=float("inf"))  # inline: inductor re-emits module globals and cannot name inf
        keep = tl.max(tl.max(tl.abs(dz) - thresh[:, None], axis=1), axis=0) > 0.0
    if keep:
        dz = dz * inv_temp
        if SOFTCAP:
            t = capped / softcap
            dz = dz * (1.0 - t * t)
        if HAS_BIAS:
            tl.atomic_add(db_ptr + cols, tl.sum(dz, axis=0).to(db_ptr.dtype.element_ty), mask=col_ok, sem="relaxed")
        dz_in = dz.to(h_ptr.dtype.element_ty)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            d_ok = dd < D
            if NEED_DH:
                wb = tl.load(w_ptr + cols64[:, None] * stride_w + dd[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
                dh_part = tl.dot(dz_in, wb, input_precision=PRECISION)
                tl.atomic_add(
                    dh_ptr + rows64[:, None] * D + dd[None, :], dh_part.to(dh_ptr.dtype.element_ty),
                    mask=row_ok[:, None] & d_ok[None, :], sem="relaxed",
                )
            if NEED_DW:
                hb = tl.load(h_ptr + rows64[:, None] * stride_h + dd[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
                dw_part = tl.dot(tl.trans(dz_in), hb, input_precision=PRECISION)
                tl.atomic_add(
                    dw_ptr + cols64[:, None] * D + dd[None, :], dw_part.to(dw_ptr.dtype.element_ty),
                    mask=col_ok[:, None] & d_ok[None, :], sem="relaxed",
                )


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------

def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs: exact fp32 products (torch's matmul default), not TF32.
    return "ieee" if dtype == torch.float32 else "tf32"


# (BLOCK_N, BLOCK_V, BLOCK_D) with 8 warps, none spilling registers at its launch
# (benchmarks/static/triton_kernels.md). The forward's 16-bit tile and stage count are the
# fastest of the GPU probe's sweep, or within 0.4% of it (H100, 2026-11-28: 128x256x64 with 3
# stages and more splits ran the Gemma-2-2B / Llama-3-8B CE shapes in 20.8 / 17.3 ms against
# 39.8 / 35.0 ms for the former 128x128x32 with ~2 waves; 256x128x64 s4: 20.7 / 17.7 ms). fp32 tiles are twice the bytes: 128x256x64 would need
# ~290 KiB of shared memory, so fp32 keeps the smaller tile. The backward holds z, p and dz
# tiles at once, hence its thinner D step.
FWD_BLOCKS = (128, 256, 64)
FWD_STAGES = 3
FWD_BLOCKS_FP32 = (128, 128, 32)
BWD_BLOCKS = (128, 128, 16)


def forward_splits(n_tiles: int, v_tiles: int, sms: int) -> int:
    """Vocabulary splits of the forward: ~2 waves with >= 8 vocabulary tiles per split, then
    raised toward a whole number of waves (``n_tiles · splits`` a multiple of the SM count)
    when that at most multiplies the splits by 8 -- the probe measured 33 splits faster than 5
    at 64 token tiles on 132 SMs -- and at most one split per vocabulary tile.

    Example
    -------
    >>> forward_splits(64, 1000, 132)   # 64 token tiles x 33 splits = 16 waves of 132
    33
    >>> forward_splits(512, 1000, 132)  # 33 splits would be 32x the ~2-wave count: 1 split
    1
    """
    base = max(1, min(cdiv(2 * sms, n_tiles), v_tiles // 8))
    step = sms // math.gcd(n_tiles, sms)
    whole = max(step, cdiv(base, step) * step)
    if whole <= 8 * base:
        base = whole
    return max(1, min(base, v_tiles))


def _blocks(n: int, defaults, block_n, block_v, block_d) -> Tuple[int, int, int]:
    bn = block_n or (defaults[0] if n >= defaults[0] else max(16, next_pow2(n)))
    return bn, block_v or defaults[1], block_d or defaults[2]


def linear_softmax_forward(
    h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
    softcap: float, inv_temperature: float, *,
    block_n: Optional[int] = None, block_v: Optional[int] = None, block_d: Optional[int] = None,
    num_splits: Optional[int] = None,
) -> torch.Tensor:
    """``[N, 4]`` stats (lse, entropy, sum_z, z_y) for ``h [N, D]``, ``weight [V, D]``; fp32
    (stored as fp64 for fp64 inputs; the kernel computes in fp32).

    Example
    -------
    >>> stats = linear_softmax_forward(h, w, None, y, 0.0, 1.0)  # doctest: +SKIP
    """
    n, d = h.shape
    v = weight.shape[0]
    stats = torch.empty((n, 4), dtype=torch.float64 if h.dtype == torch.float64 else torch.float32, device=h.device)
    if n == 0:
        return stats
    bn, bv, bd = _blocks(n, FWD_BLOCKS_FP32 if h.dtype in (torch.float32, torch.float64) else FWD_BLOCKS,
                         block_n, block_v, block_d)
    n_tiles = cdiv(n, bn)
    v_tiles = cdiv(v, bv)
    splits = max(1, min(num_splits or forward_splits(n_tiles, v_tiles, sm_count(h.device)), v_tiles))
    cols_per_split = cdiv(v_tiles, splits) * bv
    splits = cdiv(v, cols_per_split)
    part = torch.empty((n, splits, 5), dtype=torch.float32, device=h.device)
    launcher(_lsm_fwd_kernel, h)[(n_tiles, splits)](
        h, weight, bias if bias is not None else weight, targets, part,
        n, v, d, h.stride(0), weight.stride(0), cols_per_split, splits, softcap, inv_temperature,
        HAS_BIAS=bias is not None, SOFTCAP=softcap > 0, PRECISION=_precision(h.dtype),
        BLOCK_N=bn, BLOCK_V=bv, BLOCK_D=bd, num_warps=8 if bn * bv >= 128 * 128 else 4, num_stages=FWD_STAGES,
    )
    block_s = max(2, next_pow2(splits))
    block_r = max(1, min(64, 2048 // block_s))
    launcher(_lsm_combine_kernel, part)[(cdiv(n, block_r),)](
        part, stats, n, splits, BLOCK_R=block_r, BLOCK_S=block_s, num_warps=4,
    )
    return stats


DW_CHUNK_BYTES = 256 * 2**20  # fp32 dW accumulator per backward launch (vocabulary chunk)


def linear_softmax_backward(
    coeffs: torch.Tensor, thresh: Optional[torch.Tensor], h: torch.Tensor, weight: torch.Tensor,
    bias: Optional[torch.Tensor], targets: torch.Tensor, stats: torch.Tensor,
    softcap: float, inv_temperature: float, accum_fp32: bool, *,
    block_n: Optional[int] = None, block_v: Optional[int] = None, block_d: Optional[int] = None,
    vocab_chunk: Optional[int] = None, need_dh: bool = True, need_dw: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dh, dW, db)`` for logits-gradient coefficients ``coeffs [N, 4]`` (db empty w/o bias).

    ``thresh [N]`` enables tile skipping: a tile is skipped when every ``|dz|`` is below its
    row's threshold. ``need_dh`` / ``need_dw`` False skip that GEMM (a frozen LM head, as in LoRA,
    needs only ``dh``: a third less backward work, no dW buffer) and return an empty tensor.

    Accumulation is always fp32: ``dh`` (``[N, D]``, O(N) memory) gets one atomic add per
    vocabulary tile, and 16-bit atomics over hundreds of tiles drift by several percent (2.7%
    relative error simulated for 250 tiles), beyond the bf16 tolerance. ``dW`` is accumulated in
    an fp32 buffer for one vocabulary chunk of ``vocab_chunk`` rows at a time (default: 256 MiB
    worth), one launch per chunk, and rounded once into the output; ``accum_fp32`` uses a single
    fp32 buffer for the whole vocabulary (one launch, ``V·D·4`` bytes).

    Example
    -------
    >>> dh, dw, db = linear_softmax_backward(coeffs, None, h, w, None, y, stats, 0.0, 1.0, False)  # doctest: +SKIP
    """
    n, d = h.shape
    v = weight.shape[0]
    dh = torch.zeros((n, d) if need_dh else (0, d), dtype=torch.float32, device=h.device)
    dw = torch.empty((v, d) if need_dw else (0, d), dtype=weight.dtype, device=h.device)
    db = torch.zeros((v if bias is not None else 0,), dtype=torch.float32, device=h.device)
    if n == 0:
        dw.zero_()
    elif need_dh or need_dw or bias is not None:
        bn, bv, bd = _blocks(n, BWD_BLOCKS, block_n, block_v, block_d)
        if accum_fp32 or weight.dtype == torch.float32 or not need_dw:
            chunk = v
        else:
            chunk = vocab_chunk or max(bv, (DW_CHUNK_BYTES // (4 * d)) // bv * bv)
        for v0 in range(0, v, chunk):
            v1 = min(v0 + chunk, v)
            if not need_dw:
                dw_acc = dw  # never written
            elif dw.dtype == torch.float32:
                dw_acc = dw[v0:v1].zero_()
            else:
                dw_acc = torch.zeros((v1 - v0, d), dtype=torch.float32, device=h.device)
            v_tiles = cdiv(v1 - v0, bv)
            launcher(_lsm_bwd_kernel, h)[(cdiv(n, bn) * v_tiles,)](
                h, weight[v0:v1], bias[v0:v1] if bias is not None else weight, targets - v0 if v0 else targets,
                stats, coeffs, thresh if thresh is not None else stats,
                dh if need_dh else stats, dw_acc if need_dw else stats, db[v0:v1] if bias is not None else stats,
                n, v1 - v0, d, h.stride(0), weight.stride(0), softcap, inv_temperature, v_tiles,
                HAS_BIAS=bias is not None, SOFTCAP=softcap > 0, FILTER=thresh is not None,
                PRECISION=_precision(h.dtype), NEED_DH=need_dh, NEED_DW=need_dw,
                GROUP_N=8, BLOCK_N=bn, BLOCK_V=bv, BLOCK_D=bd, num_warps=8 if bn * bv >= 128 * 128 else 4,
            )
            if need_dw and dw.dtype != torch.float32:  # dw_acc is a separate fp32 buffer
                dw[v0:v1] = dw_acc
    db_out = db.to(bias.dtype) if bias is not None else db
    return dh.to(h.dtype), dw, db_out


# Forward tiles (BLOCK_N, BLOCK_V, BLOCK_D, num_stages) the GPU probe sweeps
# (scripts/perf_probe.py, step lsm); the first is the launcher's default.
FWD_SWEEP = (  # the first is the launcher's 16-bit default (FWD_BLOCKS, FWD_STAGES)
    (128, 256, 64, 3), (128, 128, 32, 3), (128, 128, 64, 3), (128, 128, 64, 4), (128, 256, 64, 4),
    (256, 128, 32, 3), (256, 128, 64, 3), (256, 128, 64, 4),
)


def aot_configs():
    """Launch configurations compiled ahead of time by :mod:`.aot_check`: the Gemma-2-2B CE
    shape (N = 8192, D = 2304, V = 256000), and the forward tiles of :data:`FWD_SWEEP`.

    Example
    -------
    >>> sorted({c.name.split("[")[0] for c in aot_configs()})
    ['lsm_bwd', 'lsm_combine', 'lsm_fwd']
    """
    from .aot_spec import BLOCK_NAMES, Config, launch_args

    # linear softmax at the Gemma-2-2B shape: N = 8192, D = 2304, V = 256000 (5 splits by default)
    shape = dict(N=8192, V=256000, D=2304, stride_h=2304, stride_w=2304)
    for dt in ("bf16", "fp32"):
        prec = "ieee" if dt == "fp32" else "tf32"
        common = {"h_ptr": f"*{dt}", "w_ptr": f"*{dt}", "b_ptr": f"*{dt}", "y_ptr": "*i64"}
        fwd_sig = {**common, "part_ptr": "*fp32", "N": "i32", "V": "i32", "D": "i32", "stride_h": "i32",
                   "stride_w": "i32", "cols_per_split": "i32", "n_splits": "i32", "softcap": "fp32", "inv_temp": "fp32"}
        for bias, cap in ((False, False), (True, True)):
            yield Config(f"lsm_fwd[{dt},bias={bias},softcap={cap}]", _lsm_fwd_kernel,
                         launch_args(fwd_sig, **shape, cols_per_split=400 * 128, n_splits=5),
                         {"HAS_BIAS": bias, "SOFTCAP": cap, "PRECISION": prec,
                          **dict(zip(BLOCK_NAMES, FWD_BLOCKS_FP32 if dt == "fp32" else FWD_BLOCKS))},
                         num_stages=FWD_STAGES)
        if dt == "bf16":
            for bn, bv, bd, stages in FWD_SWEEP[1:]:
                yield Config(f"lsm_fwd[bf16,{bn}x{bv}x{bd},s{stages}]", _lsm_fwd_kernel,
                             launch_args(fwd_sig, **shape, cols_per_split=64 * 128, n_splits=33),
                             {"HAS_BIAS": False, "SOFTCAP": False, "PRECISION": prec, "BLOCK_N": bn, "BLOCK_V": bv,
                              "BLOCK_D": bd}, num_stages=stages)
        for filt in (False, True):
            yield Config(f"lsm_bwd[{dt},filter={filt}]", _lsm_bwd_kernel, launch_args({
                **common, "stats_ptr": "*fp32", "coef_ptr": "*fp32", "thresh_ptr": "*fp32", "dh_ptr": "*fp32",
                "dw_ptr": "*fp32", "db_ptr": "*fp32", "N": "i32", "V": "i32", "D": "i32", "stride_h": "i32",
                "stride_w": "i32", "softcap": "fp32", "inv_temp": "fp32", "n_tiles_v": "i32",
            }, **shape, n_tiles_v=2000), {"HAS_BIAS": True, "SOFTCAP": True, "FILTER": filt, "PRECISION": prec, "GROUP_N": 8,
                                          "NEED_DH": True, "NEED_DW": not filt, **dict(zip(BLOCK_NAMES, BWD_BLOCKS))})
    yield Config("lsm_combine", _lsm_combine_kernel, launch_args(
        {"part_ptr": "*fp32", "stats_ptr": "*fp32", "N": "i32", "n_splits": "i32"}, N=8192, n_splits=5),
        {"BLOCK_R": 64, "BLOCK_S": 32}, num_warps=4)
