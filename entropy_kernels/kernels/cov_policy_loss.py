"""The Clip-Cov / KL-Cov policy loss given a selection, as Triton phases: :func:`_loss_phase`
(per-token loss, its derivative w.r.t. ``log_prob`` -- already scaled by the aggregation
weight, so the backward is one multiply -- and per-program partial sums in columns 4-6 of the
program's row of partials) and :func:`_combine_phase` (the loss and the metrics from those
partials). Both launch on their own and run inside the one-launch kernel (:mod:`.cov_fused`).
Semantics: ``cov_loss_parts_reference`` in :mod:`entropy_kernels.reference.policy_loss`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .cov_phases import _sum_column


@triton.jit
def _loss_phase(
    old_ptr, lp_ptr, adv_ptr, mask_ptr, sel_ptr, stats_ptr, rowcnt_ptr, iw_ptr, den_ptr, coef_ptr, part_ptr,
    N, T, B, chunk, clip_low, clip_high, kl_coef, den_hi, den_lo, den_mult,
    CLIP: tl.constexpr, AGG: tl.constexpr, HAS_IW: tl.constexpr, DEN_PTR: tl.constexpr, ACC64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Per-token loss and ``coef = ∂loss/∂lp``; partials (Σ w·loss, Σ m·kl, Σ m over the selected)
    in columns 4-6 of the program's row of ``part_ptr``. AGG (the reduction of
    ``loss_aggregation.agg_normalization``): 0 Σ over tokens, 1 Σ over sequences of the
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
    s_loss = _sum_column(part_ptr, n_parts, 4, P_BLOCK)
    s_kl = _sum_column(part_ptr, n_parts, 5, P_BLOCK)
    s_sel = _sum_column(part_ptr, n_parts, 6, P_BLOCK)
    sm = tl.load(stats_ptr + 2, volatile=True)
    den = tl.where(sm > 0, sm, 1.0)  # the metrics are local means, as verl logs them
    loss = s_loss / _loss_denominator(stats_ptr, rowcnt_ptr, den_ptr, B, den_hi, den_lo, den_mult, AGG, DEN_PTR, P_BLOCK)
    tl.store(loss_ptr, loss.to(loss_ptr.dtype.element_ty))
    if CLIP:
        tl.store(metrics_ptr + 0, (s_sel / den).to(metrics_ptr.dtype.element_ty))
    else:
        tl.store(metrics_ptr + 0, 0.0)
    tl.store(metrics_ptr + 1, (s_kl / den).to(metrics_ptr.dtype.element_ty))
