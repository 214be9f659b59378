"""Reference math for the entropy of a softmax over the last dimension.

With ``z = logits / T``, ``p = softmax(z)``, ``lse = logsumexp(z)``:

    H = -Σ_j p_j log p_j = lse - Σ_j p_j z_j
    ∂H/∂logits_j   = -p_j (log p_j + H) / T
    ∂lse/∂logits_j =  p_j / T

Masked entries (``-inf``) have ``p_j = 0`` and contribute 0 to H and to the gradients. A row in
which every entry is ``-inf`` has ``lse = -inf``, ``H = nan`` (as in torch) and zero gradient.
A row with a NaN or a ``+inf`` entry has no softmax (torch's is NaN there): ``H = lse = nan``
and a NaN gradient on its entries that are not ``-inf`` -- what the Triton kernels give, so
both paths agree (docs/nan-semantics.md).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _scaled(logits: torch.Tensor, row_temperature: Optional[torch.Tensor], temperature: float) -> torch.Tensor:
    z = logits.to(_acc_dtype(logits.dtype))
    if row_temperature is not None:
        return z / row_temperature.to(z.dtype).reshape(logits.shape[:-1]).unsqueeze(-1)
    return z / temperature


class _Shifted(NamedTuple):
    shifted: torch.Tensor  # z - rowmax (exact for nearby values: no cancellation at |z| ~ 1e4)
    max: torch.Tensor


def _shifted(z: torch.Tensor) -> _Shifted:
    row_max = z.amax(dim=-1)
    row_max = torch.where(torch.isneginf(row_max), torch.zeros_like(row_max), row_max)
    return _Shifted(z - row_max.unsqueeze(-1), row_max)


def entropy_forward_reference(
    logits: torch.Tensor, row_temperature: Optional[torch.Tensor] = None, temperature: float = 1.0
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entropy and log-sum-exp of ``softmax(logits / T)`` over the last dim.

    ``row_temperature`` (flattened ``[N]``, one per row) overrides the scalar ``temperature``.
    Returns ``(entropy, lse, stats)``: the first two with the leading shape of ``logits``, in
    fp32 (fp64 for fp64 input); ``stats[..., 2] = (m, log Σ exp(z - m))`` with ``m`` the row max
    of z (0 for a fully masked row) is what the backward needs: ``log p = (z - m) - log s`` keeps
    full precision where ``z - lse`` with a rounded fp32 ``lse`` would not (|z| ~ 1e4).

    Example
    -------
    >>> h, lse, _ = entropy_forward_reference(torch.zeros(2, 4))
    >>> torch.allclose(h, torch.log(torch.tensor(4.0)).expand(2))
    True
    """
    z = _shifted(_scaled(logits, row_temperature, temperature))
    lse_shifted = torch.logsumexp(z.shifted, dim=-1)
    lse = z.max + lse_shifted
    log_p = z.shifted - lse_shifted.unsqueeze(-1)
    p = log_p.exp()
    # p == 0 where z == -inf; define 0 * log 0 = 0 (without it: 0 * -inf = nan). Only exact
    # -inf log-probs are replaced: a NaN (from a NaN or +inf logit) must reach the sum.
    plogp = torch.where(torch.isneginf(log_p), torch.zeros_like(p), p * log_p)
    entropy = 0.0 - plogp.sum(dim=-1)  # not -sum: a one-token row would give -0.0
    all_masked = torch.isneginf(lse)
    entropy = torch.where(all_masked, torch.full_like(entropy, float("nan")), entropy)
    stats = torch.stack([z.max, lse_shifted], dim=-1)
    return entropy, lse, stats


def entropy_backward_reference(
    grad_entropy: torch.Tensor,
    grad_lse: torch.Tensor,
    logits: torch.Tensor,
    entropy: torch.Tensor,
    stats: torch.Tensor,
    row_temperature: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Gradient w.r.t. ``logits`` of ``Σ grad_entropy·H + grad_lse·lse`` (same dtype as logits).

    Example
    -------
    >>> x = torch.randn(3, 5)
    >>> h, lse, stats = entropy_forward_reference(x)
    >>> g = entropy_backward_reference(torch.ones(3), torch.zeros(3), x, h, stats)
    >>> g.shape
    torch.Size([3, 5])
    """
    scaled = _scaled(logits, row_temperature, temperature)
    z = _shifted(scaled)
    # masked entries are the -inf logits themselves: in a row with a +inf entry every shifted
    # value is -inf or NaN, and those entries must get the NaN gradient the kernel gives
    finite = ~torch.isneginf(scaled)
    log_p = z.shifted - stats[..., 1:]
    zeros = torch.zeros_like(z.shifted)
    p = torch.where(finite, log_p.exp(), zeros)
    coeff = grad_lse.unsqueeze(-1) - grad_entropy.unsqueeze(-1) * (torch.where(finite, log_p, zeros) + entropy.unsqueeze(-1))
    grad = torch.where(finite, p * coeff, zeros)
    if row_temperature is not None:
        grad = grad / row_temperature.to(grad.dtype).reshape(logits.shape[:-1]).unsqueeze(-1)
    else:
        grad = grad / temperature
    return grad.to(logits.dtype)
