"""Triton kernel of Top-H selection and sampling, without sorting the vocabulary.
Semantics: :mod:`entropy_kernels.reference.top_h`.

One program per row:

1. **Stats + radix select.** Logits ``z = x / T`` map to order-preserving 32-bit keys. Pass 1
   computes the online softmax stats (max, Σe^{z−m}, Σ(z−m)e^{z−m} → lse and H(p)) *and* a
   2048-bin histogram of the keys' top 11 bits; two more histogram passes (11 and 10 bits,
   restricted to the chosen prefix) pin down the exact key of the n-th largest logit
   (``n = top_n`` for the transformers rule, ``CAND`` candidates for the exact rule).
2. **Compaction.** Pass 4 writes the n candidates (ties at the threshold by lower index) as
   packed (key, index) words to a small scratch row; they are sorted in registers (bitonic
   ``tl.sort`` of ``CAND`` ≤ 1024 elements, not of the vocabulary).
3. **Rule.** transformers: softmax over the candidates, cumulative ``−q log q`` against
   ``α·H(q)``. exact: global ``p`` from the pass-1 lse, prefix entropies ``H_k`` against
   ``α·H(p)``. If every candidate is kept and the vocabulary is larger (a very flat row or α≈1),
   a bisection over the key space finds the exact threshold with masked reductions (rare path).
4. **Output.** Kept tokens are flagged in a zero-initialised mask; sampling is Gumbel-max over
   the kept set (Philox noise keyed by (seed + row, offset + token)), so it needs no
   normalisation pass and no host synchronisation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._launch import next_pow2
from ._online import online_softmax_update



@triton.jit
def _keys(x_row, cols, ok, inv_temp):
    """(z, u): scaled logits and their order-preserving keys in [0, 2^32) as int64."""
    z = tl.load(x_row + cols, mask=ok, other=float("-inf")).to(tl.float32) * inv_temp
    z = tl.where(z != z, float("-inf"), z)  # NaN counts as -inf
    b = z.to(tl.int32, bitcast=True)
    k = tl.where(b < 0, b ^ 0x7FFFFFFF, b)
    return z, k.to(tl.int64) + 2147483648


@triton.jit
def _key_to_float(u):
    k = (u - 2147483648).to(tl.int32)
    b = tl.where(k < 0, k ^ 0x7FFFFFFF, k)
    return b.to(tl.float32, bitcast=True)


@triton.jit
def _pick_digit(hist, need, NB: tl.constexpr):
    """Largest digit d whose count of keys with digit >= d reaches `need`; and the count above d."""
    bins = tl.arange(0, NB)
    at_least = tl.cumsum(hist, 0, reverse=True)
    d = tl.max(tl.where(at_least >= need, bins, -1), 0)
    above = tl.sum(tl.where(bins == d, at_least - hist, 0), 0)
    return d, above


@triton.jit
def _gumbel_scores(z, kept, token, row, seed_ptr, offset_ptr):
    """z + Gumbel noise for kept tokens (-inf elsewhere): argmax samples ∝ exp(z) over the kept
    set. Philox noise keyed by (seed + row, offset + token), so a token gets the same noise
    whichever path (candidates or full row) looks at it."""
    seed = tl.load(seed_ptr)
    offset = tl.load(offset_ptr).to(tl.int32)
    noise = tl.maximum(tl.rand(seed + row, offset + token), 1e-30)
    return tl.where(kept, z - tl.log(-tl.log(noise)), float("-inf"))


@triton.jit
def _prefix_entropy(x_row, n_cols, inv_temp, t, lse, BLOCK: tl.constexpr):
    """Entropy of p renormalised over the tokens whose key >= t."""
    s = tl.zeros((BLOCK,), tl.float32)
    pl = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        z, u = _keys(x_row, cols, cols < n_cols, inv_temp)
        logp = z - lse
        p = tl.where(u >= t, tl.exp(logp), 0.0)
        s += p
        pl += tl.where(p > 0, p * logp, 0.0)
    s_tot = tl.sum(s, 0)
    return tl.log(s_tot) - tl.sum(pl, 0) / s_tot


@triton.jit
def _top_h_kernel(
    x_ptr, stride_row, n_cols, alpha_ptr, inv_temp, seed_ptr, offset_ptr,
    mask_ptr, sample_ptr, scratch_ptr, n_select,
    EXACT: tl.constexpr, WRITE_MASK: tl.constexpr, SAMPLE: tl.constexpr,
    CAND: tl.constexpr, BLOCK: tl.constexpr,
):
    inv_temp = tl.cast(inv_temp, tl.float32)  # a Python float arrives as fp64 from inductor
    row = tl.program_id(0)
    x_row = x_ptr + row.to(tl.int64) * stride_row
    alpha = tl.load(alpha_ptr + row).to(tl.float32)
    offs = tl.arange(0, BLOCK)

    # ---- pass 1: softmax stats and the histogram of the keys' top 11 bits
    m = tl.full((), float("-inf"), tl.float32)
    s_vec = tl.zeros((BLOCK,), tl.float32)
    u_vec = tl.zeros((BLOCK,), tl.float32)
    hist = tl.zeros((2048,), tl.int32)
    for start in range(0, n_cols, BLOCK):
        cols = start + offs
        ok = cols < n_cols
        z, u = _keys(x_row, cols, ok, inv_temp)
        hist += tl.histogram((u >> 21).to(tl.int32), 2048, mask=ok)
        m, s_vec, u_vec = online_softmax_update(m, s_vec, u_vec, z)
    s_tot = tl.sum(s_vec, 0)
    lse = m + tl.log(s_tot)
    entropy = tl.log(s_tot) - tl.sum(u_vec, 0) / s_tot

    # ---- passes 2-3: radix select of the n-th largest key (11 + 11 + 10 bits)
    need = n_select
    d1, above = _pick_digit(hist, need, 2048)
    need -= above
    hist = tl.zeros((2048,), tl.int32)
    for start in range(0, n_cols, BLOCK):
        cols = start + offs
        ok = cols < n_cols
        _, u = _keys(x_row, cols, ok, inv_temp)
        hist += tl.histogram(((u >> 10) & 2047).to(tl.int32), 2048, mask=ok & ((u >> 21) == d1))
    d2, above = _pick_digit(hist, need, 2048)
    need -= above
    prefix = d1.to(tl.int64) * 2048 + d2  # int64: the key needs 32 bits
    hist3 = tl.zeros((1024,), tl.int32)
    for start in range(0, n_cols, BLOCK):
        cols = start + offs
        ok = cols < n_cols
        _, u = _keys(x_row, cols, ok, inv_temp)
        hist3 += tl.histogram((u & 1023).to(tl.int32), 1024, mask=ok & ((u >> 10) == prefix))
    d3, above = _pick_digit(hist3, need, 1024)
    need -= above  # how many keys equal to the threshold are selected (lowest indices first)
    thresh = prefix * 1024 + d3.to(tl.int64)

    # ---- pass 4: compact the n_select candidates as packed (key, index) words
    scratch = scratch_ptr + row.to(tl.int64) * CAND
    n_taken = 0
    n_ties = 0
    for start in range(0, n_cols, BLOCK):
        cols = start + offs
        ok = cols < n_cols
        _, u = _keys(x_row, cols, ok, inv_temp)
        tie = ok & (u == thresh)
        tie_rank = n_ties + tl.cumsum(tie.to(tl.int32), 0) - 1
        sel = ok & ((u > thresh) | (tie & (tie_rank < need)))
        slot = n_taken + tl.cumsum(sel.to(tl.int32), 0) - 1
        tl.store(scratch + slot, (u << 31) | (2147483647 - cols).to(tl.int64), mask=sel)
        n_taken += tl.sum(sel.to(tl.int32), 0)
        n_ties += tl.sum(tie.to(tl.int32), 0)

    # ---- the rule, on the sorted candidates (in registers)
    pos = tl.arange(0, CAND)
    valid = pos < n_select
    packed = tl.sort(tl.load(scratch + pos, mask=valid, other=-1), 0, descending=True)
    idx = (2147483647 - (packed & 2147483647)).to(tl.int32)
    z = tl.where(valid, _key_to_float(packed >> 31), float("-inf"))
    if EXACT:
        # fp32 cannot order H_k and α·H(p) closer than ~1e-6: a 1e-5 relative slack makes α = 1
        # keep the whole vocabulary instead of losing tokens to rounding.
        tau = alpha * entropy * (1.0 + 1e-5)
        logp = z - lse
        p = tl.where(valid, tl.exp(logp), 0.0)
        s_k = tl.cumsum(p, 0)
        t_k = tl.cumsum(tl.where(p > 0, p * logp, 0.0), 0)
        ok_k = (((tl.log(s_k) - t_k / s_k) <= tau) & (z > float("-inf"))) | (pos == 0)
        n_keep = tl.min(tl.where(valid & ~ok_k, pos, n_select), 0)
        keep = pos < n_keep
        overflow = (n_keep == n_select) & (n_select < n_cols)
    else:
        z0 = tl.max(z, 0)
        e = tl.where(valid, tl.exp(z - z0), 0.0)
        log_q = z - z0 - tl.log(tl.sum(e, 0))
        q = e / tl.sum(e, 0)
        terms = tl.where(q > 0, -q * log_q, 0.0)
        tau = alpha * tl.sum(terms, 0)
        keep = valid & (((tl.cumsum(terms, 0) <= tau) & (q > 0)) | (pos == 0))
        overflow = False

    if not overflow:
        if WRITE_MASK:
            tl.store(mask_ptr + row.to(tl.int64) * n_cols + idx, 1, mask=keep)
        if SAMPLE:
            score = _gumbel_scores(z, keep, idx, row, seed_ptr, offset_ptr)
            best = tl.argmax(score, 0)
            tl.store(sample_ptr + row, tl.sum(tl.where(pos == best, idx, 0), 0).to(tl.int64))
    else:
        # Exact rule, every candidate kept: bisect the key space below the last candidate for
        # the smallest key t whose set {key >= t} still has renormalised entropy <= α·H(p).
        lo = tl.zeros((), tl.int64)
        hi = thresh
        while lo < hi:
            mid = lo + (hi - lo) // 2
            if _prefix_entropy(x_row, n_cols, inv_temp, mid, lse, BLOCK) <= tau:
                hi = mid
            else:
                lo = mid + 1
        best_score = tl.full((), float("-inf"), tl.float32)
        best_idx = tl.zeros((), tl.int32)
        for start in range(0, n_cols, BLOCK):
            cols = start + offs
            ok = cols < n_cols
            zb, u = _keys(x_row, cols, ok, inv_temp)
            kept = ok & (u >= hi) & (zb > float("-inf"))
            if WRITE_MASK:
                tl.store(mask_ptr + row.to(tl.int64) * n_cols + cols, 1, mask=kept)
            if SAMPLE:
                score = _gumbel_scores(zb, kept, cols, row, seed_ptr, offset_ptr)
                blk_best = tl.max(score, 0)
                blk_idx = start + tl.argmax(score, 0)
                better = blk_best > best_score
                best_idx = tl.where(better, blk_idx, best_idx)
                best_score = tl.where(better, blk_best, best_score)
        if SAMPLE:
            tl.store(sample_ptr + row, best_idx.to(tl.int64))


def top_h(
    logits: torch.Tensor,
    alpha: torch.Tensor,
    temperature: float,
    exact: bool,
    top_n: int,
    write_mask: bool,
    seed: torch.Tensor,
    offset: torch.Tensor,
    *,
    block: int = 0,
):
    """Launch the kernel on ``logits [B, V]`` (last dim contiguous). Returns ``(mask, samples)``:
    a bool ``[B, V]`` mask (``[0, 0]`` if not requested) and int64 ``[B]`` samples (``[0]`` if no
    ``seed``: a 1-element int64 tensor; ``offset`` likewise).

    Example
    -------
    >>> mask, _ = top_h(logits, alpha, 1.0, False, 100, True, None, None)  # doctest: +SKIP
    """
    b, v = logits.shape
    n_select = min(v, 1024) if exact else min(v, top_n)
    cand = max(16, next_pow2(n_select))
    block = block or (4096 if logits.element_size() <= 2 else 2048)
    block = min(block, max(16, next_pow2(v)))
    mask = torch.zeros((b, v) if write_mask else (0, 0), dtype=torch.uint8, device=logits.device)
    sample = seed is not None
    samples = torch.empty((b if sample else 0,), dtype=torch.int64, device=logits.device)
    if b == 0:
        return mask.bool(), samples
    scratch = torch.empty((b, cand), dtype=torch.int64, device=logits.device)
    dummy = scratch
    wrap_triton(_top_h_kernel)[(b,)](
        logits, logits.stride(0), v, alpha, 1.0 / temperature,
        seed if sample else dummy, offset if sample else dummy,
        mask if write_mask else dummy, samples if sample else dummy, scratch, n_select,
        EXACT=exact, WRITE_MASK=write_mask, SAMPLE=sample, CAND=cand, BLOCK=block,
        num_warps=8,
    )
    return mask.bool(), samples
