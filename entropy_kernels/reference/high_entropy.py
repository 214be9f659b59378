"""The "80/20 rule" token mask (Beyond the 80/20 Rule: high-entropy minority tokens drive RL for
reasoning) in plain torch: the CPU path of :func:`entropy_kernels.high_entropy_mask` and the
semantics its Triton kernel reproduces bit for bit."""

from __future__ import annotations

import torch

from .policy_loss import float_key, select_top


def high_entropy_count(n_valid: torch.Tensor, top_fraction: float) -> torch.Tensor:
    """``k = max(1, ceil(q·n − 1e-9))`` (0 when ``n = 0``) as a 0-dim int64 tensor, float64 math.
    The 1e-9 slack keeps ``q·n`` that lands on an integer up to rounding (``0.2·10 =
    2.0000000000000004``) from being rounded up.

    Example
    -------
    >>> high_entropy_count(torch.tensor(10), 0.2), high_entropy_count(torch.tensor(0), 0.2)
    (tensor(2), tensor(0))
    """
    k = torch.ceil(n_valid.to(torch.float64) * float(top_fraction) - 1e-9)
    return torch.where(n_valid > 0, torch.clamp(k.to(torch.int64), min=1), 0)


def high_entropy_mask_reference(entropy: torch.Tensor, mask: torch.Tensor, top_fraction: float) -> torch.Tensor:
    """Bool mask of the ``k`` (:func:`high_entropy_count`) valid (``mask != 0``) tokens of highest
    ``float32(entropy)``; ties → the lower flattened index; NaN ranks below every other valid token.

    Example
    -------
    >>> ent = torch.tensor([[0.1, 2.0, 0.5, 3.0]])
    >>> high_entropy_mask_reference(ent, torch.ones(1, 4, dtype=torch.bool), 0.5)
    tensor([[False,  True, False,  True]])
    """
    valid = mask != 0
    key = torch.where(valid, float_key(entropy.detach()), 0)
    return select_top(key, high_entropy_count(valid.sum(), top_fraction))
