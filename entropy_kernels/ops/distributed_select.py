"""Token selection over the concatenation of every data-parallel rank's tensor.

:func:`global_select_top` (``high_entropy_mask``): exact top-``k`` with constant-size
collectives and no host synchronisation. A radix select over 32-bit keys, one 8-bit digit per
pass from the most significant: each rank histograms the digit of its remaining candidates (a
256-bin ``scatter_add_``), the histograms are all-reduced, and every rank picks the same digit —
the one at which the count of larger keys reaches ``k``. After four passes every rank knows the
``k``-th largest key ``T``; keys above it are selected, and the ties at ``T`` are given to the
lowest global positions (rank order, then flattened index) from one all-gather of the ranks' tie
counts. So the result is bit for bit the single-process selection of the concatenated tensor,
whatever each rank's size, and the traffic is 4 × 256 int64 all-reduces plus one int64 per rank,
independent of the number of tokens.

:func:`global_cov_select` (Clip-Cov / KL-Cov with ``process_group``): global statistics, then
the ``k``-th largest of every rank's top candidates.
"""

from __future__ import annotations

from typing import Tuple

import torch

from ..selection_keys import clip_cov_count, kl_cov_count
from .cov_rule import CovRule

DIGIT_BITS = 8
_PASSES = tuple(range(32 - DIGIT_BITS, -1, -DIGIT_BITS))  # 24, 16, 8, 0


def _all_reduce(t: torch.Tensor, group) -> None:
    if group is not None:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)


def kth_largest_key(key: torch.Tensor, k: torch.Tensor, group=None):
    """``(T, remaining)``: the ``k``-th largest candidate key over all ranks (0-dim int64; ``2**32 - 1``
    when ``k`` is 0) and how many keys equal to ``T`` the top ``k`` still needs after every key
    above ``T``. ``k`` is clamped to the number of candidates. ``group=None``: this process only.

    Example
    -------
    >>> kth_largest_key(torch.tensor([5, 0, 9, 5, 7]), torch.tensor(3))
    (tensor(5), tensor(1))
    """
    flat = key.reshape(-1)
    device = flat.device
    candidate = flat > 0
    total = candidate.sum().reshape(1)
    _all_reduce(total, group)
    remaining = torch.minimum(k.to(device=device, dtype=torch.int64).reshape(()), total.reshape(()))
    prefix = torch.zeros((), dtype=torch.int64, device=device)
    bins = torch.arange(1 << DIGIT_BITS, device=device, dtype=torch.int64)
    for shift in _PASSES:
        digit = (flat >> shift) & ((1 << DIGIT_BITS) - 1)
        hist = torch.zeros(1 << DIGIT_BITS, dtype=torch.int64, device=device)
        hist.scatter_add_(0, digit, candidate.to(torch.int64))
        _all_reduce(hist, group)
        at_or_above = hist.flip(0).cumsum(0).flip(0)  # [d]: candidates whose digit is >= d
        # the largest digit at which the count from the top reaches what is still needed
        chosen = torch.where(at_or_above >= remaining, bins, 0).max()
        remaining = remaining - (at_or_above[chosen] - hist[chosen])
        prefix = prefix | (chosen << shift)
        candidate = candidate & (digit == chosen)
    # with k = 0 no digit is short, so the prefix ends at 2**32 - 1, above every key
    return prefix, remaining


def key_value(key: torch.Tensor) -> torch.Tensor:
    """The float32 value of a key of ``selection_keys.float_key`` (its inverse on non-NaN).

    Example
    -------
    >>> from entropy_kernels.selection_keys import float_key
    >>> key_value(float_key(torch.tensor([-2.5, 0.0, 3.25])))
    tensor([-2.5000,  0.0000,  3.2500])
    """
    b = key.to(torch.int64) - 2**31
    b = torch.where(b < 0, b ^ 0x7FFFFFFF, b)
    return b.to(torch.int32).view(torch.float32)


