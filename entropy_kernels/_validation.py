"""Argument checks shared by the public functions: clear ``TypeError``/``ValueError`` messages
that name the argument and what was expected, raised before anything reaches a kernel.

None of these look at tensor *values* (that would be a host synchronisation)."""

from __future__ import annotations

import math
from numbers import Real
from typing import Optional, Sequence, Tuple

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, t: object) -> torch.Tensor:
    """``t`` is a tensor that holds data: a ``meta`` tensor (shape only) would give a result
    without values -- a loss whose backward silently trains nothing.

    Example
    -------
    >>> check_tensor("logits", [1.0])
    Traceback (most recent call last):
    ...
    TypeError: logits must be a torch.Tensor, got list
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (a shape without data); pass a tensor on the CPU or a GPU")
    return t


def check_bool(name: str, value: object) -> bool:
    """A flag: ``True`` or ``False`` only (a string such as ``"no"`` would be truthy).

    Example
    -------
    >>> check_bool("return_lse", None)
    Traceback (most recent call last):
    ...
    TypeError: return_lse must be True or False, got None
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_int(name: str, value: object, minimum: Optional[int] = None) -> int:
    """A Python int (bools rejected: ``True`` is not a count), at least ``minimum``.

    Example
    -------
    >>> check_int("top_n", 2.5)
    Traceback (most recent call last):
    ...
    TypeError: top_n must be an int, got 2.5
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_real(name: str, value: object, low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
               high_open: bool = False) -> float:
    """A finite Python number (bools rejected) in ``[low, high]`` (``(`` / ``)`` with the open
    flags), as a float.

    Example
    -------
    >>> check_real("label_smoothing", 1.0, 0.0, 1.0, high_open=True)
    Traceback (most recent call last):
    ...
    ValueError: label_smoothing must be a finite number in [0.0, 1.0), got 1.0
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    inside = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not math.isfinite(value) or not inside:
        raise ValueError(
            f"{name} must be a finite number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}, got {value}"
        )
    return value


def check_generator(name: str, generator: object) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(generator).__name__}")


def check_process_group(name: str, group: object) -> None:
    """None or a ``torch.distributed`` process group."""
    if group is None:
        return
    import torch.distributed as dist

    if not (dist.is_available() and isinstance(group, dist.ProcessGroup)):
        raise TypeError(f"{name} must be a torch.distributed ProcessGroup or None, got {type(group).__name__}")


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
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
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


def check_linear_head(hidden: object, weight: object, targets: object, bias: object, targets_name: str = "targets",
                      weight_name: str = "weight") -> None:
    """Shapes, dtypes and devices of ``hidden [..., D]``, ``weight [V, D]``, ``targets [...]``,
    ``bias [V]`` (optional), as the linear-softmax ops take them; ``targets_name`` /
    ``weight_name``: what the caller calls those arguments (messages name the user's argument)."""
    w = weight_name
    for name, t in (("hidden", hidden), (w, weight)):
        check_tensor(name, t)
        check_float_dtype(name, t)
    check_tensor(targets_name, targets)
    if targets.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{targets_name} must be int64 or int32 class indices, got {targets.dtype}")
    check_min_dim("hidden", hidden, 1, "(the last one is the hidden size D)")
    if weight.dim() != 2:
        raise ValueError(f"{w} must be [V, D], got shape {tuple(weight.shape)}")
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"hidden's last dim ({hidden.shape[-1]}) must equal {w}'s D ({weight.shape[1]})")
    if weight.shape[0] == 0:
        raise ValueError(f"{w} must have at least one vocabulary row")
    if hidden.dtype != weight.dtype:
        raise TypeError(f"hidden ({hidden.dtype}) and {w} ({weight.dtype}) must have the same dtype")
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"{targets_name} shape {tuple(targets.shape)} must equal hidden's leading shape {tuple(hidden.shape[:-1])}")
    check_same_device(w, weight, "hidden", hidden)
    check_same_device(targets_name, targets, "hidden", hidden)
    if bias is not None:
        check_tensor("bias", bias)
        check_same_device("bias", bias, "hidden", hidden)
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"bias must be [V] = [{weight.shape[0]}], got shape {tuple(bias.shape)}")
        if bias.dtype != weight.dtype:
            raise TypeError(f"bias ({bias.dtype}) must have {w}'s dtype ({weight.dtype})")


