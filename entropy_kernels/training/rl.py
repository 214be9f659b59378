"""RL fine-tuning helpers in the shapes verl/TRL-style trainers use: per-token log-probs and
entropies of the response tokens straight from the final hidden states, loss aggregation
(``loss_agg_mode``) and the entropy bonus."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import _validation
from ..ops.linear_logprob_entropy import logprob_entropy
from ..loss_aggregation import LOSS_AGG_MODES, aggregate  # noqa: F401  (re-exported by training)


def response_logprobs_and_entropy(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    input_ids: torch.Tensor,
    response_length: int,
    *,
    bias: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    return_entropy: bool = True,
    **op_options,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Log-probs and entropies ``[B, response_length]`` of the response tokens of ``input_ids``.

    ``hidden [B, T, D]`` are the final hidden states of ``input_ids [B, T]`` (prompt + response,
    response last); the token at position ``t`` is predicted from ``hidden[:, t-1]``, so the
    response ``input_ids[:, -R:]`` is scored by ``hidden[:, -R-1:-1]`` — verl's
    ``logits[:, -response_length - 1 : -1]`` without the logits. Extra keyword arguments go to
    :func:`entropy_kernels.linear_logprob_entropy` (``impl``, ``logits_budget``, ...).

    Example
    -------
    >>> import torch
    >>> from entropy_kernels.training import response_logprobs_and_entropy
    >>> h, w = torch.randn(2, 10, 16), torch.randn(50, 16)
    >>> ids = torch.randint(0, 50, (2, 10))
    >>> lp, ent = response_logprobs_and_entropy(h, w, ids, response_length=4, temperature=0.8)
    >>> lp.shape, ent.shape
    (torch.Size([2, 4]), torch.Size([2, 4]))
    """
    # the whole inputs checked under the caller's names (the op sees slices named labels/weight)
    _validation.check_linear_head(hidden, lm_head_weight, input_ids, bias, targets_name="input_ids", weight_name="lm_head_weight")
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, T, D] and input_ids [B, T]; got {tuple(hidden.shape)} and {tuple(input_ids.shape)}")
    _validation.check_int("response_length", response_length)
    if not 0 < response_length < hidden.shape[1]:
        raise ValueError(f"response_length must be an int in [1, T-1] = [1, {hidden.shape[1] - 1}], got {response_length!r}")
    r = response_length
    return logprob_entropy(
        hidden[:, -r - 1 : -1, :], lm_head_weight, input_ids[:, -r:], bias=bias, temperature=temperature,
        return_entropy=return_entropy, labels_name="input_ids", weight_name="lm_head_weight", **op_options,
    )


def _check_loss_and_mask(loss_name: str, loss: torch.Tensor, mask_name: str, mask: torch.Tensor) -> None:
    _validation.check_tensor(loss_name, loss)
    _validation.check_float_dtype(loss_name, loss)
    _validation.check_tensor(mask_name, mask)
    _validation.kernel_mask(mask_name, mask)  # (rejects complex masks)
    _validation.check_same_device(mask_name, mask, loss_name, loss)
    if loss.shape != mask.shape or loss.dim() != 2:
        raise ValueError(f"{loss_name} and {mask_name} must both be [B, T]; got {tuple(loss.shape)} and {tuple(mask.shape)}")


def aggregate_loss(
    loss_mat: torch.Tensor, loss_mask: torch.Tensor, loss_agg_mode: str = "token-mean", **global_batch_info
) -> torch.Tensor:
    """Reduce a ``[B, T]`` per-token loss to a scalar, verl's ``agg_loss`` semantics.

    - ``token-mean``: Σ loss·mask / Σ mask over the whole batch;
    - ``token-sum``: Σ loss·mask;
    - ``seq-mean-token-sum``: mean of each sequence's Σ loss·mask;
    - ``seq-mean-token-mean``: mean of each sequence's masked mean;
    - ``seq-mean-token-sum-norm``: ``seq-mean-token-sum / loss_scale_factor`` (default T).

    The seq-mean modes average over the sequences with at least one valid token, as verl's
    ``agg_loss`` does (a fully masked sequence is left out, not counted as a zero); masked
    positions never contribute, even if their loss is nan; an empty batch gives 0.
    ``global_batch_info`` -- ``dp_size``, ``batch_num_tokens``, ``global_batch_size``,
    ``loss_scale_factor`` -- normalises by the global batch as verl does
    (:func:`entropy_kernels.loss_aggregation.agg_normalization`).

    Example
    -------
    >>> loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    >>> mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    >>> [round(aggregate_loss(loss, mask, m).item(), 3) for m in LOSS_AGG_MODES]
    [2.333, 3.5, 2.75, 7.0, 1.167]
    >>> aggregate_loss(loss, mask, "token-mean", dp_size=2, batch_num_tokens=7)  # 7 / (7/2)
    tensor(2.)
    """
    _check_loss_and_mask("loss_mat", loss_mat, "loss_mask", loss_mask)
    return aggregate(loss_mat, loss_mask, loss_agg_mode, **global_batch_info)


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor, coef: float, loss_agg_mode: str = "token-mean") -> torch.Tensor:
    """The entropy term to add to a policy loss: ``-coef · aggregate(entropy)`` (maximises entropy).

    Example
    -------
    >>> ent = torch.tensor([[1.0, 3.0]])
    >>> entropy_bonus(ent, torch.ones(1, 2), coef=0.01)
    tensor(-0.0200)
    """
    coef = _validation.check_real("coef", coef)
    _check_loss_and_mask("entropy", entropy, "mask", mask)
    return -coef * aggregate_loss(entropy, mask, loss_agg_mode)
