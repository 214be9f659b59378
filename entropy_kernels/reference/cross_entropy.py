"""Reference math of the cut cross-entropy (SPEC §2.1), written with plain torch autograd.

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
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
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
    lse = torch.logsumexp(z, dim=-1)
    valid = targets != ignore_index
    z_y = z.gather(-1, torch.where(valid, targets, 0).clamp(0, z.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)
    stats = torch.stack([lse, torch.zeros_like(lse), z.sum(-1), z_y], dim=-1)
    per_token = token_losses_from_stats(stats, targets, z.shape[-1], ignore_index, label_smoothing, z_loss)
    return reduce_losses(per_token, valid, reduction), lse


def ce_chunk_grad_reference(
    logits: torch.Tensor, targets: torch.Tensor, token_weight: torch.Tensor,
    softcap: float, label_smoothing: float, z_loss: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(dz, stats)`` for one chunk of raw logits: the math of the chunked impl's row kernel.

    Example
    -------
    >>> dz, stats = ce_chunk_grad_reference(torch.zeros(1, 4), torch.tensor([2]), torch.ones(1), 0.0, 0.0, 0.0)
    >>> dz
    tensor([[ 0.2500,  0.2500, -0.7500,  0.2500]])
    """
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    raw = logits.to(acc)
    z = softcap * torch.tanh(raw / softcap) if softcap > 0 else raw
    vocab = z.shape[-1]
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    p = torch.exp(z - lse)
    in_range = ((targets >= 0) & (targets < vocab)).unsqueeze(-1)
    index = targets.clamp(0, vocab - 1).unsqueeze(-1)
    w = token_weight.to(acc).unsqueeze(-1)
    dz = p * w * (1 + 2 * z_loss * lse) - w * label_smoothing / vocab
    dz.scatter_add_(1, index, -w * (1 - label_smoothing) * in_range)
    if softcap > 0:
        dz = dz * (1 - (z / softcap) ** 2)
    entropy = lse.squeeze(-1) - (p * z).sum(-1)
    z_y = (z.gather(1, index) * in_range).squeeze(-1)
    stats = torch.stack([lse.squeeze(-1), entropy, z.sum(-1), z_y], dim=-1)
    return dz.to(logits.dtype), stats
