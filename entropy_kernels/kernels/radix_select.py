"""The radix select of the ``k``-th largest 32-bit key over a flat ``[N]`` array of keys, and the
exact-``k`` write of the selection: the Triton pieces shared by Clip-Cov, KL-Cov and
``high_entropy_mask`` (:mod:`.cov_phases` makes their keys) and by Top-H (:func:`_pick_digit`).

The keys are held as int64 in ``[0, 2**32)`` (0 = never selected) and stored as int32 (``key -
2**31``). Three digits of 11 + 11 + 10 bits, most significant first: the key phase adds its
histogram of the top 11 bits to the control block, :func:`_hist2_phase` and :func:`_hist3_phase`
the histograms of the next digits over the keys that still match the chosen prefix, and
:func:`_write_phase` selects ``key > t`` or (``key == t`` and among the first ``need`` such keys
in flat order) -- exactly ``k`` keys, ties broken by the lower flat index. ``P`` programs each
own a contiguous chunk, so "earlier program" means "lower flat index"; pass 3 also stores each
program's histogram row of the last digit, from which the writer counts the ties in earlier
programs.

``k`` never leaves the device: every phase recomputes it (:func:`_k_eff`) from the statistics
and the ratio, which travels as three fp32 words (:func:`split_ratio`).
"""

from __future__ import annotations

import functools
from typing import Dict, Tuple

import triton
import triton.language as tl

# control block (int32): [0] eligible count, then the three radix histograms
H1 = tl.constexpr(16)
H2 = tl.constexpr(16 + 2048)
H3 = tl.constexpr(16 + 4096)
CTRL_SIZE = 16 + 4096 + 1024
CTRL_POW2 = tl.constexpr(8192)
# what the keys rank (the MODE constexpr of the selection phases)
KL_COV = tl.constexpr(0)  # the covariance (A − mean A)·(lp − mean lp)
CLIP_COV = tl.constexpr(1)  # random keys on the eligible tokens
TOP_VALUES = tl.constexpr(2)  # the value itself (high_entropy_mask); no statistics pass
TWO31 = tl.constexpr(2147483648)


@functools.lru_cache(maxsize=64)
def split_ratio(ratio: float) -> Tuple[float, float, float]:
    """A float64 as three float32 words whose exact sum is the float64 (the kernels rebuild it
    in fp64, so ``int(n·ρ)`` on the device equals Python's).

    Example
    -------
    >>> hi, mid, lo = split_ratio(0.1)
    >>> hi + mid + lo == 0.1, hi
    (True, 0.10000000149011612)
    """
    import numpy as np

    hi = float(np.float32(ratio))
    mid = float(np.float32(ratio - hi))
    lo = float(np.float32(ratio - hi - mid))
    return hi, mid, lo


def ratio_args(ratio: float) -> Dict[str, float]:
    """The phases' ``r_hi, r_mid, r_lo`` arguments: the selection ratio as :func:`split_ratio`'s
    three fp32 words.

    Example
    -------
    >>> ratio_args(0.5)
    {'r_hi': 0.5, 'r_mid': 0.0, 'r_lo': 0.0}
    """
    r_hi, r_mid, r_lo = split_ratio(ratio)
    return {"r_hi": r_hi, "r_mid": r_mid, "r_lo": r_lo}


# Every read of data that *other* programs wrote (histograms, tie rows, the eligible count, the
# statistics) is a volatile load: in the one-launch kernel those values arrive through a grid
# barrier, and a volatile load goes to L2 instead of a possibly stale L1 line.


@triton.jit
def _pick_digit(hist, need, NB: tl.constexpr):
    """Largest digit d whose count of keys with digit >= d reaches `need`; and the count above d."""
    bins = tl.arange(0, NB)
    at_least = tl.cumsum(hist, 0, reverse=True)
    d = tl.max(tl.where(at_least >= need, bins, -1), 0)
    above = tl.sum(tl.where(bins == d, at_least - hist, 0), 0)
    return d, above


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
def _load_keys(key_ptr, idx, ok):
    return tl.load(key_ptr + idx, mask=ok, other=-TWO31).to(tl.int64) + TWO31


@triton.jit
def _prefix22(ctrl_ptr, need):
    d1, above = _pick_digit(_histogram(ctrl_ptr, H1, 2048), need, 2048)
    need -= above
    d2, above = _pick_digit(_histogram(ctrl_ptr, H2, 2048), need, 2048)
    need -= above
    return d1.to(tl.int64) * 2048 + d2, need


@triton.jit
def _digit_histogram(key_ptr, N, chunk, prefix, LOW: tl.constexpr, BITS: tl.constexpr, BLOCK: tl.constexpr):
    """This program's histogram of the digit ``(key >> LOW) & (2**BITS - 1)`` over its chunk's
    keys whose bits above that digit equal ``prefix``."""
    NB: tl.constexpr = 1 << BITS
    base = tl.program_id(0).to(tl.int64) * chunk
    offs = tl.arange(0, BLOCK)
    hist = tl.zeros((NB,), tl.int32)
    for start in range(0, chunk, BLOCK):
        idx = base + start + offs
        ok = idx < N
        u = _load_keys(key_ptr, idx, ok)
        hist += tl.histogram(((u >> LOW) & (NB - 1)).to(tl.int32), NB, mask=ok & ((u >> (LOW + BITS)) == prefix))
    return hist


# ---- the passes after the keys: each program works on its chunk [pid·chunk, (pid+1)·chunk) -------


@triton.jit
def _hist2_phase(key_ptr, stats_ptr, ctrl_ptr, N, chunk, r_hi, r_mid, r_lo, MODE: tl.constexpr, BLOCK: tl.constexpr):
    need = _k_eff(stats_ptr, ctrl_ptr, r_hi, r_mid, r_lo, MODE)
    d1, _ = _pick_digit(_histogram(ctrl_ptr, H1, 2048), need, 2048)
    hist = _digit_histogram(key_ptr, N, chunk, d1, 10, 11, BLOCK)
    bins = tl.arange(0, 2048)
    tl.atomic_add(ctrl_ptr + H2 + bins, hist, mask=hist > 0)


@triton.jit
def _hist3_phase(key_ptr, stats_ptr, ctrl_ptr, rows_ptr, N, chunk, r_hi, r_mid, r_lo, MODE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    need = _k_eff(stats_ptr, ctrl_ptr, r_hi, r_mid, r_lo, MODE)
    prefix, _ = _prefix22(ctrl_ptr, need)
    hist = _digit_histogram(key_ptr, N, chunk, prefix, 0, 10, BLOCK)
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
