"""verl's loss aggregation (``agg_loss`` with its global-batch arguments) for the Clip-Cov /
KL-Cov policy losses: the five modes, the three reductions the kernels implement, and the
normalisation each mode gets from the data-parallel counts. Shared by the training wrappers,
the ops and the plain-torch reference.

    >>> import torch
    >>> aggregate(torch.tensor([[1.0, 3.0, 5.0]]), torch.tensor([[1, 1, 0]]), "token-mean")
    tensor(2.)
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "token-sum", "seq-mean-token-sum-norm")

# the three reductions the kernels implement (``AGG``): every mode is one of them with a denominator
TOKEN_SUM_REDUCTION, SEQ_TOKEN_SUM_REDUCTION, SEQ_TOKEN_MEAN_REDUCTION = 0, 1, 2

Count = Union[float, torch.Tensor]


def sequence_count(w: torch.Tensor) -> torch.Tensor:
    """The seq-mean denominator of verl's ``agg_loss``: the sequences (rows of the ``[B, T]``
    weights ``w``) with at least one valid token -- at least 1, so an empty batch gives 0."""
    return (w.sum(-1) > 0).sum().clamp_min(1).to(w.dtype)


def _check_count(name: str, value, minimum: float, tensor_ok: bool = True) -> Optional[Count]:
    """A Python number (checked), or a one-element tensor (a 0-dim fp64 tensor, not read: a
    count that changes every step stays on the device, so a compiled or graph-captured step
    uses the current value); under ``torch.compile`` a number becomes such a tensor (a count
    that changes every step is symbolic there, and must not be compared on the host)."""
    if value is None:
        return None
    if tensor_ok and not isinstance(value, torch.Tensor) and torch.compiler.is_compiling():
        # an int that changes between compiled calls is symbolic there: keep it a graph value
        value = torch.scalar_tensor(value, dtype=torch.float64)
    if isinstance(value, torch.Tensor):
        if not tensor_ok:
            raise TypeError(f"{name} must be a Python number, got a tensor")
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name} as a tensor must hold one real number, got {value.dtype} with {value.numel()} elements")
        return value.detach().reshape(()).to(torch.float64)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value!r}")
    return float(value)


def agg_normalization(
    loss_agg_mode: str, horizon: int, dp_size: int = 1, batch_num_tokens=None, global_batch_size=None,
    loss_scale_factor=None,
) -> Tuple[int, Count, float]:
    """verl's ``agg_loss`` arguments (its ``config.global_batch_info``) as ``(reduction, given,
    mult)``: the loss is ``S / (D·mult)`` where ``S`` is the reduction's numerator -- Σ w·loss
    (0), Σ over sequences of Σ w·loss (1) or of Σ w·loss / Σ w (2) -- and ``D`` is ``given``
    when it is > 0, else the local denominator (Σ w for 0, the sequences with a valid token for
    1 and 2). With ``dp_size > 1`` verl needs the global count and multiplies by ``dp_size`` (data
    parallelism averages the ranks' gradients): ``D = batch_num_tokens / dp_size`` (token-mean),
    ``global_batch_size / dp_size`` (seq-mean modes), ``1 / dp_size`` (token-sum).
    ``seq-mean-token-sum-norm`` also divides by ``loss_scale_factor`` (default: the horizon T).
    A given count of 0 (an empty global batch) counts as not given, so the loss is 0, not nan.
    The counts may be one-element tensors (then ``given`` is a 0-dim fp64 tensor, never read on
    the host): what a step that is compiled or captured in a CUDA graph needs for counts that
    change every step.

    Example
    -------
    >>> agg_normalization("token-mean", 512, dp_size=4, batch_num_tokens=10_000)
    (0, 2500.0, 1.0)
    >>> agg_normalization("seq-mean-token-sum-norm", 512)
    (1, 0.0, 512.0)
    """
    if loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg_mode must be one of {LOSS_AGG_MODES}, got {loss_agg_mode!r}")
    if isinstance(dp_size, bool) or not isinstance(dp_size, int) or dp_size < 1:
        raise ValueError(f"dp_size must be an int >= 1, got {dp_size!r}")
    tokens = _check_count("batch_num_tokens", batch_num_tokens, 0)
    seqs = _check_count("global_batch_size", global_batch_size, 0)
    factor = _check_count("loss_scale_factor", loss_scale_factor, 0, tensor_ok=False)
    if factor == 0:
        raise ValueError("loss_scale_factor must be > 0")
    if loss_agg_mode == "token-sum":
        return TOKEN_SUM_REDUCTION, 1.0 / dp_size, 1.0
    if loss_agg_mode == "token-mean":
        if tokens is None and dp_size > 1:
            raise ValueError("(global) batch_num_tokens is required when dp_size > 1 (as in verl's agg_loss)")
        return TOKEN_SUM_REDUCTION, 0.0 if tokens is None else tokens / dp_size, 1.0
    if seqs is None and dp_size > 1:
        raise ValueError("global_batch_size is required when dp_size > 1 (as in verl's agg_loss)")
    given = 0.0 if seqs is None else seqs / dp_size
    if loss_agg_mode == "seq-mean-token-mean":
        return SEQ_TOKEN_MEAN_REDUCTION, given, 1.0
    mult = 1.0
    if loss_agg_mode == "seq-mean-token-sum-norm":
        mult = float(horizon) if factor is None else factor
    return SEQ_TOKEN_SUM_REDUCTION, given, mult


def reduce_loss_weights(w: torch.Tensor, reduction: int, given: Count, mult: float) -> torch.Tensor:
    """The ``[B, T]`` factors ``c`` of the reduction: the loss of per-token terms ``x`` (zero at
    invalid tokens) is ``Σ c·x``, i.e. ``S / (D·mult)`` of :func:`agg_normalization` (``w`` = the
    mask weights, 0 at invalid tokens); being linear in ``x``, the same ``c`` is ∂loss/∂x."""
    if reduction == TOKEN_SUM_REDUCTION:
        local = w.sum()
        local = torch.where(local > 0, local, 1.0)
    else:
        local = sequence_count(w)
        if reduction == SEQ_TOKEN_MEAN_REDUCTION:
            n_b = w.sum(-1, keepdim=True)
            w = w / torch.where(n_b > 0, n_b, 1.0)
    return w / (_denominator(given, local) * mult)


def _denominator(given: Count, local: torch.Tensor) -> torch.Tensor:
    """``given`` when > 0, else ``local`` -- without reading a tensor ``given`` on the host."""
    if isinstance(given, torch.Tensor):
        return torch.where(given > 0, given.to(local.dtype), local)
    return given if given > 0 else local


def aggregate(
    loss_mat: torch.Tensor, mask: torch.Tensor, loss_agg_mode: str, dp_size: int = 1, batch_num_tokens=None,
    global_batch_size=None, loss_scale_factor=None,
) -> torch.Tensor:
    """verl's ``agg_loss`` with mask weights and its global-batch arguments
    (:func:`agg_normalization`): token-mean = Σ w·loss / Σ w; the seq-mean modes average over
    the sequences that have a valid token (a fully masked sequence counts in neither sum nor
    denominator); a zero denominator gives 0, not nan; masked positions never contribute."""
    reduction, given, mult = agg_normalization(
        loss_agg_mode, loss_mat.shape[-1], dp_size, batch_num_tokens, global_batch_size, loss_scale_factor
    )
    valid = mask > 0
    w = torch.where(valid, mask.to(loss_mat.dtype), 0.0)
    return (reduce_loss_weights(w, reduction, given, mult) * torch.where(valid, loss_mat, 0.0)).sum()
