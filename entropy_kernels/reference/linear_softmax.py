"""Reference math of the "linear softmax" core shared by the cut cross-entropy and the
vocabulary-entropy ops: statistics of ``softmax(z)`` with ``z = cap(h Wᵀ + b) / T`` computed per
token, and their backward, without any knowledge of the loss built on top.

Per token ``i`` the statistics are (``STATS`` columns):

    lse   = log Σ_j exp(z_j)
    H     = lse - Σ_j p_j z_j                  (entropy of p = softmax(z))
    sum_z = Σ_j z_j                             (label smoothing)
    z_y   = z_{y_i}                             (target logit; 0 for an out-of-range target)

Every loss of the package is a function of these four numbers, so its upstream gradients
``(g_lse, g_H, g_sum, g_y)`` define the logits gradient in one closed form:

    dz_j = p_j · (A + B·z_j) + C·[j = y] + D
    A = g_lse + g_H·(lse - H),  B = -g_H,  C = g_y,  D = g_sum

then ``d raw = dz / T · (1 - (cap(raw)/c)²)`` (softcap ``cap(x) = c·tanh(x/c)``),
``dh = d raw · W``, ``dW = d rawᵀ · h``, ``db = Σ_i d raw``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

STATS = ("lse", "entropy", "sum_z", "z_y")


def _logits(h, weight, bias, softcap, inv_temperature):
    """fp32 (fp64 for fp64 inputs) logits after bias, softcap and temperature; and the raw ones."""
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32
    raw = h.to(acc) @ weight.to(acc).T
    if bias is not None:
        raw = raw + bias.to(acc)
    capped = softcap * torch.tanh(raw / softcap) if softcap > 0 else raw
    return capped * inv_temperature, capped


def linear_softmax_stats_reference(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    targets: torch.Tensor,
    softcap: float = 0.0,
    inv_temperature: float = 1.0,
) -> torch.Tensor:
    """``[N, 4]`` statistics (lse, entropy, sum_z, z_y) of ``softmax(cap(h Wᵀ + b)·inv_T)``.

    ``h`` is ``[N, D]``, ``weight`` ``[V, D]``, ``targets`` ``[N]`` (any value; out-of-range
    targets get ``z_y = 0``). ``softcap <= 0`` means no softcap. fp32 out (fp64 for fp64 in).

    Example
    -------
    >>> s = linear_softmax_stats_reference(torch.zeros(2, 3), torch.zeros(5, 3), None, torch.tensor([0, 4]))
    >>> torch.allclose(s[:, 0], torch.log(torch.tensor(5.0)))       # lse of 5 equal logits
    True
    """
    z, _ = _logits(h, weight, bias, softcap, inv_temperature)
    lse = torch.logsumexp(z, dim=-1)
    p = torch.exp(z - lse.unsqueeze(-1))
    entropy = lse - (p * z).sum(-1)
    sum_z = z.sum(-1)
    in_range = (targets >= 0) & (targets < z.shape[-1])
    z_y = torch.where(in_range, z.gather(-1, targets.clamp(0, z.shape[-1] - 1).unsqueeze(-1)).squeeze(-1), 0.0)
    return torch.stack([lse, entropy, sum_z, z_y], dim=-1)


def logits_grad_coefficients(grad_stats: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """``[N, 4]`` coefficients (A, B, C, D) of ``dz = p·(A + B·z) + C·[j=y] + D`` (see module doc)."""
    g_lse, g_h, g_sum, g_y = grad_stats.unbind(-1)
    lse, entropy = stats[:, 0], stats[:, 1]
    return torch.stack([g_lse + g_h * (lse - entropy), -g_h, g_y, g_sum], dim=-1)


def linear_softmax_backward_reference(
    coeffs: torch.Tensor,
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    targets: torch.Tensor,
    stats: torch.Tensor,
    softcap: float = 0.0,
    inv_temperature: float = 1.0,
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """``(dh, dW, db)`` for logits-gradient coefficients ``coeffs`` ``[N, 4]`` (see module doc).

    Example
    -------
    >>> h, w, y = torch.randn(4, 3), torch.randn(6, 3), torch.tensor([0, 1, 2, 5])
    >>> stats = linear_softmax_stats_reference(h, w, None, y)
    >>> coeffs = torch.tensor([[1.0, 0.0, -1.0, 0.0]]).expand(4, 4)   # cross-entropy, g = 1
    >>> dh, dw, db = linear_softmax_backward_reference(coeffs, h, w, None, y, stats)
    >>> dh.shape, dw.shape, db is None
    (torch.Size([4, 3]), torch.Size([6, 3]), True)
    """
    z, capped = _logits(h, weight, bias, softcap, inv_temperature)
    a, b, c, d = (coeffs[:, k : k + 1].to(z.dtype) for k in range(4))
    p = torch.exp(z - stats[:, :1].to(z.dtype))
    dz = p * (a + b * z) + d
    in_range = (targets >= 0) & (targets < z.shape[-1])
    dz.scatter_add_(1, targets.clamp(0, z.shape[-1] - 1).unsqueeze(-1), c * in_range.unsqueeze(-1))
    dz = dz * inv_temperature
    if softcap > 0:
        dz = dz * (1 - (capped / softcap) ** 2)
    dh = (dz @ weight.to(dz.dtype)).to(h.dtype)
    dw = (dz.T @ h.to(dz.dtype)).to(weight.dtype)
    db = dz.sum(0).to(bias.dtype) if bias is not None else None
    return dh, dw, db
