"""Vocabulary-parallel (tensor-parallel LM head) statistics over ``torch.distributed``.

Each rank of ``process_group`` holds a contiguous shard ``W[o_r : o_r + V_r]`` of the LM head
(uneven shards allowed); targets are global ids. Per token every rank computes its local
linear-softmax stats ``(lse_r, H_r, Σz_r, z_y,r)`` with the single-device op (targets outside the
shard contribute ``z_y = 0``), and the global ones follow from two collectives of O(N) floats:

    M   = max_r lse_r                                  (all-reduce MAX, no gradient needed)
    S   = Σ_r e^{lse_r − M},  lse = M + log S
    E_p z = Σ_r e^{lse_r − M} (lse_r − H_r) / S,  H = lse − E_p z
    Σz  = Σ_r Σz_r,   z_y = Σ_r z_y,r                   (one all-reduce SUM of [N, 4])

Autograd: every rank computes the same global loss and calls backward, so the SUM all-reduce
passes gradients through unchanged (identity backward); each rank's local op then yields its own
``dW`` shard and a partial ``dh``, which the identity-forward / all-reduce-backward wrapper on
``h`` sums over ranks — the full ``dh`` on every rank, as in Megatron's tensor-parallel regions.
Per call: 3 small collectives in the forward (shard sizes, MAX, SUM of [N, 4]) and one
all-reduce of ``dh [N, D]`` in the backward; nothing scales with V.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.distributed as dist

from .. import _validation
from .linear_head_args import LinearSoftmaxOptions
from .linear_softmax import linear_softmax_stats


class _AllReduceSumSameLoss(torch.autograd.Function):
    """Forward: SUM over the group. Backward: identity (every rank holds the same loss)."""

    @staticmethod
    def forward(ctx, x, group):
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _CopyToGroup(torch.autograd.Function):
    """Forward: identity. Backward: SUM of the ranks' partial gradients."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def shard_layout(local_vocab: int, device: torch.device, group) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(offset, total)`` of this rank's contiguous vocabulary shard, as device tensors
    (from an all-gather of the shard sizes in rank order: no host synchronisation).

    Example
    -------
    >>> offset, total = shard_layout(w_local.shape[0], w_local.device, group)  # doctest: +SKIP
    """
    world = dist.get_world_size(group)
    sizes = [torch.zeros((), dtype=torch.int64, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor(local_vocab, dtype=torch.int64, device=device), group=group)
    sizes = torch.stack(sizes)
    rank = dist.get_rank(group)
    return sizes[:rank].sum(), sizes.sum()


def vocab_parallel_stats(
    h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
    options: LinearSoftmaxOptions, targets_name: str = "targets",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Global ``[N, 4]`` stats (lse, entropy, Σz, z_y) over the vocabulary sharded across
    ``options.process_group``, and the total vocabulary size (a 0-dim int64 tensor).
    Differentiable (see the module docstring). On the CPU the targets are checked against the
    total vocabulary (``targets_name`` in the error), which only the collective knows.

    Example
    -------
    >>> opts = LinearSoftmaxOptions(process_group=group)  # doctest: +SKIP
    >>> stats, vocab = vocab_parallel_stats(h, w_shard, None, y, opts)  # doctest: +SKIP
    """
    group = options.process_group
    offset, total = shard_layout(weight.shape[0], h.device, group)
    if options.vocab_offset is not None:
        offset = torch.tensor(options.vocab_offset, dtype=torch.int64, device=h.device)
    local_targets = targets - offset  # ids outside [0, V_r) match no column of this shard
    local = linear_softmax_stats(_CopyToGroup.apply(h, group), weight, bias, local_targets, *options.fused_args())
    lse_r, h_r, sum_z_r, z_y_r = local.unbind(-1)
    m = lse_r.detach().clone()
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    w = torch.exp(lse_r - m)
    sums = _AllReduceSumSameLoss.apply(torch.stack([w, w * (lse_r - h_r), sum_z_r, z_y_r], dim=-1), group)
    lse = m + torch.log(sums[:, 0])
    entropy = lse - sums[:, 1] / sums[:, 0]
    if targets.device.type == "cpu":
        _validation.check_class_indices(targets_name, targets, int(total), options.ignore_index)
    return torch.stack([lse, entropy, sums[:, 2], sums[:, 3]], dim=-1), total
