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
``dh = d raw · W``, ``dW = d rawᵀ · h``, ``db = Σ_i d raw``. Logits of ``-inf`` (vocabulary
masked through the bias) have ``p_j = 0`` and get no gradient.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

STATS = ("lse", "entropy", "sum_z", "z_y")


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _scaled(raw: torch.Tensor, softcap: float, inv_temperature: float):
    capped = softcap * torch.tanh(raw / softcap) if softcap > 0 else raw
    return capped * inv_temperature, capped


def raw_logits(h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``h Wᵀ + b`` in fp32 (fp64 for fp64 inputs)."""
    acc = _acc(h.dtype)
    raw = h.to(acc) @ weight.to(acc).T
    return raw + bias.to(acc) if bias is not None else raw


def rows_stats_reference(logits: torch.Tensor, targets: torch.Tensor, softcap: float = 0.0, inv_temperature: float = 1.0) -> torch.Tensor:
    """``[N, 4]`` stats of ``softmax(cap(logits)·inv_T)`` for materialised raw ``logits [N, V]``.

    Example
    -------
    >>> rows_stats_reference(torch.zeros(1, 4), torch.tensor([1]))
    tensor([[1.3863, 1.3863, 0.0000, 0.0000]])
    """
    z, _ = _scaled(logits.to(_acc(logits.dtype)), softcap, inv_temperature)
    vocab = z.shape[-1]
    # Work relative to the row max: H = lse - E_p[z] cancels badly when |z| is large (-100 ± 3).
    m = z.detach().amax(dim=-1, keepdim=True)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)  # an all-masked row stays -inf
    zs = z - m
    lse_s = torch.logsumexp(zs, dim=-1)
    p = torch.exp(zs - lse_s.unsqueeze(-1))
    # masked (-inf) logits contribute 0, not 0·inf; zs is replaced before the product so that
    # autograd through this reference does not produce nan either
    pz = p * torch.where(torch.isneginf(zs), torch.zeros_like(zs), zs)
    in_range = (targets >= 0) & (targets < vocab)
    z_y = z.gather(-1, targets.clamp(0, vocab - 1).unsqueeze(-1)).squeeze(-1)
    z_y = torch.where(in_range, z_y, torch.zeros_like(z_y))
    lse = lse_s + m.squeeze(-1)
    return torch.stack([lse, lse_s - pz.sum(-1), z.sum(-1), z_y], dim=-1)


def rows_grad_reference(
    logits: torch.Tensor, targets: torch.Tensor, stats: torch.Tensor, coeffs: torch.Tensor,
    softcap: float = 0.0, inv_temperature: float = 1.0,
) -> torch.Tensor:
    """d/d raw logits for ``coeffs [N, 4]`` = (A, B, C, D) (see module doc), in fp32/fp64.

    Example
    -------
    >>> x, y = torch.zeros(1, 4), torch.tensor([2])
    >>> ce = torch.tensor([[1.0, 0.0, -1.0, 0.0]])                      # cross-entropy, g = 1
    >>> rows_grad_reference(x, y, rows_stats_reference(x, y), ce)
    tensor([[ 0.2500,  0.2500, -0.7500,  0.2500]])
    """
    z, capped = _scaled(logits.to(_acc(logits.dtype)), softcap, inv_temperature)
    vocab = z.shape[-1]
    a, b, c, d = (coeffs[:, k : k + 1].to(z.dtype) for k in range(4))
    p = torch.exp(z - stats[:, :1].to(z.dtype))
    masked = torch.isneginf(z)
    dz = torch.where(masked, torch.zeros_like(z), p * (a + b * torch.where(masked, torch.zeros_like(z), z)) + d)
    in_range = (targets >= 0) & (targets < vocab)
    dz.scatter_add_(1, targets.clamp(0, vocab - 1).unsqueeze(-1), c * in_range.unsqueeze(-1))
    dz = dz * inv_temperature
    if softcap > 0:
        dz = dz * (1 - (capped / softcap) ** 2)
    return dz


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
    return rows_stats_reference(raw_logits(h, weight, bias), targets, softcap, inv_temperature)


def logits_grad_coefficients(grad_stats: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """``[N, 4]`` coefficients (A, B, C, D) of ``dz = p·(A + B·z) + C·[j=y] + D`` (see module doc).

    Example
    -------
    >>> logits_grad_coefficients(torch.tensor([[0.0, 1.0, 0.0, 0.0]]), torch.tensor([[2.0, 0.5, 0.0, 0.0]]))
    tensor([[ 1.5000, -1.0000,  0.0000,  0.0000]])
    """
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
    dz = rows_grad_reference(raw_logits(h, weight, bias), targets, stats, coeffs, softcap, inv_temperature)
    dh = (dz @ weight.to(dz.dtype)).to(h.dtype)
    dw = (dz.T @ h.to(dz.dtype)).to(weight.dtype)
    db = dz.sum(0).to(bias.dtype) if bias is not None else None
    return dh, dw, db
