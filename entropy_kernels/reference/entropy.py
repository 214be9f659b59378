"""Reference math for the entropy of a softmax over the last dimension.

With ``z = logits / T``, ``p = softmax(z)``, ``lse = logsumexp(z)``:

    H = -Σ_j p_j log p_j = lse - Σ_j p_j z_j
    ∂H/∂logits_j   = -p_j (log p_j + H) / T
    ∂lse/∂logits_j =  p_j / T

Masked entries (``-inf``) have ``p_j = 0`` and contribute 0 to H and to the gradients. A row in
which every entry is ``-inf`` has ``lse = -inf``, ``H = nan`` (as in torch) and zero gradient.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _scaled(logits: torch.Tensor, row_temperature: Optional[torch.Tensor], temperature: float) -> torch.Tensor:
    z = logits.to(_acc_dtype(logits.dtype))
    if row_temperature is not None:
        return z / row_temperature.to(z.dtype).reshape(logits.shape[:-1]).unsqueeze(-1)
    return z / temperature


def entropy_forward_reference(
    logits: torch.Tensor, row_temperature: Optional[torch.Tensor] = None, temperature: float = 1.0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Entropy and log-sum-exp of ``softmax(logits / T)`` over the last dim.

    ``row_temperature`` (flattened ``[N]``, one per row) overrides the scalar ``temperature``.
    Returns ``(entropy, lse)`` with the leading shape of ``logits``, in fp32 (fp64 for fp64 input).

    Example
    -------
    >>> h, lse = entropy_forward_reference(torch.zeros(2, 4))
    >>> torch.allclose(h, torch.log(torch.tensor(4.0)).expand(2))
    True
    """
    z = _scaled(logits, row_temperature, temperature)
    lse = torch.logsumexp(z, dim=-1)
    log_p = z - lse.unsqueeze(-1)
    p = log_p.exp()
    # p == 0 where z == -inf; define 0 * log 0 = 0 (without it: 0 * -inf = nan).
    plogp = torch.where(p > 0, p * log_p, torch.zeros_like(p))
    entropy = -plogp.sum(dim=-1)
    all_masked = torch.isneginf(lse)
    entropy = torch.where(all_masked, torch.full_like(entropy, float("nan")), entropy)
    return entropy, lse


def entropy_backward_reference(
    grad_entropy: torch.Tensor,
    grad_lse: torch.Tensor,
    logits: torch.Tensor,
    entropy: torch.Tensor,
    lse: torch.Tensor,
    row_temperature: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Gradient w.r.t. ``logits`` of ``Σ grad_entropy·H + grad_lse·lse`` (same dtype as logits).

    Example
    -------
    >>> x = torch.randn(3, 5)
    >>> h, lse = entropy_forward_reference(x)
    >>> g = entropy_backward_reference(torch.ones(3), torch.zeros(3), x, h, lse)
    >>> g.shape
    torch.Size([3, 5])
    """
    z = _scaled(logits, row_temperature, temperature)
    finite = ~torch.isneginf(z)
    log_p = z - lse.unsqueeze(-1)
    p = torch.where(finite, log_p.exp(), torch.zeros_like(z))
    coeff = grad_lse.unsqueeze(-1) - grad_entropy.unsqueeze(-1) * (torch.where(finite, log_p, torch.zeros_like(z)) + entropy.unsqueeze(-1))
    grad = torch.where(finite, p * coeff, torch.zeros_like(z))
    if row_temperature is not None:
        grad = grad / row_temperature.to(z.dtype).reshape(logits.shape[:-1]).unsqueeze(-1)
    else:
        grad = grad / temperature
    return grad.to(logits.dtype)
