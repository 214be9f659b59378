"""Triton kernels of the Clip-Cov / KL-Cov selection and loss. Semantics:
:mod:`entropy_kernels.reference.policy_loss`.

The ``[B, T]`` inputs are read as flat ``[N]`` arrays; ``P`` programs each own a contiguous
chunk (a multiple of ``BLOCK``), so "earlier program" means "lower flat index".

Selection, five launches and no host synchronisation (``k`` never leaves the device):

1. ``_stats_kernel``: per-program partial sums ``(Σ m·A, Σ m·lp, Σ m, #valid)`` in fp64 (a
   two-stage reduction: deterministic, no float atomics); program 0 also zeroes the control
   block (eligible count and three histograms).
2. ``_keys_kernel``: every program adds up the partials (means), computes the per-token
   covariance and the 32-bit selection key (KL-Cov: the order-preserving bits of the fp32
   covariance; Clip-Cov: Philox random bits keyed by ``(seed, offset + index)`` on eligible
   tokens; 0 = never), stores the keys and adds its histogram of the keys' top 11 bits and its
   eligible count to the control block (integer atomics: deterministic).
3. ``_hist2_kernel`` / ``_hist3_kernel``: radix select of the ``k``-th largest key (11 + 11 +
   10 bits, as in :mod:`.top_h`), ``k`` computed on the device from the statistics
   (``max(int(ρ·n), 1)``, exactly as Python's float64 ``int()``: ρ travels as three fp32
   words). Pass 3 also stores each program's histogram row of the last digit, from which the
   writer learns how many keys equal to the threshold lie in earlier programs.
4. ``_write_kernel``: ``selected = key > t`` or (``key == t`` and among the first ``need`` such
   keys in flat order) — exactly ``k`` tokens, ties broken by the lower flat index.

Loss: ``_loss_kernel`` computes per-token loss, its derivative w.r.t. ``log_prob`` (already
scaled by the aggregation weight, so the backward is one multiply) and per-program partial
sums; ``_loss_combine_kernel`` adds them up into the loss and the metrics.

Each of these kernels is a ``@triton.jit`` phase function (``_stats_phase`` ...), launched on
its own. ``_fused_kernel`` calls the same functions back to back in ONE cooperative launch (one program per SM, a grid barrier between
phases): the eager path of the losses (selection + loss + metrics), of the selection
functions (``LOSS=False``) and of ``high_entropy_mask``. The phase-per-launch kernels serve torch.compile (the graph sees each
launch), the global selection across ranks, and ``EK_COV_FUSED=0``.

``MODE`` says what the keys rank: ``KL_COV`` the covariance, ``CLIP_COV`` random keys on the
eligible tokens, ``TOP_VALUES`` the values themselves (``high_entropy_mask``: no statistics
pass; ``k = max(1, ceil(ρ·#valid − 1e-9))``).
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .. import config
from ._launch import cdiv, launcher, next_pow2, sm_count
from .top_h import _pick_digit

# control block (int32): [0] eligible count, then the three radix histograms
H1 = tl.constexpr(16)
H2 = tl.constexpr(16 + 2048)
H3 = tl.constexpr(16 + 4096)
CTRL_SIZE = 16 + 4096 + 1024
BARRIERS = tl.constexpr(16 + 4096 + 1024)  # the fused kernel's grid-barrier counters (5)
CTRL_FUSED_SIZE = CTRL_SIZE + 16
CTRL_POW2 = tl.constexpr(8192)
N_STATS = 4
# what the keys rank (the MODE constexpr of the selection phases)
KL_COV = tl.constexpr(0)  # the covariance (A − mean A)·(lp − mean lp)
CLIP_COV = tl.constexpr(1)  # random keys on the eligible tokens
TOP_VALUES = tl.constexpr(2)  # the value itself (high_entropy_mask); no statistics pass
TWO31 = tl.constexpr(2147483648)


@functools.lru_cache(maxsize=64)
def split_ratio(ratio: float) -> Tuple[float, float, float]:
    """A float64 as three float32 words whose exact sum is the float64 (the kernels rebuild it
    in fp64, so ``int(n·ρ)`` on the device equals Python's)."""
    import numpy as np

    hi = float(np.float32(ratio))
    mid = float(np.float32(ratio - hi))
    lo = float(np.float32(ratio - hi - mid))
    return hi, mid, lo


# Every read of data that *other* programs wrote (partial sums, histograms, tie rows, the eligible
# count, the statistics) is a volatile load: in the fused kernel those values arrive through a
# grid barrier, and a volatile load goes to L2 instead of a possibly stale L1 line.


@triton.jit
def _sum_stats(part_ptr, n_parts, P_BLOCK: tl.constexpr):
    """Σ over ``n_parts`` rows (stride 8) of the 4 fp64 statistics partials."""
    rows = tl.arange(0, P_BLOCK)
    sa = tl.zeros((P_BLOCK,), tl.float64)
    sl = tl.zeros((P_BLOCK,), tl.float64)
    sm = tl.zeros((P_BLOCK,), tl.float64)
    sc = tl.zeros((P_BLOCK,), tl.float64)
    for start in range(0, n_parts, P_BLOCK):
        r = start + rows
        ok = r < n_parts
        sa += tl.load(part_ptr + r * 8 + 0, mask=ok, other=0.0, volatile=True)
        sl += tl.load(part_ptr + r * 8 + 1, mask=ok, other=0.0, volatile=True)
        sm += tl.load(part_ptr + r * 8 + 2, mask=ok, other=0.0, volatile=True)
        sc += tl.load(part_ptr + r * 8 + 3, mask=ok, other=0.0, volatile=True)
    return tl.sum(sa, 0), tl.sum(sl, 0), tl.sum(sm, 0), tl.sum(sc, 0)


@triton.jit
def _k_eff(stats_ptr, ctrl_ptr, r_hi, r_mid, r_lo, MODE: tl.constexpr):
    """How many tokens to select: Clip-Cov ``min(max(int(ρ·Σm), 1), #eligible)``, KL-Cov
    ``max(1, int(ρ·#valid))``, top values ``max(1, ceil(ρ·#valid − 1e-9))`` (0 without valid
    tokens). fp64 math, truncation like ``int()``, as the references compute it."""
    ratio = tl.cast(r_hi, tl.float64) + tl.cast(r_mid, tl.float64) + tl.cast(r_lo, tl.float64)
    n_elig = tl.load(ctrl_ptr, volatile=True)
    if MODE == CLIP_COV:
        n = tl.maximum((tl.load(stats_ptr + 2, volatile=True) * ratio).to(tl.int64), 1)
        k = tl.minimum(n, n_elig.to(tl.int64))
    elif MODE == KL_COV:
        count = tl.load(stats_ptr + 3, volatile=True)
        k = tl.where(count > 0, tl.maximum((count * ratio).to(tl.int64), 1), 0)
    else:  # TOP_VALUES: every valid token is eligible, so n_elig = #valid
        # max(·, 0) is a no-op here (n, ρ ≥ 0) that keeps the compiler from contracting the
        # product and the difference into one FMA: the reference rounds twice, so must we
        x = tl.maximum(n_elig.to(tl.float64) * ratio, 0.0) - tl.full((), 1e-9, tl.float64)
        t = x.to(tl.int64)
        up = t + (t.to(tl.float64) < x).to(tl.int64)  # ceil(x) for x > -1
        k = tl.where(n_elig > 0, tl.maximum(up, 1), 0)
    return k.to(tl.int32)


@triton.jit
def _histogram(ctrl_ptr, at: tl.constexpr, NB: tl.constexpr):
    return tl.load(ctrl_ptr + at + tl.arange(0, NB), volatile=True)


@triton.jit
def _grid_barrier(counter_ptr):
    """Wait until every program of the (cooperatively launched) grid has arrived here. One
    fresh zeroed counter per barrier: the arrival is a release (after a CTA barrier, so it
    covers every thread's stores), the spin an acquire."""
    tl.debug_barrier()
    arrived = tl.atomic_add(counter_ptr, 1, sem="acq_rel") + 1
    while arrived < tl.num_programs(0):
        arrived = tl.atomic_add(counter_ptr, 0, sem="acquire")
    tl.debug_barrier()


# ---- the phases: each program works on its contiguous chunk [pid·chunk, (pid+1)·chunk) ------------


@triton.jit
def _stats_phase(lp_ptr, adv_ptr, mask_ptr, part_ptr, ctrl_ptr, N, chunk, ZERO_CTRL: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    base = pid.to(tl.int64) * chunk
    offs = tl.arange(0, BLOCK)
    sa = tl.zeros((BLOCK,), tl.float64)
    sl = tl.zeros((BLOCK,), tl.float64)
    sm = tl.zeros((BLOCK,), tl.float64)
    sc = tl.zeros((BLOCK,), tl.float64)
    for start in range(0, chunk, BLOCK):
        idx = base + start + offs
        ok = idx < N
        m = tl.load(mask_ptr + idx, mask=ok, other=0).to(tl.float64)
        valid = m > 0
        a = tl.load(adv_ptr + idx, mask=valid, other=0.0).to(tl.float64)
        lp = tl.load(lp_ptr + idx, mask=valid, other=0.0).to(tl.float64)
        sa += tl.where(valid, m * a, 0.0)
        sl += tl.where(valid, m * lp, 0.0)
        sm += tl.where(valid, m, 0.0)
        sc += valid.to(tl.float64)
    tl.store(part_ptr + pid * 8 + 0, tl.sum(sa, 0))
    tl.store(part_ptr + pid * 8 + 1, tl.sum(sl, 0))
    tl.store(part_ptr + pid * 8 + 2, tl.sum(sm, 0))
    tl.store(part_ptr + pid * 8 + 3, tl.sum(sc, 0))
    if ZERO_CTRL:
        if pid == 0:
            c = tl.arange(0, CTRL_POW2)
            tl.store(ctrl_ptr + c, tl.zeros((CTRL_POW2,), tl.int32), mask=c < H3 + 1024)


@triton.jit
def _keys_phase(
    lp_ptr, adv_ptr, mask_ptr, old_ptr, part_ptr, n_parts, stats_ptr, key_ptr, ctrl_ptr, seed_ptr, offset_ptr,
    N, chunk, clip_low, clip_high, lb, ub,
    MODE: tl.constexpr, HIST: tl.constexpr, KEY64: tl.constexpr, ACC64: tl.constexpr, HAS_OFFSET: tl.constexpr,
    P_BLOCK: tl.constexpr, BLOCK: tl.constexpr,
):
    """Keys (and, with HIST, the first radix histogram and the eligible count). Statistics: the
    sum of the partials (HIST; program 0 stores it at ``stats_ptr``) or read from ``stats_ptr``.
    TOP_VALUES reads no statistics: the key of a valid token is its value (``lp_ptr``)."""
    pid = tl.program_id(0)
    # Triton types a Python float argument fp32, torch.compile's launcher fp64: one type, so
    # that compiled and eager steps make the same comparisons bit for bit
    clip_low, clip_high = tl.cast(clip_low, tl.float32), tl.cast(clip_high, tl.float32)
    lb, ub = tl.cast(lb, tl.float32), tl.cast(ub, tl.float32)
    if MODE == TOP_VALUES:
        mean_a = 0.0
        mean_lp = 0.0
    elif HIST:
        sa, sl, sm, sc = _sum_stats(part_ptr, n_parts, P_BLOCK)
        if pid == 0:
            tl.store(stats_ptr + 0, sa)
            tl.store(stats_ptr + 1, sl)
            tl.store(stats_ptr + 2, sm)
            tl.store(stats_ptr + 3, sc)
    else:
        sa = tl.load(stats_ptr + 0)
        sl = tl.load(stats_ptr + 1)
        sm = tl.load(stats_ptr + 2)
    if MODE != TOP_VALUES:
        den = tl.where(sm > 0, sm, 1.0)
        mean_a = sa / den
        mean_lp = sl / den
    if MODE == CLIP_COV:
        seed = tl.load(seed_ptr)
        if HAS_OFFSET:
            offset = tl.load(offset_ptr).to(tl.int32)
        else:
            offset = 0
    base = pid.to(tl.int64) * chunk
    offs = tl.arange(0, BLOCK)
    hist = tl.zeros((2048,), tl.int32)
    n_elig = tl.zeros((BLOCK,), tl.int32)
    for start in range(0, chunk, BLOCK):
        idx = base + start + offs
        ok = idx < N
        m = tl.load(mask_ptr + idx, mask=ok, other=0)  # compared in its own dtype (a 1e-300 fp64 weight is valid)
        if MODE == TOP_VALUES:
            valid = m != 0  # as mask.to(bool)
            lp_in = tl.load(lp_ptr + idx, mask=valid, other=0.0)
            cov = lp_in.to(tl.float64)  # not a covariance: the value itself is ranked
        else:
            valid = m > 0
            a_in = tl.load(adv_ptr + idx, mask=valid, other=0.0)
            lp_in = tl.load(lp_ptr + idx, mask=valid, other=0.0)
            cov = (a_in.to(tl.float64) - mean_a) * (lp_in.to(tl.float64) - mean_lp)
        if MODE == CLIP_COV:
            if ACC64:
                a = a_in.to(tl.float64)
                d = lp_in.to(tl.float64) - tl.load(old_ptr + idx, mask=valid, other=0.0).to(tl.float64)
            else:
                a = a_in.to(tl.float32)
                d = lp_in.to(tl.float32) - tl.load(old_ptr + idx, mask=valid, other=0.0).to(tl.float32)
            ratio = tl.exp(d)
            l1 = -a * ratio
            l2 = -a * tl.minimum(tl.maximum(ratio, 1.0 - clip_low), 1.0 + clip_high)
            elig = valid & ~(l2 > l1) & (cov > lb) & (cov < ub)
            r = tl.randint(seed, offset + idx.to(tl.int32))
            u = (r >> 1).to(tl.int64) + 1
        else:
            elig = valid
            c32 = cov.to(tl.float32)
            c32 = tl.where(c32 == 0, 0.0, c32)  # −0.0 ties with +0.0, as the values compare
            b = c32.to(tl.int32, bitcast=True)
            u = tl.maximum(tl.where(b < 0, b ^ 0x7FFFFFFF, b).to(tl.int64) + TWO31, 1)
            u = tl.where(c32 != c32, 1, u)  # NaN: the lowest valid key (no float constant: inductor re-emits globals)
        u = tl.where(elig, u, 0)
        if KEY64:
            tl.store(key_ptr + idx, u, mask=ok)
        else:
            tl.store(key_ptr + idx, (u - TWO31).to(tl.int32), mask=ok)
        if HIST:
            hist += tl.histogram((u >> 21).to(tl.int32), 2048, mask=ok)
            n_elig += elig.to(tl.int32)
    if HIST:
        bins = tl.arange(0, 2048)
        tl.atomic_add(ctrl_ptr + H1 + bins, hist, mask=hist > 0)
        tl.atomic_add(ctrl_ptr, tl.sum(n_elig, 0))


@triton.jit
def _load_keys(key_ptr, idx, ok):
    return tl.load(key_ptr + idx, mask=ok, other=-TWO31).to(tl.int64) + TWO31


@triton.jit
def _hist2_phase(key_ptr, stats_ptr, ctrl_ptr, N, chunk, r_hi, r_mid, r_lo, MODE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    need = _k_eff(stats_ptr, ctrl_ptr, r_hi, r_mid, r_lo, MODE)
    d1, _ = _pick_digit(_histogram(ctrl_ptr, H1, 2048), need, 2048)
    base = pid.to(tl.int64) * chunk
    offs = tl.arange(0, BLOCK)
    hist = tl.zeros((2048,), tl.int32)
    for start in range(0, chunk, BLOCK):
        idx = base + start + offs
        ok = idx < N
        u = _load_keys(key_ptr, idx, ok)
        hist += tl.histogram(((u >> 10) & 2047).to(tl.int32), 2048, mask=ok & ((u >> 21) == d1))
    bins = tl.arange(0, 2048)
    tl.atomic_add(ctrl_ptr + H2 + bins, hist, mask=hist > 0)


@triton.jit
def _prefix22(ctrl_ptr, need):
    d1, above = _pick_digit(_histogram(ctrl_ptr, H1, 2048), need, 2048)
    need -= above
    d2, above = _pick_digit(_histogram(ctrl_ptr, H2, 2048), need, 2048)
    need -= above
    return d1.to(tl.int64) * 2048 + d2, need


@triton.jit
def _hist3_phase(key_ptr, stats_ptr, ctrl_ptr, rows_ptr, N, chunk, r_hi, r_mid, r_lo, MODE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    need = _k_eff(stats_ptr, ctrl_ptr, r_hi, r_mid, r_lo, MODE)
    prefix, _ = _prefix22(ctrl_ptr, need)
    base = pid.to(tl.int64) * chunk
    offs = tl.arange(0, BLOCK)
    hist = tl.zeros((1024,), tl.int32)
    for start in range(0, chunk, BLOCK):
        idx = base + start + offs
        ok = idx < N
        u = _load_keys(key_ptr, idx, ok)
        hist += tl.histogram((u & 1023).to(tl.int32), 1024, mask=ok & ((u >> 10) == prefix))
    bins = tl.arange(0, 1024)
    tl.store(rows_ptr + pid * 1024 + bins, hist)
    tl.atomic_add(ctrl_ptr + H3 + bins, hist, mask=hist > 0)


@triton.jit
def _write_phase(
    key_ptr, stats_ptr, ctrl_ptr, rows_ptr, sel_ptr, N, chunk, r_hi, r_mid, r_lo,
    MODE: tl.constexpr, P_BLOCK: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    need = _k_eff(stats_ptr, ctrl_ptr, r_hi, r_mid, r_lo, MODE)
    prefix, need = _prefix22(ctrl_ptr, need)
    d3, above = _pick_digit(_histogram(ctrl_ptr, H3, 1024), need, 1024)
    need -= above  # how many keys equal to the threshold are selected (lowest flat index first)
    thresh = prefix * 1024 + d3.to(tl.int64)
    # keys equal to the threshold in earlier programs (their last-digit histogram rows, column d3)
    rows = tl.arange(0, P_BLOCK)
    before = tl.zeros((P_BLOCK,), tl.int32)
    for start in range(0, pid, P_BLOCK):
        r = start + rows
        before += tl.load(rows_ptr + r * 1024 + d3, mask=r < pid, other=0, volatile=True)
    n_ties = tl.sum(before, 0)
    base = pid.to(tl.int64) * chunk
    offs = tl.arange(0, BLOCK)
    for start in range(0, chunk, BLOCK):
        idx = base + start + offs
        ok = idx < N
        u = _load_keys(key_ptr, idx, ok)
        tie = ok & (u == thresh)
        tie_rank = n_ties + tl.cumsum(tie.to(tl.int32), 0) - 1
        sel = (u > thresh) | (tie & (tie_rank < need))
        tl.store(sel_ptr + idx, sel, mask=ok)
        n_ties += tl.sum(tie.to(tl.int32), 0)


@triton.jit
def _loss_phase(
    old_ptr, lp_ptr, adv_ptr, mask_ptr, sel_ptr, stats_ptr, rowcnt_ptr, iw_ptr, den_ptr, coef_ptr, part_ptr,
    N, T, B, chunk, clip_low, clip_high, kl_coef, den_hi, den_lo, den_mult,
    CLIP: tl.constexpr, AGG: tl.constexpr, HAS_IW: tl.constexpr, DEN_PTR: tl.constexpr, ACC64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Per-token loss and ``coef = ∂loss/∂lp``; partials (Σ w·loss, Σ m·kl, Σ m over the selected)
    in columns 4-6 of the program's row of ``part_ptr``. AGG (the reduction of
    ``reference.policy_loss.agg_normalization``): 0 Σ over tokens, 1 Σ over sequences of the
    token sums, 2 of the token means; for 1 and 2 ``rowcnt_ptr`` holds Σ m per sequence. The
    denominator: ``_loss_denominator``. HAS_IW: each token's loss times ``iw_ptr`` (verl's
    rollout_is_weights)."""
    pid = tl.program_id(0)
    DT: tl.constexpr = tl.float64 if ACC64 else tl.float32
    # fp32 as Triton passes a Python float (torch.compile's launcher passes fp64, which would
    # change the accumulators' type and the clipping comparisons)
    clip_low, clip_high = tl.cast(clip_low, tl.float32), tl.cast(clip_high, tl.float32)
    kl_coef = tl.cast(kl_coef, tl.float32)
    den = _loss_denominator(stats_ptr, rowcnt_ptr, den_ptr, B, den_hi, den_lo, den_mult, AGG, DEN_PTR, BLOCK)
    scale_all = (1.0 / den).to(DT)
    base = pid.to(tl.int64) * chunk
    offs = tl.arange(0, BLOCK)
    acc_loss = tl.zeros((BLOCK,), DT)
    acc_kl = tl.zeros((BLOCK,), DT)
    acc_sel = tl.zeros((BLOCK,), DT)
    for start in range(0, chunk, BLOCK):
        idx = base + start + offs
        ok = idx < N
        m_in = tl.load(mask_ptr + idx, mask=ok, other=0)
        valid = m_in > 0
        m = m_in.to(DT)
        lp = tl.load(lp_ptr + idx, mask=valid, other=0.0).to(DT)
        old = tl.load(old_ptr + idx, mask=valid, other=0.0).to(DT)
        a = tl.load(adv_ptr + idx, mask=valid, other=0.0).to(DT)
        sel = tl.load(sel_ptr + idx, mask=valid, other=0) != 0
        d = lp - old
        ratio = tl.exp(d)
        l1 = -a * ratio
        if CLIP:
            l2 = -a * tl.minimum(tl.maximum(ratio, 1.0 - clip_low), 1.0 + clip_high)
            # NaN-propagating max (torch.maximum's): a NaN input at a valid token reaches the loss;
            # the selected tokens' terms are multiplied by 0 as verl does, so a NaN/inf stays NaN
            l12 = tl.maximum(l1, l2, propagate_nan=tl.PropagateNan.ALL)
            tok = tl.where(sel, l12 * 0.0, l12)
            grad = tl.where(sel, l1 * 0.0, tl.where(l2 > l1, 0.0, l1))
            kl = -d
        else:
            absd = tl.abs(d)
            sign = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0))
            tok = tl.where(sel, l1 + kl_coef * absd, l1)
            grad = tl.where(sel, l1 + kl_coef * sign, l1)
            kl = absd
        if HAS_IW:
            iw = tl.load(iw_ptr + idx, mask=valid, other=0.0).to(DT)
            tok *= iw
            grad *= iw
        w = m
        if AGG == 2:
            n_b = tl.load(rowcnt_ptr + idx // T, mask=valid, other=1.0).to(DT)
            w = m / tl.where(n_b > 0, n_b, 1.0)
        acc_loss += tl.where(valid, w * tok, 0.0)
        tl.store(coef_ptr + idx, tl.where(valid, (w * scale_all) * grad, 0.0), mask=ok)
        acc_kl += tl.where(valid, m * kl, 0.0)
        acc_sel += tl.where(valid & sel, m, 0.0)
    tl.store(part_ptr + pid * 8 + 4, tl.sum(acc_loss, 0).to(tl.float64))
    tl.store(part_ptr + pid * 8 + 5, tl.sum(acc_kl, 0).to(tl.float64))
    tl.store(part_ptr + pid * 8 + 6, tl.sum(acc_sel, 0).to(tl.float64))


@triton.jit
def _n_sequences(rowcnt_ptr, B, BLOCK: tl.constexpr):
    """The seq-mean denominator: sequences with at least one valid token (``rowcnt > 0``; as
    verl's ``agg_loss``), at least 1 so that a batch without valid tokens gives a zero loss."""
    offs = tl.arange(0, BLOCK)
    n = tl.zeros((BLOCK,), tl.int32)
    for start in range(0, B, BLOCK):
        r = start + offs
        n += (tl.load(rowcnt_ptr + r, mask=r < B, other=0.0) > 0).to(tl.int32)
    return tl.maximum(tl.sum(n, 0), 1)


@triton.jit
def _loss_denominator(stats_ptr, rowcnt_ptr, den_ptr, B, den_hi, den_lo, den_mult, AGG: tl.constexpr,
                      DEN_PTR: tl.constexpr, BLOCK: tl.constexpr):
    """fp64 ``D·mult``: D = the given denominator when > 0 -- ``den_ptr[0]`` (fp64, DEN_PTR: a
    count that changes per step stays a device tensor, so compiled and graph-captured steps read
    the current one) or ``den_hi + den_lo`` (two fp32 words: a global token count needs more than
    fp32's 24 bits) -- else the local one: Σ m (AGG 0; 1 when it is 0) or the sequences with a
    valid token (AGG 1, 2)."""
    if DEN_PTR:
        given = tl.load(den_ptr, volatile=True).to(tl.float64)
    else:
        given = tl.cast(den_hi, tl.float64) + tl.cast(den_lo, tl.float64)
    if AGG == 0:
        sm = tl.load(stats_ptr + 2, volatile=True)
        local = tl.where(sm > 0, sm, 1.0)
    else:
        local = _n_sequences(rowcnt_ptr, B, BLOCK).to(tl.float64)
    return tl.where(given > 0, given, local) * tl.cast(den_mult, tl.float64)


@triton.jit
def _combine_phase(part_ptr, n_parts, stats_ptr, rowcnt_ptr, den_ptr, loss_ptr, metrics_ptr, B, den_hi, den_lo,
                   den_mult, CLIP: tl.constexpr, AGG: tl.constexpr, DEN_PTR: tl.constexpr, P_BLOCK: tl.constexpr):
    """The loss and the metrics ``[pg_clipfrac, ppo_kl]`` from the loss partials."""
    rows = tl.arange(0, P_BLOCK)
    s0 = tl.zeros((P_BLOCK,), tl.float64)
    s1 = tl.zeros((P_BLOCK,), tl.float64)
    s2 = tl.zeros((P_BLOCK,), tl.float64)
    for start in range(0, n_parts, P_BLOCK):
        r = start + rows
        ok = r < n_parts
        s0 += tl.load(part_ptr + r * 8 + 4, mask=ok, other=0.0, volatile=True)
        s1 += tl.load(part_ptr + r * 8 + 5, mask=ok, other=0.0, volatile=True)
        s2 += tl.load(part_ptr + r * 8 + 6, mask=ok, other=0.0, volatile=True)
    sm = tl.load(stats_ptr + 2, volatile=True)
    den = tl.where(sm > 0, sm, 1.0)  # the metrics are local means, as verl logs them
    loss = tl.sum(s0, 0) / _loss_denominator(
        stats_ptr, rowcnt_ptr, den_ptr, B, den_hi, den_lo, den_mult, AGG, DEN_PTR, P_BLOCK
    )
    tl.store(loss_ptr, loss.to(loss_ptr.dtype.element_ty))
    if CLIP:
        tl.store(metrics_ptr + 0, (tl.sum(s2, 0) / den).to(metrics_ptr.dtype.element_ty))
    else:
        tl.store(metrics_ptr + 0, 0.0)
    tl.store(metrics_ptr + 1, (tl.sum(s1, 0) / den).to(metrics_ptr.dtype.element_ty))


# ---- one phase per launch (torch.compile's ops, the global selection, EK_COV_FUSED=0): a
# ``@triton.jit`` function is launchable as it is, so the phase functions are the kernels --------

_stats_kernel = _stats_phase
_keys_kernel = _keys_phase
_hist2_kernel = _hist2_phase
_hist3_kernel = _hist3_phase
_write_kernel = _write_phase
_loss_kernel = _loss_phase
_loss_combine_kernel = _combine_phase


# ---- every phase in one cooperative launch ------------------------------------------------------


@triton.jit
def _fused_kernel(
    old_ptr, lp_ptr, adv_ptr, mask_ptr, seed_ptr, offset_ptr, rowcnt_ptr, iw_ptr, den_ptr,
    part_ptr, stats_ptr, ctrl_ptr, key_ptr, rows_ptr, sel_ptr, coef_ptr, loss_ptr, metrics_ptr, count_ptr,
    N, T, B, chunk, clip_low, clip_high, lb, ub, kl_coef, r_hi, r_mid, r_lo, den_hi, den_lo, den_mult,
    MODE: tl.constexpr, LOSS: tl.constexpr, AGG: tl.constexpr, HAS_IW: tl.constexpr, DEN_PTR: tl.constexpr,
    ACC64: tl.constexpr, HAS_OFFSET: tl.constexpr, P_BLOCK: tl.constexpr, BLOCK: tl.constexpr,
):
    """The selection -- and with LOSS the loss, ``coef``, the metrics and the count -- in one
    launch: the phases above separated by grid barriers. Needs every program resident at once
    (a cooperative launch, ≤ one program per SM) and ``ctrl`` zeroed, barrier counters included."""
    n_parts = tl.num_programs(0)
    if MODE != TOP_VALUES:
        _stats_phase(lp_ptr, adv_ptr, mask_ptr, part_ptr, ctrl_ptr, N, chunk, False, BLOCK)
        _grid_barrier(ctrl_ptr + BARRIERS + 0)
    _keys_phase(
        lp_ptr, adv_ptr, mask_ptr, old_ptr, part_ptr, n_parts, stats_ptr, key_ptr, ctrl_ptr, seed_ptr, offset_ptr,
        N, chunk, clip_low, clip_high, lb, ub, MODE, True, False, ACC64, HAS_OFFSET, P_BLOCK, BLOCK,
    )
    _grid_barrier(ctrl_ptr + BARRIERS + 1)
    _hist2_phase(key_ptr, stats_ptr, ctrl_ptr, N, chunk, r_hi, r_mid, r_lo, MODE, BLOCK)
    _grid_barrier(ctrl_ptr + BARRIERS + 2)
    _hist3_phase(key_ptr, stats_ptr, ctrl_ptr, rows_ptr, N, chunk, r_hi, r_mid, r_lo, MODE, BLOCK)
    _grid_barrier(ctrl_ptr + BARRIERS + 3)
    _write_phase(key_ptr, stats_ptr, ctrl_ptr, rows_ptr, sel_ptr, N, chunk, r_hi, r_mid, r_lo, MODE, P_BLOCK, BLOCK)
    if LOSS:
        CLIP: tl.constexpr = MODE == CLIP_COV
        tl.debug_barrier()  # the loss phase reads back this program's selection
        _loss_phase(
            old_ptr, lp_ptr, adv_ptr, mask_ptr, sel_ptr, stats_ptr, rowcnt_ptr, iw_ptr, den_ptr, coef_ptr, part_ptr,
            N, T, B, chunk, clip_low, clip_high, kl_coef, den_hi, den_lo, den_mult, CLIP, AGG, HAS_IW, DEN_PTR, ACC64,
            BLOCK,
        )
        _grid_barrier(ctrl_ptr + BARRIERS + 4)
        if tl.program_id(0) == 0:
            _combine_phase(
                part_ptr, n_parts, stats_ptr, rowcnt_ptr, den_ptr, loss_ptr, metrics_ptr, B, den_hi, den_lo, den_mult,
                CLIP, AGG, DEN_PTR, P_BLOCK,
            )
            tl.store(metrics_ptr + 2, 0.0)  # pg_clipfrac_lower: 0, as verl logs it for these losses
            tl.store(count_ptr, _k_eff(stats_ptr, ctrl_ptr, r_hi, r_mid, r_lo, MODE).to(tl.int64))


# ---------------------------------------------------------------------------------------------
# launchers


def _grid_of(n: int, max_programs: int, block: int) -> Tuple[int, int]:
    blocks = max(1, cdiv(n, block))
    programs = min(blocks, max_programs)
    chunk = cdiv(blocks, programs) * block
    return cdiv(max(n, 1), chunk), chunk


_grid_cached = functools.lru_cache(maxsize=256)(_grid_of)


def _grid(n: int, device: torch.device, block: int) -> Tuple[int, int]:
    """(programs, chunk): ≤ 4 programs per SM, each owning a contiguous multiple of ``block``
    (cached per size: this runs on every step's host path; SymInts while tracing are not)."""
    programs = 4 * sm_count(device)
    return _grid_cached(n, programs, block) if isinstance(n, int) else _grid_of(n, programs, block)


MAX_BLOCK = 1024  # tokens per block iteration; tests lower it to exercise many programs and chunks


def _block(n: int) -> int:
    return max(32, min(MAX_BLOCK, next_pow2(max(n, 1))))


def _warps(block: int, most: int = 4) -> int:
    """Warps for ``[block]`` tensors: never more threads than elements. A smaller tensor is
    replicated across threads, and ``tl.histogram`` over a replicated layout has over-counted
    in some Triton versions (the interpreter, which has no layouts, cannot show it)."""
    return max(1, min(most, block // 32))


# The fused kernel runs one program per SM (the phase launches: four), so it gets more warps to
# keep as many loads in flight per SM.
FUSED_MAX_WARPS = 8


def _p_block(programs: int) -> int:
    return max(16, min(1024, next_pow2(programs)))


def stats(log_prob: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(Σ m·A, Σ m·lp, Σ m, #valid)`` fp64 ``[4]`` (contiguous inputs of equal shape)."""
    n = log_prob.numel()
    block = _block(n)
    programs, chunk = _grid(n, log_prob.device, block)
    part = torch.empty((programs, 8), dtype=torch.float64, device=log_prob.device)
    launcher(_stats_kernel, log_prob)[(programs,)](
        log_prob, advantages, mask, part, part, n, chunk, ZERO_CTRL=False, BLOCK=block, num_warps=_warps(block),
    )
    return part[:, :N_STATS].sum(0)


def keys(
    log_prob, advantages, mask, old_log_prob: Optional[torch.Tensor], stats_: torch.Tensor, clip_mode: bool,
    clip_low: float, clip_high: float, lb: float, ub: float, seed: Optional[torch.Tensor], offset: Optional[torch.Tensor],
) -> torch.Tensor:
    """int64 selection keys (0 = never) from given (e.g. all-reduced) statistics ``stats_ [4]``."""
    n = log_prob.numel()
    block = _block(n)
    programs, chunk = _grid(n, log_prob.device, block)
    out = torch.empty(log_prob.shape, dtype=torch.int64, device=log_prob.device)
    dummy = out
    launcher(_keys_kernel, log_prob)[(programs,)](
        log_prob, advantages, mask, old_log_prob if clip_mode else log_prob, stats_, 1, stats_, out, dummy,
        seed if clip_mode else dummy, offset if clip_mode and offset is not None else dummy, n, chunk,
        clip_low, clip_high, lb, ub, MODE=int(clip_mode), HIST=False, KEY64=True, ACC64=log_prob.dtype == torch.float64,
        HAS_OFFSET=offset is not None, P_BLOCK=16, BLOCK=block, num_warps=_warps(block),
    )
    return out


def select(
    log_prob, advantages, mask, old_log_prob: Optional[torch.Tensor], clip_mode: bool, ratio: float,
    clip_low: float, clip_high: float, lb: float, ub: float, seed: Optional[torch.Tensor], offset: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(selected bool [B, T], stats fp64 [4])``: the whole selection on the device, in five
    launches (:func:`fused` does it in one)."""
    n = log_prob.numel()
    dev = log_prob.device
    block = _block(n)
    programs, chunk = _grid(n, dev, block)
    p_block = _p_block(programs)
    part = torch.empty((programs, 8), dtype=torch.float64, device=dev)
    st = torch.empty((N_STATS,), dtype=torch.float64, device=dev)
    ctrl = torch.empty((CTRL_SIZE,), dtype=torch.int32, device=dev)
    key = torch.empty((n,), dtype=torch.int32, device=dev)
    rows = torch.empty((programs, 1024), dtype=torch.int32, device=dev)
    # bool tensors go to Triton as they are (``*i1``): a ``.view(torch.uint8)`` here would not
    # lower under torch.compile with torch < 2.13
    sel = torch.empty(log_prob.shape, dtype=torch.bool, device=dev)
    r = split_ratio(ratio)
    grid = (programs,)
    warps = _warps(block)
    launcher(_stats_kernel, log_prob)[grid](log_prob, advantages, mask, part, ctrl, n, chunk, ZERO_CTRL=True, BLOCK=block, num_warps=warps)
    launcher(_keys_kernel, log_prob)[grid](
        log_prob, advantages, mask, old_log_prob if clip_mode else log_prob, part, programs, st, key, ctrl,
        seed if clip_mode else part, offset if clip_mode and offset is not None else part, n, chunk,
        clip_low, clip_high, lb, ub, MODE=int(clip_mode), HIST=True, KEY64=False, ACC64=log_prob.dtype == torch.float64,
        HAS_OFFSET=offset is not None, P_BLOCK=p_block, BLOCK=block, num_warps=warps,
    )
    _radix_select_launches(log_prob, key, st, ctrl, rows, sel, n, chunk, r, int(clip_mode), programs, block)
    return sel, st


def _radix_select_launches(probe, key, st, ctrl, rows, sel, n, chunk, r, mode, programs, block) -> None:
    """Radix passes 2 and 3 and the exact-k write over keys already histogrammed (pass 1)."""
    grid = (programs,)
    warps = _warps(block)
    launcher(_hist2_kernel, probe)[grid](key, st, ctrl, n, chunk, *r, MODE=mode, BLOCK=block, num_warps=warps)
    launcher(_hist3_kernel, probe)[grid](key, st, ctrl, rows, n, chunk, *r, MODE=mode, BLOCK=block, num_warps=warps)
    launcher(_write_kernel, probe)[grid](
        key, st, ctrl, rows, sel, n, chunk, *r, MODE=mode, P_BLOCK=_p_block(programs), BLOCK=block, num_warps=warps,
    )


def _check_row_count(row_count: Optional[torch.Tensor], agg: int) -> None:
    if agg != 0 and row_count is None:
        raise ValueError("the seq-mean loss_agg_modes need row_count (Σ mask per sequence)")


def _loss_tail(weights: Optional[torch.Tensor], given, mult: float) -> Tuple[tuple, Optional[torch.Tensor], bool]:
    """The kernels' ``(den_hi, den_lo, den_mult)`` arguments, the given-denominator tensor (or
    None) and HAS_IW. A Python ``given`` travels as ``den_hi + den_lo``: 48 bits (Triton passes
    Python floats as fp32), exact for integer counts below 2**48 and rounded beyond that (e.g. a
    count / dp_size that is not an integer). ``mult`` is one fp32 word: exact for integer
    factors below 2**24 (verl's ``loss_scale_factor`` is an int)."""
    if isinstance(given, torch.Tensor):
        return (0.0, 0.0, float(mult)), given, weights is not None
    hi, lo, _ = split_ratio(float(given))
    return (hi, lo, float(mult)), None, weights is not None


def policy_loss(
    old_log_prob, log_prob, advantages, mask, selected, stats_, row_count: Optional[torch.Tensor], clip_mode: bool,
    agg: int, clip_low: float, clip_high: float, kl_coef: float, weights: Optional[torch.Tensor] = None,
    given=0.0, mult: float = 1.0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, metrics [2], coef [B, T])``; ``coef = ∂loss/∂log_prob``. ``agg, given, mult``:
    the reduction and denominator of ``reference.policy_loss.agg_normalization``; ``row_count``
    (Σ m per sequence, ``ops.cov_select.row_count``) is required by the seq-mean reductions
    (``agg`` 1, 2); ``weights``: per-token factors of the loss (verl's rollout_is_weights)."""
    _check_row_count(row_count, agg)
    den, den_t, has_iw = _loss_tail(weights, given, mult)
    b, t = log_prob.shape
    n = log_prob.numel()
    dev = log_prob.device
    acc64 = log_prob.dtype == torch.float64
    out_dt = torch.float64 if acc64 else torch.float32
    block = _block(n)
    programs, chunk = _grid(n, dev, block)
    part = torch.empty((programs, 8), dtype=torch.float64, device=dev)
    coef = torch.empty((b, t), dtype=out_dt, device=dev)
    loss = torch.empty((), dtype=out_dt, device=dev)
    metrics = torch.empty((2,), dtype=torch.float32, device=dev)
    launcher(_loss_kernel, log_prob)[(programs,)](
        old_log_prob, log_prob, advantages, mask, selected, stats_, row_count if row_count is not None else stats_,
        weights if has_iw else stats_, den_t if den_t is not None else stats_, coef, part, n, t, b, chunk, clip_low,
        clip_high, kl_coef, *den,
        CLIP=clip_mode, AGG=agg, HAS_IW=has_iw, DEN_PTR=den_t is not None, ACC64=acc64, BLOCK=block,
        num_warps=_warps(block),
    )
    launcher(_loss_combine_kernel, log_prob)[(1,)](
        part, programs, stats_, row_count if row_count is not None else stats_, den_t if den_t is not None else stats_,
        loss, metrics, b, *den, CLIP=clip_mode, AGG=agg, DEN_PTR=den_t is not None, P_BLOCK=_p_block(programs),
        num_warps=_warps(block),
    )
    return loss, metrics, coef


# ---- the fused (cooperative) launch --------------------------------------------------------------


class FusedLaunchUnavailable(RuntimeError):
    """The cooperative launch of the fused kernel failed on this device (e.g. fewer SMs usable
    than reported under MPS); callers fall back to one launch per phase."""


_FUSED_FAILED = set()  # CUDA device indices where the cooperative launch failed once


def fused_enabled(device: torch.device) -> bool:
    """Whether :func:`fused` may run on ``device``: CUDA (cooperative launch) or Triton's
    interpreter (one program, so the barriers are trivially met); ``EK_COV_FUSED=0`` turns it off.

    Example
    -------
    >>> fused_enabled(torch.device("cpu")) == config.CONFIG.cov_fused
    True
    """
    if not config.CONFIG.cov_fused:
        return False
    if device.type == "cuda":
        return device.index not in _FUSED_FAILED
    return device.type == "cpu"


def _fused_grid(n: int, device: torch.device, block: int) -> Tuple[int, int]:
    """At most one program per SM, so that a cooperative launch always fits (one program of any
    launchable kernel fits on an SM); one program under the interpreter, which runs programs one
    after another and would wait forever at a barrier."""
    programs = sm_count(device) if device.type == "cuda" else 1
    return _grid_cached(n, programs, block)


def _fused_scratch(n: int, programs: int, dev: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """The fused kernel's zeroed control block (histograms, eligible count, barrier counters) and
    its int32 scratch: ``n`` keys, then one 1024-bin tie row per program."""
    ctrl = torch.zeros((CTRL_FUSED_SIZE,), dtype=torch.int32, device=dev)
    return ctrl, torch.empty((n + programs * 1024,), dtype=torch.int32, device=dev)


def _launch_fused(programs: int, dev: torch.device, *args, **constexprs) -> None:
    """``_fused_kernel`` on ``programs`` programs: a cooperative launch on CUDA (a plain one
    under the interpreter); a refused launch raises :class:`FusedLaunchUnavailable`."""
    options = {"launch_cooperative_grid": True} if dev.type == "cuda" else {}
    try:
        _fused_kernel[(programs,)](*args, **constexprs, **options)
    except RuntimeError as e:  # pragma: no cover - depends on the device
        _refused(e, dev)


def fused(
    old_log_prob, log_prob, advantages, mask, row_count: Optional[torch.Tensor], clip_mode: bool, agg: int,
    ratio: float, clip_low: float, clip_high: float, lb: float, ub: float, kl_coef: float,
    seed: Optional[torch.Tensor], offset: Optional[torch.Tensor], weights: Optional[torch.Tensor] = None,
    given=0.0, mult: float = 1.0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The selection and the policy loss in one launch: ``(loss, metrics fp32 [3] = (pg_clipfrac,
    ppo_kl, pg_clipfrac_lower), n_selected int64 [], coef [B, T])``, ``coef = ∂loss/∂log_prob``;
    the same values as :func:`select` followed by :func:`policy_loss` (tests check it bit for bit).
    Raises :class:`FusedLaunchUnavailable` if the device refuses the cooperative launch."""
    _check_row_count(row_count, agg)
    den, den_t, has_iw = _loss_tail(weights, given, mult)
    b, t = log_prob.shape
    n = b * t
    dev = log_prob.device
    acc64 = log_prob.dtype == torch.float64
    out_dt = torch.float64 if acc64 else torch.float32
    block = _block(n)
    programs, chunk = _fused_grid(n, dev, block)
    part = torch.empty((programs + 1, 8), dtype=torch.float64, device=dev)  # last row: the statistics
    ctrl, scratch = _fused_scratch(n, programs, dev)
    sel = torch.empty((b, t), dtype=torch.bool, device=dev)
    coef = torch.empty((b, t), dtype=out_dt, device=dev)
    loss = torch.empty((), dtype=out_dt, device=dev)
    metrics = torch.empty((3,), dtype=torch.float32, device=dev)
    count = torch.empty((), dtype=torch.int64, device=dev)
    stats_ = part[programs]
    rows = scratch[n:]
    dummy = part
    _launch_fused(
        programs, dev,
        old_log_prob, log_prob, advantages, mask, seed if clip_mode else dummy,
        offset if clip_mode and offset is not None else dummy, row_count if row_count is not None else dummy,
        weights if has_iw else dummy, den_t if den_t is not None else dummy, part, stats_, ctrl, scratch, rows, sel,
        coef, loss, metrics, count, n, t, b, chunk, clip_low, clip_high, lb, ub, kl_coef, *split_ratio(ratio), *den,
        MODE=int(clip_mode), LOSS=True, AGG=agg, HAS_IW=has_iw, DEN_PTR=den_t is not None, ACC64=acc64, HAS_OFFSET=offset is not None,
        P_BLOCK=_p_block(programs), BLOCK=block, num_warps=_warps(block, FUSED_MAX_WARPS),
    )
    return loss, metrics, count, coef


def select_fused(
    log_prob, advantages, mask, old_log_prob: Optional[torch.Tensor], clip_mode: bool, ratio: float,
    clip_low: float, clip_high: float, lb: float, ub: float, seed: Optional[torch.Tensor], offset: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`select` in one cooperative launch (after the memset of the control block): the
    same ``(selected bool [B, T], stats fp64 [4])``. Raises :class:`FusedLaunchUnavailable` if
    the device refuses the cooperative launch."""
    n = log_prob.numel()
    dev = log_prob.device
    block = _block(n)
    programs, chunk = _fused_grid(n, dev, block)
    part = torch.empty((programs + 1, 8), dtype=torch.float64, device=dev)  # last row: the statistics
    ctrl, scratch = _fused_scratch(n, programs, dev)
    sel = torch.empty(log_prob.shape, dtype=torch.bool, device=dev)
    stats_ = part[programs]
    _launch_fused(
        programs, dev,
        old_log_prob if clip_mode else log_prob, log_prob, advantages, mask, seed if clip_mode else part,
        offset if clip_mode and offset is not None else part, part, part, part,
        part, stats_, ctrl, scratch, scratch[n:], sel, part, part, part, part,
        n, 1, 1, chunk, clip_low, clip_high, lb, ub, 0.0, *split_ratio(ratio), 0.0, 0.0, 1.0,
        MODE=int(clip_mode), LOSS=False, AGG=0, HAS_IW=False, DEN_PTR=False, ACC64=log_prob.dtype == torch.float64, HAS_OFFSET=offset is not None,
        P_BLOCK=_p_block(programs), BLOCK=block, num_warps=_warps(block, FUSED_MAX_WARPS),
    )
    return sel, stats_[:N_STATS]


def _refused(error: RuntimeError, device: torch.device) -> None:
    """Re-raise a failed cooperative launch as :class:`FusedLaunchUnavailable` (and remember the
    device), any other error as it is."""
    text = str(error).lower()
    if device.type != "cuda" or not any(s in text for s in ("cooperative", "too large", "not supported")):
        raise error
    _FUSED_FAILED.add(device.index)
    raise FusedLaunchUnavailable(str(error)) from error


# ---- top values (high_entropy_mask): the same radix select, keyed by the values themselves ----------


def top_values(values: torch.Tensor, mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """Bool mask (``values``' shape) of the ``max(1, ceil(ρ·#valid − 1e-9))`` valid (``mask != 0``)
    entries of largest ``float32(values)``, ties → lower flat index, NaN lowest; four launches
    (keys + histogram, two radix passes, the write) after a memset. Contiguous inputs."""
    n = values.numel()
    dev = values.device
    block = _block(n)
    programs, chunk = _grid(n, dev, block)
    ctrl = torch.zeros((CTRL_SIZE,), dtype=torch.int32, device=dev)
    key = torch.empty((n,), dtype=torch.int32, device=dev)
    rows = torch.empty((programs, 1024), dtype=torch.int32, device=dev)
    sel = torch.empty(values.shape, dtype=torch.bool, device=dev)
    r = split_ratio(ratio)
    launcher(_keys_kernel, values)[(programs,)](
        values, values, mask, values, ctrl, programs, ctrl, key, ctrl, ctrl, ctrl, n, chunk, 0.0, 0.0, 0.0, 0.0,
        MODE=2, HIST=True, KEY64=False, ACC64=False, HAS_OFFSET=False, P_BLOCK=_p_block(programs), BLOCK=block,
        num_warps=_warps(block),
    )
    _radix_select_launches(values, key, ctrl, ctrl, rows, sel, n, chunk, r, 2, programs, block)
    return sel


def top_values_fused(values: torch.Tensor, mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """:func:`top_values` in one cooperative launch (after the memset); raises
    :class:`FusedLaunchUnavailable` if the device refuses it."""
    n = values.numel()
    dev = values.device
    block = _block(n)
    programs, chunk = _fused_grid(n, dev, block)
    ctrl, scratch = _fused_scratch(n, programs, dev)
    sel = torch.empty(values.shape, dtype=torch.bool, device=dev)
    _launch_fused(
        programs, dev,
        values, values, values, mask, ctrl, ctrl, ctrl, ctrl, ctrl, ctrl, ctrl, ctrl, scratch, scratch[n:], sel, ctrl,
        ctrl, ctrl, ctrl, n, 1, 1, chunk, 0.0, 0.0, 0.0, 0.0, 0.0, *split_ratio(ratio), 0.0, 0.0, 1.0,
        MODE=2, LOSS=False, AGG=0, HAS_IW=False, DEN_PTR=False, ACC64=False, HAS_OFFSET=False, P_BLOCK=_p_block(programs), BLOCK=block,
        num_warps=_warps(block, FUSED_MAX_WARPS),
    )
    return sel
