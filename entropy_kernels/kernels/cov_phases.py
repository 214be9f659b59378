"""The statistics and key phases of the Clip-Cov / KL-Cov selection (and the key phase of
``high_entropy_mask``). Semantics: :mod:`entropy_kernels.reference.policy_loss`.

The ``[B, T]`` inputs are read as flat ``[N]`` arrays; ``P`` programs each own a contiguous
chunk (a multiple of ``BLOCK``).

1. :func:`_stats_phase`: per-program partial sums ``(Σ m·A, Σ m·lp, Σ m, #valid)`` in fp64, one
   row of 8 per program (a two-stage reduction: deterministic, no float atomics); program 0
   may also zero the control block (eligible count and three histograms).
2. :func:`_keys_phase`: every program adds up the partials (means), computes the per-token
   covariance and the 32-bit selection key (KL-Cov: the order-preserving bits of the fp32
   covariance; Clip-Cov: Philox random bits keyed by ``(seed, offset + index)`` on eligible
   tokens; top values: the value itself; 0 = never), stores the keys and adds its histogram
   of the keys' top 11 bits and its eligible count to the control block (integer atomics:
   deterministic).

The radix select over the keys is :mod:`.radix_select`; the loss, :mod:`.cov_policy_loss`;
all of them in one launch, :mod:`.cov_fused`. Each phase is a ``@triton.jit`` function that is
launchable on its own (torch.compile's ops, the global selection across ranks,
``EK_COV_FUSED=0``) and callable from the one-launch kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .radix_select import CLIP_COV, CTRL_POW2, H1, H3, TOP_VALUES, TWO31

N_STATS = 4  # the statistics: columns 0-3 of a program's row of partials


@triton.jit
def _sum_column(part_ptr, n_parts, COL: tl.constexpr, P_BLOCK: tl.constexpr):
    """Σ over ``n_parts`` rows (stride 8) of column ``COL`` of the per-program fp64 partials.
    Volatile loads: in the one-launch kernel the rows arrive through a grid barrier, and a
    volatile load goes to L2 instead of a possibly stale L1 line."""
    rows = tl.arange(0, P_BLOCK)
    acc = tl.zeros((P_BLOCK,), tl.float64)
    for start in range(0, n_parts, P_BLOCK):
        r = start + rows
        acc += tl.load(part_ptr + r * 8 + COL, mask=r < n_parts, other=0.0, volatile=True)
    return tl.sum(acc, 0)


@triton.jit
def _sum_stats(part_ptr, n_parts, P_BLOCK: tl.constexpr):
    """Σ over ``n_parts`` rows of the 4 fp64 statistics partials."""
    sa = _sum_column(part_ptr, n_parts, 0, P_BLOCK)
    sl = _sum_column(part_ptr, n_parts, 1, P_BLOCK)
    sm = _sum_column(part_ptr, n_parts, 2, P_BLOCK)
    sc = _sum_column(part_ptr, n_parts, 3, P_BLOCK)
    return sa, sl, sm, sc


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
