"""The "80/20 rule" token mask (Beyond the 80/20 Rule: high-entropy minority tokens drive RL
for reasoning): only the highest-entropy ``top_fraction`` of the valid tokens of a batch get
policy gradient. Computed on the device without host synchronisation (CUDA-graph capturable).
"""

from __future__ import annotations

import math

import torch

from .. import _validation


def high_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, top_fraction: float = 0.2) -> torch.Tensor:
    """Bool mask of the ``k = ceil(top_fraction · n_valid)`` valid tokens with the highest entropy.

    Parameters
    ----------
    entropy : Tensor ``[...]`` floating (e.g. from :func:`linear_logprob_entropy`; detached here).
    mask : Tensor ``[...]`` bool (or 0/1) of valid tokens, same shape and device.
    top_fraction : float in (0, 1]

    Returns
    -------
    Bool tensor of ``entropy``'s shape: ``True`` on exactly ``k`` valid tokens (``k = 0`` when no
    token is valid; ``k >= 1`` otherwise, however small the batch). Ties at the threshold are
    broken by position (the earlier flattened index wins), so the count is always exactly ``k``.
    ``nan`` entropies rank lowest. Selection is over the whole tensor (all sequences of the
    micro-batch), as in the paper.

    Example
    -------
    >>> import torch, entropy_kernels as ek
    >>> ent = torch.tensor([[0.1, 2.0, 0.5, 3.0], [1.0, 0.2, 9.0, 0.0]])
    >>> valid = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    >>> ek.high_entropy_mask(ent, valid, top_fraction=0.3)     # ceil(0.3 · 6) = 2 tokens
    tensor([[False,  True, False,  True],
            [False, False, False, False]])
    """
    _validation.check_tensor("entropy", entropy)
    _validation.check_float_dtype("entropy", entropy)
    _validation.check_tensor("mask", mask)
    _validation.check_same_device("mask", mask, "entropy", entropy)
    if tuple(mask.shape) != tuple(entropy.shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal entropy's {tuple(entropy.shape)}")
    if isinstance(top_fraction, bool) or not isinstance(top_fraction, (int, float)) or not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction!r}")
    valid = mask.reshape(-1).to(torch.bool)
    key = entropy.detach().reshape(-1).float()
    key = torch.where(valid & ~torch.isnan(key), key, torch.full_like(key, -math.inf))
    n_valid = valid.sum()
    # k = ceil(q·n) as a device tensor, in float64 with a 1e-9 slack so that q·n landing on an
    # integer (0.2·10 = 2.0000000000000004, 0.05·700) is not rounded up
    k_float = torch.ceil(n_valid.to(torch.float64) * float(top_fraction) - 1e-9)
    k = torch.where(n_valid > 0, torch.clamp(k_float.to(torch.int64), min=1), 0)
    order = torch.sort(key, descending=True, stable=True).indices  # device radix sort, no sync
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return ((rank < k) & valid).reshape(entropy.shape)