def check_class_indices(name: str, targets: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """Eager CPU only: out-of-range class ids raise. On CUDA this would be a host sync and under
    torch.compile a graph break, so the ops give such tokens a nan result instead."""
    if targets.device.type != "cpu" or torch.compiler.is_compiling():
        return
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
    if bool(bad.any()):
        first = targets[bad][0].item()
        raise ValueError(f"{name} must be in [0, {vocab}) or ignore_index={ignore_index}, found {first}")


# dtypes a Triton kernel loads directly as a mask; others (float8 variants) are widened first
_KERNEL_MASK_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                       torch.float16, torch.bfloat16, torch.float32, torch.float64)


def kernel_mask(name: str, mask: torch.Tensor) -> torch.Tensor:
    """``mask`` as a dtype the kernels load (float8 → float32, values kept exactly); complex
    masks are rejected.

    Example
    -------
    >>> kernel_mask("mask", torch.ones(2, dtype=torch.float8_e4m3fn)).dtype
    torch.float32
    """
    if mask.dtype.is_complex:
        raise TypeError(f"{name} must be bool, integer or floating, got {mask.dtype}")
    return mask if mask.dtype in _KERNEL_MASK_DTYPES else mask.float()


def seed_and_offset(generator: Optional[torch.Generator], seed: Optional[torch.Tensor], offset: Optional[torch.Tensor],
                    ref_name: str, ref: torch.Tensor, zero_offset: bool = True) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The ``(seed, offset)`` one-element int64 tensors of a counter-based sampler, on ``ref``'s
    device: the given ones (checked), or a seed drawn from ``generator`` (torch's default if None)
    on the device with offset 0 -- no host synchronisation either way. With ``zero_offset=False``
    that offset 0 is returned as None (a kernel that takes "no offset" saves the allocation)."""
    if (seed is None) != (offset is None):
        raise ValueError("seed and offset must be given together")
    check_generator("generator", generator)
    if seed is not None:
        if generator is not None:
            raise ValueError("pass either generator or seed/offset, not both")
        for name, t in (("seed", seed), ("offset", offset)):
            check_tensor(name, t)
            if t.dtype != torch.int64 or t.numel() != 1:
                raise ValueError(f"{name} must be a one-element int64 tensor, got {t.dtype} with {t.numel()} elements")
            check_same_device(name, t, ref_name, ref)
        return seed.reshape(1), offset.reshape(1)
    gen_device = generator.device if generator is not None else ref.device
    seed = torch.randint(0, 2**31 - 1, (1,), device=gen_device, generator=generator).to(ref.device)
    return seed, torch.zeros((1,), dtype=torch.int64, device=ref.device) if zero_offset else None


# ---- the Clip-Cov / KL-Cov selection functions and policy losses ---------------------------------


def check_policy_inputs(old_log_prob, log_prob, advantages, response_mask, with_old: bool = True):
    """Types, shapes and devices of the ``[B, T]`` inputs (``old_log_prob`` too unless
    ``with_old`` is False: KL-Cov's selection has none); returns contiguous tensors.

    Example
    -------
    >>> lp = torch.zeros(2, 3)
    >>> check_policy_inputs(lp, lp, lp, torch.ones(2, 4))
    Traceback (most recent call last):
    ...
    ValueError: response_mask shape (2, 4) must equal log_prob's (2, 3)
    """
    tensors = {"log_prob": log_prob, "advantages": advantages, "response_mask": response_mask}
    if with_old:
        tensors = {"old_log_prob": old_log_prob, **tensors}
    for name, t in tensors.items():
        check_tensor(name, t)
        if name != "response_mask":
            check_float_dtype(name, t)
    response_mask = kernel_mask("response_mask", response_mask)
    if log_prob.dim() != 2 or 0 in log_prob.shape:
        raise ValueError(f"log_prob must be a non-empty [B, T] tensor, got shape {tuple(log_prob.shape)}")
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(log_prob.shape):
            raise ValueError(f"{name} shape {tuple(t.shape)} must equal log_prob's {tuple(log_prob.shape)}")
        check_same_device(name, t, "log_prob", log_prob)
    if log_prob.numel() >= 2**31:
        raise ValueError(f"at most 2**31 - 1 tokens per call, got {log_prob.numel()}")
    return tuple(t.contiguous() if t is not None else None for t in (old_log_prob, log_prob, advantages, response_mask))


def check_fraction(name: str, value, upper: float = 1.0) -> float:
    """A Python number in ``(0, upper]`` (bools rejected), as a float.

    Example
    -------
    >>> check_fraction("kl_cov_ratio", 0)
    Traceback (most recent call last):
    ...
    ValueError: kl_cov_ratio must be a number in (0, 1.0], got 0
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= upper:
        raise ValueError(f"{name} must be a number in (0, {upper}], got {value!r}")
    return float(value)


def check_nonneg(name: str, value, upper: float = math.inf) -> float:
    """A finite Python number in ``[0, upper]`` (bools rejected), as a float.

    Example
    -------
    >>> check_nonneg("ppo_kl_coef", 0.5)
    0.5
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= upper or math.isnan(value):
        raise ValueError(f"{name} must be a finite number in [0, {upper}], got {value!r}")
    if math.isinf(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def clip_bounds(clip_ratio, clip_ratio_low, clip_ratio_high) -> Tuple[float, float]:
    """verl's rule: ``clip_ratio_low/high`` default to ``clip_ratio``; ε_low ∈ [0, 1], ε_high ≥ 0.
    A bad default is reported under ``clip_ratio``, the argument the user gave.

    Example
    -------
    >>> clip_bounds(0.2, None, 0.28)
    (0.2, 0.28)
    """
    low_name = "clip_ratio_low" if clip_ratio_low is not None else "clip_ratio (the default of clip_ratio_low)"
    high_name = "clip_ratio_high" if clip_ratio_high is not None else "clip_ratio (the default of clip_ratio_high)"
    low = clip_ratio if clip_ratio_low is None else clip_ratio_low
    high = clip_ratio if clip_ratio_high is None else clip_ratio_high
    return check_nonneg(low_name, low, 1.0), check_nonneg(high_name, high)


def check_band(lb, ub) -> Tuple[float, float]:
    """Clip-Cov's covariance band ``clip_cov_lb < clip_cov_ub`` (numbers, not NaN), as floats.

    Example
    -------
    >>> check_band(1, 5.0)
    (1.0, 5.0)
    """
    for name, v in (("clip_cov_lb", lb), ("clip_cov_ub", ub)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
            raise ValueError(f"{name} must be a number, got {v!r}")
    if not lb < ub:
        raise ValueError(f"clip_cov_lb ({lb}) must be < clip_cov_ub ({ub})")
    return float(lb), float(ub)


def clip_cov_options(clip_ratio, clip_ratio_low, clip_ratio_high, clip_cov_ratio, clip_cov_lb, clip_cov_ub
                     ) -> Tuple[float, float, float, float, float]:
    """Clip-Cov's options, checked: ``(ε_low, ε_high, clip_cov_ratio, clip_cov_lb, clip_cov_ub)``
    (:func:`clip_bounds`, :func:`check_fraction`, :func:`check_band`).

    Example
    -------
    >>> clip_cov_options(0.2, None, None, 2e-4, 1.0, 5.0)
    (0.2, 0.2, 0.0002, 1.0, 5.0)
    """
    low, high = clip_bounds(clip_ratio, clip_ratio_low, clip_ratio_high)
    return low, high, check_fraction("clip_cov_ratio", clip_cov_ratio), *check_band(clip_cov_lb, clip_cov_ub)
