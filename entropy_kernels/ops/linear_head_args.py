"""The arguments of the linear-head losses (:func:`entropy_kernels.linear_cross_entropy`,
:func:`entropy_kernels.linear_logprob_entropy`): their checks, the flattening of the inputs to
``[N, D]`` / ``[N]``, and :class:`LinearSoftmaxOptions`, the per-call settings that travel
between the Python layers as one value and become the ops' positional arguments only where an
op is called (the op schemas take plain floats, ints and bools).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Tuple

import torch

from .. import _validation

CROSS_ENTROPY_IMPLS = ("auto", "fused", "chunked", "reference")
REDUCTIONS = ("mean", "sum", "none")


@dataclasses.dataclass(frozen=True)
class LinearSoftmaxOptions:
    """Settings of one call of a linear-softmax loss, resolved (no ``"auto"``, no ``None``).

    The logits are ``z = cap(h Wᵀ + b) · inv_temperature`` with ``cap(x) = softcap·tanh(x/softcap)``
    (``softcap <= 0``: none). ``ignore_index`` marks tokens without a loss; ``label_smoothing``,
    ``z_loss`` and ``reduction`` shape the cross-entropy built on the statistics. The rest says
    how the statistics are computed: ``filter_eps`` (fused backward tile skipping, 0: off),
    ``accum_fp32`` (dW summed in fp32), ``chunk_size`` (tokens per chunk of the chunked ops, 0:
    the op's default) and, for a vocabulary-parallel weight, ``process_group`` / ``vocab_offset``.

    Example
    -------
    >>> opts = LinearSoftmaxOptions(softcap=30.0, inv_temperature=0.5, filter_eps=2.0**-12)
    >>> opts.fused_args()
    (30.0, 0.5, 0.000244140625, False)
    >>> dataclasses.replace(opts, chunk_size=256).chunked_args()
    (30.0, 0.5, 256, False)
    """

    softcap: float = 0.0
    inv_temperature: float = 1.0
    ignore_index: int = -100
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    reduction: str = "mean"
    filter_eps: float = 0.0
    accum_fp32: bool = False
    chunk_size: int = 0
    process_group: Any = None
    vocab_offset: Optional[int] = None

    def fused_args(self) -> Tuple[float, float, float, bool]:
        """The trailing arguments of ``entropy_kernels::linear_softmax_stats``."""
        return self.softcap, self.inv_temperature, self.filter_eps, self.accum_fp32

    def chunked_args(self) -> Tuple[float, float, int, bool]:
        """The trailing arguments of ``entropy_kernels::linear_softmax_stats_chunked``."""
        return self.softcap, self.inv_temperature, self.chunk_size, self.accum_fp32

    def stored_args(self) -> Tuple[float, float]:
        """The trailing arguments of ``entropy_kernels::linear_softmax_stats_stored``."""
        return self.softcap, self.inv_temperature

    def cross_entropy_args(self) -> Tuple[int, float, float, float, int, bool]:
        """The arguments of ``entropy_kernels::linear_cross_entropy_chunked`` after ``token_weight``."""
        return self.ignore_index, self.label_smoothing, self.z_loss, self.softcap, self.chunk_size, self.accum_fp32


def flatten_head(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
    """``(lead_shape, h [N, D], weight, targets [N])`` with unit inner strides, as the kernels
    read them (a copy only where the input's last dimension is strided).

    Example
    -------
    >>> lead, h, w, y = flatten_head(torch.randn(2, 5, 16), torch.randn(100, 16), torch.zeros(2, 5, dtype=torch.long))
    >>> tuple(lead), tuple(h.shape), tuple(y.shape)
    ((2, 5), (10, 16), (10,))
    """
    h = hidden.reshape(-1, hidden.shape[-1])
    h = h if h.stride(-1) == 1 else h.contiguous()
    w = weight if weight.stride(-1) == 1 else weight.contiguous()
    return hidden.shape[:-1], h, w, targets.reshape(-1).contiguous()


def check_options(*, ignore_index=-100, reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None, shift=False,
                  return_lse=False, impl="auto", filter_eps="auto", accum_fp32=False, chunk_size=None, process_group=None,
                  vocab_offset=None) -> None:
    """The options of :func:`entropy_kernels.linear_cross_entropy` that are not tensors (also
    checked by the loss module and the transformers patch when they are given, not at the first
    forward).

    Example
    -------
    >>> check_options(label_smoothing=None)
    Traceback (most recent call last):
    ...
    TypeError: label_smoothing must be a number, got None
    """
    _validation.check_int("ignore_index", ignore_index)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if impl not in CROSS_ENTROPY_IMPLS:
        raise ValueError(f"impl must be one of {CROSS_ENTROPY_IMPLS}, got {impl!r}")
    if process_group is not None and impl not in ("auto", "fused"):
        raise ValueError(f"with a process_group (vocabulary-parallel weight) impl must be 'auto' or 'fused', got {impl!r}")
    _validation.check_real("label_smoothing", label_smoothing, 0.0, 1.0, high_open=True)
    _validation.check_real("z_loss", z_loss, 0.0)
    if softcap is not None:
        _validation.check_positive_scalar("softcap", softcap)
    check_filter_eps(filter_eps, allow_auto=True)
    shift_amount(shift)
    for name, value in (("return_lse", return_lse), ("accum_fp32", accum_fp32)):
        _validation.check_bool(name, value)
    if chunk_size is not None:
        _validation.check_int("chunk_size", chunk_size, 1)
    check_vocab_parallel(process_group, vocab_offset)


def shift_amount(shift) -> int:
    """``shift`` as a number of positions: ``False`` → 0, ``True`` → 1, an int ``s >= 0`` → ``s``.

    Example
    -------
    >>> shift_amount(True), shift_amount(2)
    (1, 2)
    >>> shift_amount(1.5)
    Traceback (most recent call last):
    ...
    TypeError: shift must be a bool or an int >= 0, got 1.5
    """
    if isinstance(shift, bool):
        return int(shift)
    if not isinstance(shift, int):
        raise TypeError(f"shift must be a bool or an int >= 0, got {shift!r}")
    if shift < 0:
        raise ValueError(f"shift must be a bool or an int >= 0, got {shift}")
    return shift


def check_class_weight(class_weight, weight: torch.Tensor, label_smoothing, process_group) -> None:
    """``class_weight``: None or a floating ``[V]`` tensor on the weight's device (the semantics of
    ``F.cross_entropy(weight=...)``); not with label smoothing or a vocabulary-parallel weight.

    Example
    -------
    >>> check_class_weight(torch.ones(3), torch.zeros(4, 2), 0.0, None)
    Traceback (most recent call last):
    ...
    ValueError: class_weight must have shape [V] = [4] (one weight per class), got (3,)
    """
    if class_weight is None:
        return
    _validation.check_tensor("class_weight", class_weight)
    _validation.check_float_dtype("class_weight", class_weight)
    if tuple(class_weight.shape) != (weight.shape[0],):
        raise ValueError(f"class_weight must have shape [V] = [{weight.shape[0]}] (one weight per class), "
                         f"got {tuple(class_weight.shape)}")
    _validation.check_same_device("class_weight", class_weight, "weight", weight)
    if float(label_smoothing) > 0:
        raise ValueError("class_weight with label_smoothing > 0 is not supported (the smoothed term would need a "
                         "per-class weight in every logit's gradient)")
    if process_group is not None:
        raise ValueError("class_weight is not supported with a process_group (vocabulary-parallel weight)")


def check_filter_eps(filter_eps, allow_auto: bool) -> None:
    """``filter_eps``: None, a finite float >= 0 (an infinite one would skip every gradient
    tile) or, where ``allow_auto``, ``"auto"``.

    Example
    -------
    >>> check_filter_eps("auto", allow_auto=False)
    Traceback (most recent call last):
    ...
    ValueError: filter_eps must be None or a float >= 0, got 'auto'
    """
    if filter_eps is None or (allow_auto and isinstance(filter_eps, str) and filter_eps == "auto"):
        return
    if isinstance(filter_eps, str):
        raise ValueError(f"filter_eps must be {'auto, ' if allow_auto else ''}None or a float >= 0, got {filter_eps!r}")
    _validation.check_real("filter_eps", filter_eps, 0.0)


def check_vocab_parallel(process_group, vocab_offset) -> None:
    """``vocab_offset`` (an int >= 0) only with a ``process_group``: alone it would be ignored.

    Example
    -------
    >>> check_vocab_parallel(None, 128)
    Traceback (most recent call last):
    ...
    ValueError: vocab_offset is this rank's first vocabulary id: it needs a process_group
    """
    if vocab_offset is not None:
        _validation.check_int("vocab_offset", vocab_offset, 0)
        if process_group is None:
            raise ValueError("vocab_offset is this rank's first vocabulary id: it needs a process_group")
    _validation.check_process_group("process_group", process_group)
