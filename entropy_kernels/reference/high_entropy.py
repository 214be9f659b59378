"""The "80/20 rule" token mask (Beyond the 80/20 Rule: high-entropy minority tokens drive RL for
reasoning) in plain torch: the CPU path of :func:`entropy_kernels.high_entropy_mask` and the
semantics its Triton kernel reproduces bit for bit."""

from __future__ import annotations

import torch

from ..selection_keys import float_key, high_entropy_count  # noqa: F401  (re-exported)
from .policy_loss import select_top


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
