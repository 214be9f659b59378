"""Clip-Cov / KL-Cov token selection and policy loss ("The Entropy Mechanism of RL for Reasoning
LMs"): the ops

- ``entropy_kernels::cov_select`` — masked means, per-token covariance and the selection
  (Clip-Cov's uniform random sample / KL-Cov's top-k), all on the device;
- ``entropy_kernels::cov_stats`` / ``cov_keys`` — the two halves of it, used for the global
  selection across data-parallel ranks (all-reduce of the statistics in between);
- ``entropy_kernels::cov_policy_loss`` — the loss given a selection, with its backward;

the selection behind the public functions and the losses (:func:`select_tokens`) and the public
:func:`clip_cov_select` / :func:`kl_cov_select`. The losses themselves are in
:mod:`entropy_kernels.training.policy_loss`. Semantics: :mod:`entropy_kernels.reference.policy_loss`.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import _backend, _validation
from ..reference import policy_loss as R
from ._registry import define_op
from .cov_rule import CovRule
from .distributed_select import global_cov_select
from .top_h import _uniform_reference

if _backend.triton_available():
    from ..kernels import cov_launch as _kernels
else:  # pragma: no cover
    _kernels = None


def _reference_keys(log_prob, advantages, mask, old_log_prob, stats, clip_mode, clip_low, clip_high, lb, ub, seed, offset):
    if clip_mode:
        uniform = _uniform_reference(seed, offset, 1, log_prob.numel(), log_prob.device).reshape(log_prob.shape)
        return R.clip_cov_keys(old_log_prob, log_prob, advantages, mask, stats, clip_low, clip_high, lb, ub, uniform)
    return R.kl_cov_keys(log_prob, advantages, mask, stats)


def _stats_signature(log_prob: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(Σ m·A, Σ m·lp, Σ m, #valid)`` float64 ``[4]``. Internal."""


def _keys_signature(
    log_prob: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, old_log_prob: Optional[torch.Tensor],
    stats: torch.Tensor, clip_mode: bool, clip_low: float, clip_high: float, lb: float, ub: float,
    seed: Optional[torch.Tensor], offset: Optional[torch.Tensor],
) -> torch.Tensor:
    """int64 selection keys ``[B, T]`` (0 = never selected) from the given statistics. Internal."""


