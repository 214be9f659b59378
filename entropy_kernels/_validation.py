"""Argument checks shared by the public functions: clear ``TypeError``/``ValueError`` messages
that name the argument and what was expected, raised before anything reaches a kernel.

None of these look at tensor *values* (that would be a host synchronisation)."""

from __future__ import annotations

import math
from numbers import Real
from typing import Sequence, Union

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def check_float_dtype(name: str, t: torch.Tensor, allowed: Sequence[torch.dtype] = FLOAT_DTYPES) -> None:
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name} must have a floating dtype ({names}), got {t.dtype}")


def check_min_dim(name: str, t: torch.Tensor, ndim: int, what: str) -> None:
    if t.dim() < ndim:
        raise ValueError(f"{name} must have at least {ndim} dimension(s) {what}, got shape {tuple(t.shape)}")


def check_same_device(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; they must be on the same device")


def check_positive_scalar(name: str, value: object) -> float:
    """A finite, strictly positive Python number (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a float or a tensor, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return value


def broadcast_rows(name: str, t: torch.Tensor, lead_shape: torch.Size) -> torch.Tensor:
    """Broadcast a per-row tensor to ``lead_shape`` and flatten it to ``[prod(lead_shape)]`` fp32."""
    try:
        expanded = t.expand(lead_shape) if t.dim() <= len(lead_shape) else None
    except RuntimeError:
        expanded = None
    if expanded is None:
        raise ValueError(
            f"{name} of shape {tuple(t.shape)} must be a scalar or broadcastable to the leading "
            f"shape {tuple(lead_shape)}"
        )
    return expanded.reshape(-1).to(torch.float32).contiguous()


Number = Union[int, float]
