"""The integer keys and the counts every selection of the package uses -- Clip-Cov, KL-Cov and
the high-entropy token mask. The Triton kernels compute the same integers; the distributed
selection, the TRL patch and the plain-torch paths share these definitions, so one rule holds
on every path.

- A selection takes the ``k`` largest keys; key 0 means "never selected"; ties go to the lower
  flattened index.
- :func:`float_key` orders ``float32`` values as integers (NaN lowest among valid tokens, ±0.0
  equal); :func:`random_key` turns uniform floats into the integer keys of a random choice.

    >>> import torch
    >>> float_key(torch.tensor([-1.0, 0.0, 2.0])).tolist()
    [1082130431, 2147483648, 3221225472]
"""

from __future__ import annotations

import torch


def clip_cov_count(stats: torch.Tensor, ratio: float) -> torch.Tensor:
    """``n = max(int(ratio·Σ m), 1)`` as a 0-dim int64 tensor (no host sync)."""
    return torch.clamp(torch.floor(stats[2] * ratio), min=1).long()


def kl_cov_count(stats: torch.Tensor, ratio: float) -> torch.Tensor:
    """``k = max(1, int(#valid·ratio))``, 0 when no token is valid; 0-dim int64."""
    k = torch.clamp(torch.floor(stats[3] * ratio), min=1)
    return torch.where(stats[3] > 0, k, 0.0).long()


def float_key(values: torch.Tensor) -> torch.Tensor:
    """Order-preserving map of ``float32(values)`` to int64 keys in ``[1, 2**32)``; NaN → 1, the
    lowest key of a valid token; ±0.0 share one key."""
    v = values.float() + 0.0  # −0.0 → +0.0: equal values get equal keys
    b = v.view(torch.int32).long()
    k = torch.clamp(torch.where(b < 0, b ^ 0x7FFFFFFF, b) + 2**31, min=1)
    return torch.where(torch.isnan(v), 1, k)


def random_key(uniform: torch.Tensor) -> torch.Tensor:
    """Uniform ``(0, 1)`` floats to integer keys in ``[1, 2**31]``."""
    return torch.floor(uniform.double() * 2**31).long() + 1


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