def _select_signature(
    log_prob: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, old_log_prob: Optional[torch.Tensor],
    clip_mode: bool, ratio: float, clip_low: float, clip_high: float, lb: float, ub: float,
    seed: Optional[torch.Tensor], offset: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(selected bool [B, T], stats float64 [4])``. Internal: use the public functions."""


def _select_reference(log_prob, advantages, mask, old_log_prob, clip_mode, ratio, clip_low, clip_high, lb, ub, seed,
                      offset):
    stats = R.masked_stats(log_prob, advantages, mask)
    key = _reference_keys(log_prob, advantages, mask, old_log_prob, stats, clip_mode, clip_low, clip_high, lb, ub, seed, offset)
    if clip_mode:
        k = torch.minimum(R.clip_cov_count(stats, ratio), (key > 0).sum())
    else:
        k = R.kl_cov_count(stats, ratio)
    return R.select_top(key, k), stats


def _select_eager(*args):
    """Eagerly: one cooperative launch where the device allows it, else the five phase launches."""
    return _kernels.one_launch_or_phases(args[0].device, lambda: _kernels.select_fused(*args),
                                         lambda: _kernels.select(*args), "Clip-Cov/KL-Cov selection")


def _loss_signature(
    old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
    selected: torch.Tensor, stats: torch.Tensor, row_count: Optional[torch.Tensor], clip_mode: bool, agg: int,
    clip_low: float, clip_high: float, kl_coef: float, weights: Optional[torch.Tensor], den: Optional[torch.Tensor],
    given: float, mult: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, metrics [pg_clipfrac, ppo_kl] fp32, coef [B, T])`` with ``coef = ∂loss/∂log_prob``
    (saved for the backward). ``agg, given, mult``: the reduction and denominator of
    ``loss_aggregation.agg_normalization``, the given denominator as the 0-dim fp64 tensor
    ``den`` instead when it is one; ``row_count`` = :func:`row_count` (required by the seq-mean
    reductions, ``agg`` 1 and 2); ``weights``: verl's rollout_is_weights (constants) or None.
    Internal: use :mod:`entropy_kernels.training.policy_loss`."""


def _loss_setup_context(ctx, inputs, output):
    _, metrics, coef = output
    ctx.mark_non_differentiable(metrics, coef)
    ctx.save_for_backward(coef)
    ctx.lp_dtype = inputs[1].dtype


def _loss_backward(ctx, grad_loss, _grad_metrics, _grad_coef):
    (coef,) = ctx.saved_tensors
    grad_lp = (coef * grad_loss).to(ctx.lp_dtype)
    # old log-probs, advantages, the mask, the weights and the counts are data (constants to verl)
    return (None, grad_lp) + (None,) * 14


def _loss_implementation(old_log_prob, log_prob, advantages, mask, selected, stats, row_count, clip_mode, agg, clip_low,
                         clip_high, kl_coef, weights, den, given, mult):
    """The body of ``cov_policy_loss`` (and of its eager twin)."""
    args = (old_log_prob, log_prob, advantages, mask, selected, stats)
    tail = (clip_mode, agg, clip_low, clip_high, kl_coef, weights, den if den is not None else given, mult)
    if _backend.use_triton(log_prob):
        return _kernels.policy_loss(*args, row_count, *tail)
    return R.cov_loss_parts_reference(*args, *tail)


def _batch():
    b, t = 4, 64
    lp = -torch.rand(b, t) * 3
    mask = _validation.kernel_mask("mask", torch.rand(b, t) > 0.2)
    return lp + 0.1 * torch.randn(b, t), lp, torch.randn(b, t), mask


def _select_samples():
    old, lp, adv, mask = _batch()
    yield (lp, adv, mask, None, False, 0.05, 0.0, 0.0, 0.0, 0.0, None, None), "KL-Cov"
    yield (lp, adv, mask, old, True, 0.05, 0.2, 0.28, -1.0, 5.0, torch.tensor([5]), torch.tensor([2])), "Clip-Cov"


def _stats_samples():
    for args, label in _select_samples():
        yield args[:3], label


def _keys_samples():
    for (lp, adv, mask, old, clip, _, low, high, lb, ub, seed, offset), label in _select_samples():
        yield (lp, adv, mask, old, R.masked_stats(lp, adv, mask), clip, low, high, lb, ub, seed, offset), label


def _loss_samples():
    for (lp, adv, mask, old, clip, ratio, low, high, lb, ub, seed, offset), label in _select_samples():
        old = lp + 0.1 * torch.randn_like(lp)
        selected, stats = _select_reference(lp, adv, mask, old, clip, ratio, low, high, lb, ub, seed, offset)
        yield (old, lp, adv, mask, selected, stats, None, clip, 0, low, high, 0.0 if clip else 1.0, None, None, 0.0,
               1.0), f"{label}, token-mean"


_PUBLIC = "clip_cov_policy_loss / kl_cov_policy_loss / clip_cov_select / kl_cov_select"
COV_STATS = define_op("cov_stats", _stats_signature, public=_PUBLIC, kernel=_kernels.stats if _kernels else None,
                      reference=R.masked_stats, samples=_stats_samples)
COV_KEYS = define_op("cov_keys", _keys_signature, public=_PUBLIC, kernel=_kernels.keys if _kernels else None,
                     reference=_reference_keys, samples=_keys_samples)
COV_SELECT = define_op("cov_select", _select_signature, public=_PUBLIC, kernel=_kernels.select if _kernels else None,
                       eager_kernel=_select_eager if _kernels else None, reference=_select_reference,
                       samples=_select_samples)
COV_POLICY_LOSS = define_op(
    "cov_policy_loss", _loss_signature, public=_PUBLIC, implementation=_loss_implementation,
    eager_kernel=_loss_implementation, backward=_loss_backward, setup_context=_loss_setup_context,
    samples=_loss_samples,
)
# the torch.library ops themselves (what torch.compile sees)
cov_stats, cov_keys, cov_select, cov_policy_loss = COV_STATS.op, COV_KEYS.op, COV_SELECT.op, COV_POLICY_LOSS.op


def policy_loss_parts(
    old_log_prob, log_prob, advantages, mask, selected, stats, row_count, clip_mode: bool, agg: int,
    clip_low: float, clip_high: float, kl_coef: float, weights: Optional[torch.Tensor], given, mult: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``cov_policy_loss``, launched directly in eager mode; ``given`` is a float or a 0-dim
    fp64 tensor (the op's ``den``)."""
    den = given if isinstance(given, torch.Tensor) else None
    return COV_POLICY_LOSS(
        old_log_prob, log_prob, advantages, mask, selected, stats, row_count, clip_mode, agg, clip_low, clip_high, kl_coef,
        weights, den, 0.0 if den is not None else given, mult,
    )


class _FusedCovLossFunction(torch.autograd.Function):
    """Selection + loss in one launch (``kernels.cov_launch.fused``); differentiable in
    ``log_prob`` like :func:`cov_policy_loss` (the saved ``coef`` is ∂loss/∂log_prob)."""

    @staticmethod
    def forward(ctx, old_log_prob, log_prob, advantages, mask, row_count, clip_mode, agg, ratio, clip_low, clip_high,
                lb, ub, kl_coef, seed, offset, weights, given, mult):
        loss, metrics, count, coef = _kernels.fused(
            old_log_prob, log_prob, advantages, mask, row_count, clip_mode, agg, ratio, clip_low, clip_high, lb, ub,
            kl_coef, seed, offset, weights, given, mult,
        )
        ctx.mark_non_differentiable(metrics, count)
        ctx.save_for_backward(coef)
        ctx.lp_dtype = log_prob.dtype
        return loss, metrics, count

    @staticmethod
    def backward(ctx, grad_loss, _grad_metrics, _grad_count):
        (coef,) = ctx.saved_tensors
        return (None, (coef * grad_loss).to(ctx.lp_dtype)) + (None,) * 16


def row_count(mask: torch.Tensor, agg: int) -> Optional[torch.Tensor]:
    """Σ m per sequence (fp32 ``[B]``) for the seq-mean reductions (``agg`` 1 and 2: the
    sequences with a valid token are the denominator, and seq-mean-token-mean divides by each
    sequence's Σ m); None for the token reduction (token-mean, token-sum).

    Example
    -------
    >>> row_count(torch.tensor([[1, 1, 0], [0, 0, 0]]), 2), row_count(torch.ones(2, 3), 0)
    (tensor([2., 0.]), None)
    """
    if agg == 0:
        return None
    return torch.where(mask > 0, mask.to(torch.float32), 0.0).sum(-1)


def fused_policy_loss(
    old_log_prob, log_prob, advantages, mask, rule: CovRule, agg: int, kl_coef: float,
    seed: Optional[torch.Tensor], offset: Optional[torch.Tensor], weights: Optional[torch.Tensor] = None,
    given=0.0, mult: float = 1.0,
) -> Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(loss, metrics [pg_clipfrac, ppo_kl, pg_clipfrac_lower], n_selected)`` from the one-launch
    selection + loss kernel, or None where it does not apply: while tracing (torch.compile takes
    the ops), on the torch path, with ``EK_COV_FUSED=0``, or where the device refused the
    cooperative launch. Same values as :func:`cov_select` followed by :func:`cov_policy_loss`."""
    if not _backend.launch_triton_directly(log_prob):
        return None
    return _kernels.one_launch_or_phases(
        log_prob.device,
        lambda: _FusedCovLossFunction.apply(
            old_log_prob, log_prob, advantages, mask, row_count(mask, agg), rule.clip_mode, agg, rule.ratio,
            rule.clip_low, rule.clip_high, rule.lb, rule.ub, kl_coef, seed, offset, weights, given, mult,
        ),
        lambda: None,  # the caller's phase path (it computes row_count itself)
        "Clip-Cov/KL-Cov kernel",
    )


def masked_stats(log_prob, advantages, mask) -> torch.Tensor:
    """``cov_stats``, launched directly in eager mode."""
    return COV_STATS(log_prob, advantages, mask)


# --------------------------------------------------------------------------------------------
# the selection behind the public functions and the losses (training.policy_loss)


def select_tokens(
    log_prob, advantages, mask, old_log_prob, rule: CovRule, seed, offset, group
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(selected, local stats)``, single-process or global over ``group``'s ranks
    (:func:`~entropy_kernels.ops.distributed_select.global_cov_select`); inputs are detached
    here. Eagerly one cooperative launch (``kernels.cov_launch.select_fused``) where the device
    allows it, else the five phase launches; while tracing, the ``cov_select`` op.

    Example
    -------
    >>> lp = torch.tensor([[-1.0, -0.5, -3.0, -2.0]]); adv = torch.tensor([[1.0, 2.0, -1.0, 0.5]])
    >>> select_tokens(lp, adv, torch.ones(1, 4), None, CovRule.kl_cov(0.5), None, None, None)[0]
    tensor([[False,  True,  True, False]])
    """
    log_prob, advantages = log_prob.detach(), advantages.detach()
    old_log_prob = old_log_prob.detach() if old_log_prob is not None else None
    if group is not None:
        return global_cov_select(log_prob, advantages, mask, old_log_prob, rule, seed, offset, group)
    return COV_SELECT(log_prob, advantages, mask, old_log_prob, *rule.flat(), seed, offset)


# --------------------------------------------------------------------------------------------
# public functions


def clip_cov_select(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_ratio: float = 0.2,
    clip_ratio_low: Optional[float] = None,
    clip_ratio_high: Optional[float] = None,
    clip_cov_ratio: float = 2e-4,
    clip_cov_lb: float = 1.0,
    clip_cov_ub: float = 5.0,
    generator: Optional[torch.Generator] = None,
    seed: Optional[torch.Tensor] = None,
    offset: Optional[torch.Tensor] = None,
    process_group=None,
) -> torch.Tensor:
    """Clip-Cov's tokens: a uniform random sample of ``n = max(int(clip_cov_ratio·Σ mask), 1)``
    of the eligible tokens (all of them if fewer), computed on the device without host sync.

    A token is eligible when it is valid (``mask > 0``), not already PPO-clipped (``L2 > L1``
    with ``L1 = −A·r``, ``L2 = −A·clamp(r, 1−ε_low, 1+ε_high)``, ``r = exp(lp − old_lp)``) and
    its covariance ``(A − mean A)·(lp − mean lp)`` (masked means, float64) lies strictly inside
    ``(clip_cov_lb, clip_cov_ub)``. The sample is the ``n`` largest of independent random keys
    (Philox on CUDA, keyed by ``(seed, offset + flat index)``; a splitmix64 counter hash on the
    CPU path, so CPU and CUDA pick different, equally distributed, samples for one seed).

    Parameters
    ----------
    old_log_prob, log_prob, advantages : Tensor ``[B, T]`` floating (``log_prob`` is detached here)
    response_mask : Tensor ``[B, T]`` bool / 0-1 (values weight the means, as verl's ``masked_mean``)
    clip_ratio, clip_ratio_low, clip_ratio_high : float — PPO's ε (low/high default to ``clip_ratio``)
    clip_cov_ratio : float in (0, 1]; clip_cov_lb < clip_cov_ub : the covariance band
    generator : torch.Generator, optional — one seed is drawn from it on the device
    seed, offset : one-element int64 tensors on the inputs' device (instead of ``generator``;
        the form a CUDA graph can capture: advance ``offset`` by ``B·T`` per step)
    process_group : torch.distributed group, optional — global selection over the ranks' batches
        (means over all ranks, ``n`` from the global Σ mask; see
        :func:`~entropy_kernels.ops.distributed_select.global_cov_select`)

    Returns
    -------
    Bool tensor ``[B, T]`` with exactly ``min(n, #eligible)`` True entries, all eligible.

    Example
    -------
    >>> import torch, entropy_kernels as ek
    >>> lp = torch.tensor([[-1.0, -4.0, -2.0, -0.5]]); old = lp.clone()
    >>> adv = torch.tensor([[2.0, -3.0, 1.0, 0.0]])
    >>> mask = torch.ones(1, 4)                        # covs 1.75, 6.375, -0.125, 0
    >>> ek.clip_cov_select(old, lp, adv, mask, clip_cov_ratio=0.5, clip_cov_ub=10.0)  # n = 2
    tensor([[ True,  True, False, False]])
    >>> g = torch.Generator().manual_seed(0)          # band (1, 5): one eligible token
    >>> ek.clip_cov_select(old, lp, adv, mask, clip_cov_ratio=0.5, generator=g)
    tensor([[ True, False, False, False]])
    """
    old_log_prob, log_prob, advantages, response_mask = _validation.check_policy_inputs(
        old_log_prob, log_prob, advantages, response_mask
    )
    low, high, ratio, lb, ub = _validation.clip_cov_options(
        clip_ratio, clip_ratio_low, clip_ratio_high, clip_cov_ratio, clip_cov_lb, clip_cov_ub
    )
    _validation.check_process_group("process_group", process_group)
    seed, offset = _validation.seed_and_offset(generator, seed, offset, "log_prob", log_prob)
    rule = CovRule.clip_cov(ratio, low, high, lb, ub)
    sel, _ = select_tokens(log_prob.detach(), advantages, response_mask, old_log_prob, rule, seed, offset, process_group)
    return sel


def kl_cov_select(
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    kl_cov_ratio: float = 2e-4,
    process_group=None,
) -> torch.Tensor:
    """KL-Cov's tokens: the ``k = max(1, int(kl_cov_ratio·#valid))`` valid tokens with the
    largest covariance ``(A − mean A)·(lp − mean lp)`` (masked means), on the device.

    The covariance is computed in float64 and ranked as float32; ties (equal float32 values) go
    to the lower flattened index, so exactly ``k`` tokens are selected (none if no token is
    valid). NaN covariances rank below every other valid token.

    Parameters
    ----------
    log_prob, advantages : Tensor ``[B, T]`` floating (``log_prob`` is detached here)
    response_mask : Tensor ``[B, T]`` bool / 0-1
    kl_cov_ratio : float in (0, 1]
    process_group : torch.distributed group, optional — global top-k over the ranks' batches

    Example
    -------
    >>> import torch, entropy_kernels as ek
    >>> lp = torch.tensor([[-1.0, -0.5, -3.0, -2.0], [-1.0, -1.0, -1.0, -1.0]])
    >>> adv = torch.tensor([[1.0, 2.0, -1.0, 0.5], [9.0, 9.0, 9.0, 9.0]])
    >>> mask = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]])
    >>> ek.kl_cov_select(lp, adv, mask, kl_cov_ratio=0.5)   # covs 0.34, 1.47, 3.28, -0.01
    tensor([[False,  True,  True, False],
            [False, False, False, False]])
    """
    _, log_prob, advantages, response_mask = _validation.check_policy_inputs(
        None, log_prob, advantages, response_mask, with_old=False
    )
    ratio = _validation.check_fraction("kl_cov_ratio", kl_cov_ratio)
    _validation.check_process_group("process_group", process_group)
    sel, _ = select_tokens(log_prob.detach(), advantages, response_mask, None, CovRule.kl_cov(ratio), None, None, process_group)
    return sel
