"""Reference math of the cut cross-entropy (docs/ops/cross-entropy.md), written with plain torch autograd.

Per token with logits ``z = cap(h Wᵀ + b)`` (``cap(x) = c·tanh(x/c)`` when softcapped):

    loss = lse - (1 - ε)·z_y - ε·mean_j z_j + s·lse²        (label smoothing ε, z-loss s)

ignored tokens (``targets == ignore_index``) contribute 0; ``mean`` divides by the number of
non-ignored tokens (``nan`` when there are none, like ``torch.nn.functional.cross_entropy``).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch


def token_losses_from_stats(
    stats: torch.Tensor, targets: torch.Tensor, vocab: int, ignore_index: int, label_smoothing: float, z_loss: float
) -> torch.Tensor:
    """Per-token loss from ``[N, 4]`` linear-softmax stats (lse, entropy, sum_z, z_y).

    Ignored tokens give 0; a target outside ``[0, V)`` that is not ``ignore_index`` gives nan.

    Example
    -------
    >>> stats = torch.tensor([[2.0, 0.0, 3.0, 1.5]])
    >>> token_losses_from_stats(stats, torch.tensor([0]), 10, -100, 0.0, 0.0)
    tensor([0.5000])
    """
    lse, _, sum_z, z_y = stats.unbind(-1)
    loss = lse - (1.0 - label_smoothing) * z_y
    if label_smoothing:
        loss = loss - label_smoothing * sum_z / vocab
    if z_loss:
        loss = loss + z_loss * lse * lse
    ignored = targets == ignore_index
    out_of_range = ~ignored & ((targets < 0) | (targets >= vocab))
    loss = torch.where(ignored, torch.zeros_like(loss), loss)
    return torch.where(out_of_range, torch.full_like(loss, float("nan")), loss)


def reduce_losses(per_token: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    """``none`` / ``sum`` / ``mean`` over valid tokens (count as a tensor: no host sync)."""
    if reduction == "none":
        return per_token
    total = per_token.sum()
    if reduction == "sum":
        return total
    return total / valid.sum().to(per_token.dtype)


def linear_cross_entropy_reference(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: Optional[torch.Tensor] = None,
    ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0, z_loss: float = 0.0,
    softcap: Optional[float] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(loss, lse)`` through full fp32 logits (``[N, V]``): readable, differentiable, memory-hungry.

    ``hidden [N, D]``, ``targets [N]`` (already shifted). Returns the reduced loss and ``lse [N]``.

    Example
    -------
    >>> h, w, y = torch.randn(4, 8), torch.randn(10, 8), torch.tensor([1, 2, -100, 9])
    >>> loss, lse = linear_cross_entropy_reference(h, w, y)
    >>> torch.allclose(loss, torch.nn.functional.cross_entropy(h @ w.T, y))
    True
    """
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    z = hidden.to(acc) @ weight.to(acc).T
    if bias is not None:
        z = z + bias.to(acc)
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    # logsumexp relative to a detached row max, as the kernels compute it: a row with a +inf
    # logit gets lse = nan (torch.logsumexp would give +inf and the loss +inf - z_y = +inf where
    # torch's cross_entropy and the kernels give nan); an all -inf row keeps lse = -inf.
    m = z.detach().amax(dim=-1, keepdim=True)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    lse = torch.logsumexp(z - m, dim=-1) + m.squeeze(-1)
    valid = targets != ignore_index
    z_y = z.gather(-1, torch.where(valid, targets, 0).clamp(0, z.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)
    stats = torch.stack([lse, torch.zeros_like(lse), z.sum(-1), z_y], dim=-1)
    per_token = token_losses_from_stats(stats, targets, z.shape[-1], ignore_index, label_smoothing, z_loss)
    return reduce_losses(per_token, valid, reduction), lse


def cross_entropy_grad_stats(
    stats: torch.Tensor, token_weight: torch.Tensor, vocab: int, label_smoothing: float, z_loss: float
) -> torch.Tensor:
    """Upstream gradients ``(g_lse, g_H, g_sum, g_y)`` of ``Σ_i w_i·loss_i`` w.r.t. the stats
    (see :mod:`.linear_softmax`): what the chunked impl feeds its row gradient kernel.

    Example
    -------
    >>> cross_entropy_grad_stats(torch.tensor([[1.0, 0, 0, 0]]), torch.ones(1), 10, 0.0, 0.0)
    tensor([[ 1.,  0., -0., -1.]])
    """
    w = token_weight.to(stats.dtype)
    g_lse = w * (1.0 + 2.0 * z_loss * stats[:, 0])
    return torch.stack([g_lse, torch.zeros_like(w), -w * label_smoothing / vocab, -w * (1.0 - label_smoothing)], dim=-1)