def global_select_top(key: torch.Tensor, k: torch.Tensor, group) -> torch.Tensor:
    """Bool mask (``key``'s shape) of this rank's part of the ``k`` largest keys over all ranks.

    Parameters
    ----------
    key : int64 Tensor ``[...]``; candidates have keys in ``[1, 2**32)``, ``0`` marks a
        non-candidate (as :func:`entropy_kernels.selection_keys.float_key` makes them).
    k : 0-dim int64 Tensor on ``key``'s device: the global count (clamped to the number of
        candidates); the same on every rank.
    group : a ``torch.distributed`` process group (every rank calls this together).

    Ties at the threshold go to the lower global position: rank 0's elements first, each rank's
    in flattened order — exactly ``select_top`` of the ranks' tensors concatenated.

    Example
    -------
    >>> import torch, torch.distributed as dist, tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "init")
    >>> dist.init_process_group("gloo", init_method=f"file://{f}", rank=0, world_size=1)
    >>> global_select_top(torch.tensor([5, 0, 9, 5, 7]), torch.tensor(3), dist.group.WORLD)
    tensor([ True, False,  True, False,  True])
    >>> dist.destroy_process_group()
    """
    import torch.distributed as dist

    flat = key.reshape(-1)
    prefix, remaining = kth_largest_key(flat, k, group)
    ties = (flat == prefix) & (flat > 0)
    tie_count = ties.sum().reshape(1)
    counts = [torch.empty_like(tie_count) for _ in range(dist.get_world_size(group))]
    dist.all_gather(counts, tie_count, group=group)
    before = torch.cat(counts[: dist.get_rank(group)] + [torch.zeros_like(tie_count)]).sum()
    allowed = torch.clamp(remaining - before, min=0)
    chosen_ties = ties & (torch.cumsum(ties.to(torch.int64), 0) <= allowed)
    return ((flat > prefix) | chosen_ties).reshape(key.shape)


# --------------------------------------------------------------------------------------------
# Clip-Cov / KL-Cov: the candidates' top-k over the ranks


def global_cov_select(
    log_prob, advantages, mask, old_log_prob, rule: CovRule, seed, offset, group
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Selection over the concatenation (rank order) of every rank's ``[B, T]`` batch.

    All-reduce of the 4 statistics (global means and counts); each rank's keys from the global
    means (Clip-Cov's random keys use ``offset + rank·N`` so they equal the single-process keys
    of the concatenated batch); each rank sends its top ``C`` candidates as composite
    ``key·2³¹ + (2³¹−1 − global index)`` (unique, so ties resolve by the lower global index);
    the ``k``-th largest of the gathered candidates is the global threshold. Exact when no
    rank holds more than ``C = min(N, max(1, int(ρ·N·world)))`` of the global selection, which
    holds when every rank passes the same ``[B, T]`` shape. Returns the local selection and the
    *local* statistics (the loss is aggregated per rank, as verl does). Every rank of ``group``
    calls it together (``clip_cov_select`` / ``kl_cov_select`` with ``process_group``).

    Example
    -------
    >>> import torch.distributed as dist, tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "init")
    >>> dist.init_process_group("gloo", init_method=f"file://{f}", rank=0, world_size=1)
    >>> lp = torch.tensor([[-1.0, -0.5, -3.0, -2.0]]); adv = torch.tensor([[1.0, 2.0, -1.0, 0.5]])
    >>> from entropy_kernels.ops.cov_rule import CovRule
    >>> sel, _ = global_cov_select(lp, adv, torch.ones(1, 4), None, CovRule.kl_cov(0.5), None, None, dist.group.WORLD)
    >>> sel
    tensor([[False,  True,  True, False]])
    >>> dist.destroy_process_group()
    """
    import torch.distributed as dist

    from . import cov_select as ops  # imports this module: the ops are looked up at call time

    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    n = log_prob.numel()
    local = ops.cov_stats(log_prob, advantages, mask)
    total = local.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    clip_mode, ratio = rule.clip_mode, rule.ratio
    if clip_mode:
        offset = offset + rank * n
    key = ops.cov_keys(log_prob, advantages, mask, old_log_prob, total, clip_mode, rule.clip_low, rule.clip_high, rule.lb,
                       rule.ub, seed, offset)
    flat = key.reshape(-1)
    gidx = torch.arange(n, device=flat.device, dtype=torch.int64) + rank * n
    composite = torch.where(flat > 0, flat * 2**31 + (2**31 - 1 - gidx), torch.zeros_like(flat))
    c = min(n, max(1, int(ratio * n * world)))
    cand = torch.topk(composite, c, sorted=True).values
    gathered = [torch.empty_like(cand) for _ in range(world)]
    dist.all_gather(gathered, cand, group=group)
    allc = torch.sort(torch.cat(gathered), descending=True).values
    if clip_mode:
        n_elig = (flat > 0).sum().to(torch.float64)
        dist.all_reduce(n_elig, op=dist.ReduceOp.SUM, group=group)
        k = torch.minimum(clip_cov_count(total, ratio), n_elig.long())
    else:
        k = kl_cov_count(total, ratio)
    k = torch.clamp(k, max=allc.numel())
    thresh = allc.gather(0, torch.clamp(k - 1, min=0).reshape(1)).reshape(())
    selected = (composite >= thresh) & (flat > 0) & (k > 0)
    return selected.reshape(log_prob.shape), local
