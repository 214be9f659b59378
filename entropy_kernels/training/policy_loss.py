"""Clip-Cov and KL-Cov policy losses (verl's ``policy_loss.loss_mode = clip_cov | kl_cov``) with
the token selection on the device: no ``nonzero``, ``randperm``, ``.item()`` or copy to the CPU,
so a whole training step can be captured in a CUDA graph.

Semantics and defaults follow verl (docs/ops/policy-losses.md). The loss is aggregated over the local
micro-batch with ``loss_agg_mode``, or with the global denominators of verl's
``global_batch_info`` (``dp_size``, ``batch_num_tokens``, ``global_batch_size``,
``loss_scale_factor``) when given; ``process_group`` makes the *selection* global (means and
top-k over every rank's batch), as the paper describes. verl's own calling convention:
:mod:`entropy_kernels.training.verl_adapter`.
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Tuple, Union

import torch

from .. import _validation
from ..ops import cov_select as _ops
from ..ops.cov_rule import CovRule
from ..ops.linear_logprob_entropy import logprob_entropy
from ..loss_aggregation import agg_normalization

Metrics = Dict[str, torch.Tensor]


class _Aggregation(NamedTuple):
    """How the per-token losses become the loss: the kernels' reduction and denominator
    (``loss_aggregation.agg_normalization``) and the per-token weights."""

    reduction: int
    given: Union[float, torch.Tensor]
    mult: float
    weights: Optional[torch.Tensor]


GLOBAL_BATCH_INFO = ("dp_size", "batch_num_tokens", "global_batch_size", "loss_scale_factor")


def _aggregation(log_prob, loss_agg_mode, rollout_is_weights, global_batch_info) -> _Aggregation:
    unknown = sorted(set(global_batch_info) - set(GLOBAL_BATCH_INFO))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {unknown}; the global-batch arguments are {GLOBAL_BATCH_INFO}")
    reduction, given, mult = agg_normalization(loss_agg_mode, log_prob.shape[-1], **global_batch_info)
    if isinstance(given, torch.Tensor):
        given = given.to(log_prob.device)
    weights = None
    if rollout_is_weights is not None:
        _validation.check_tensor("rollout_is_weights", rollout_is_weights)
        _validation.check_float_dtype("rollout_is_weights", rollout_is_weights)
        if tuple(rollout_is_weights.shape) != tuple(log_prob.shape):
            raise ValueError(f"rollout_is_weights shape {tuple(rollout_is_weights.shape)} must equal log_prob's {tuple(log_prob.shape)}")
        _validation.check_same_device("rollout_is_weights", rollout_is_weights, "log_prob", log_prob)
        weights = rollout_is_weights.detach().contiguous()
    return _Aggregation(reduction, given, mult, weights)


def _check_selection(selection, log_prob) -> torch.Tensor:
    if not isinstance(selection, torch.Tensor):
        raise TypeError(f"selection must be a bool torch.Tensor, got {type(selection).__name__}")
    if selection.dtype != torch.bool:
        raise TypeError(f"selection must be a bool tensor, got {selection.dtype}")
    if tuple(selection.shape) != tuple(log_prob.shape) or selection.device != log_prob.device:
        raise ValueError(
            f"selection must be [B, T] = {tuple(log_prob.shape)} on {log_prob.device}, got {tuple(selection.shape)} on {selection.device}"
        )
    return selection.contiguous()


def _metrics(pg_clipfrac, ppo_kl, pg_clipfrac_lower, n_selected) -> Metrics:
    return {"pg_clipfrac": pg_clipfrac, "ppo_kl": ppo_kl, "pg_clipfrac_lower": pg_clipfrac_lower, "n_selected": n_selected}


def _loss(old_log_prob, log_prob, advantages, mask, selected, stats, rule: CovRule, agg: _Aggregation, coef) -> Tuple[torch.Tensor, Metrics]:
    loss, metrics, _ = _ops.policy_loss_parts(
        old_log_prob, log_prob, advantages, mask, selected, stats, _ops.row_count(mask, agg.reduction), rule.clip_mode,
        agg.reduction, rule.clip_low, rule.clip_high, coef, agg.weights, agg.given, agg.mult,
    )
    lower = torch.zeros((), dtype=metrics.dtype, device=metrics.device)
    return loss, _metrics(metrics[0], metrics[1], lower, selected.sum())


def _fused(old_log_prob, log_prob, advantages, mask, rule: CovRule, agg: _Aggregation, coef, seed, offset):
    """The one-launch path (``ops.cov_select.fused_policy_loss``), or None where it does not apply."""
    out = _ops.fused_policy_loss(
        old_log_prob, log_prob, advantages, mask, rule, agg.reduction, coef, seed, offset, agg.weights, agg.given, agg.mult,
    )
    if out is None:
        return None
    loss, metrics, count = out
    return loss, _metrics(metrics[0], metrics[1], metrics[2], count)


def clip_cov_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
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
    selection: Optional[torch.Tensor] = None,
    process_group=None,
    rollout_is_weights: Optional[torch.Tensor] = None,
    **global_batch_info,
) -> Tuple[torch.Tensor, Metrics]:
    """Clip-Cov: the PPO-clip loss ``max(L1, L2)`` with a random sample of high-covariance tokens
    detached (their loss is multiplied by 0, so they get exactly zero gradient).

    ``L1 = −A·r``, ``L2 = −A·clamp(r, 1−ε_low, 1+ε_high)``, ``r = exp(lp − old_lp)``; the
    selection is :func:`entropy_kernels.clip_cov_select` (``n = max(int(clip_cov_ratio·Σ mask), 1)``
    tokens, uniformly among the valid, not PPO-clipped tokens with
    ``clip_cov_lb < cov < clip_cov_ub``), or the given ``selection``.

    Parameters
    ----------
    old_log_prob, log_prob, advantages, response_mask : Tensor ``[B, T]``
        As in verl; only ``log_prob`` receives a gradient.
    loss_agg_mode : "token-mean" | "seq-mean-token-sum" | "seq-mean-token-mean" | "token-sum" |
        "seq-mean-token-sum-norm" -- verl's ``agg_loss``. Without any valid token the loss and the
        metrics are 0 (not nan), with zero gradient.
    clip_ratio, clip_ratio_low, clip_ratio_high, clip_cov_ratio, clip_cov_lb, clip_cov_ub
        verl's arguments and defaults (0.2, = clip_ratio, = clip_ratio, 2e-4, 1.0, 5.0).
    generator, seed, offset
        Randomness of the sample (see :func:`entropy_kernels.clip_cov_select`).
    selection : bool Tensor ``[B, T]``, optional
        Use this selection instead of sampling one (e.g. to reproduce another implementation).
    process_group : optional
        Global selection across data-parallel ranks; the loss stays per rank.
    rollout_is_weights : Tensor ``[B, T]``, optional
        verl's rollout correction: each token's loss (and gradient) times this constant weight.
    **global_batch_info : ``dp_size``, ``batch_num_tokens``, ``global_batch_size``, ``loss_scale_factor``
        verl's ``config.global_batch_info``: normalise by the global batch instead of the
        micro-batch, as verl's ``agg_loss`` (``loss_aggregation.agg_normalization``). The
        counts may be Python numbers or one-element tensors: pass tensors (updated in place)
        when a step that changes them is captured in a CUDA graph -- a Python number is baked
        into the graph -- or compiled (a new number would recompile).

    Returns
    -------
    ``(loss, metrics)``: 0-dim loss (fp32; fp64 for fp64 ``log_prob``) and 0-dim tensors
    ``pg_clipfrac`` (fraction of valid tokens detached, as verl logs it), ``ppo_kl``
    (masked mean of ``old_lp − lp``), ``pg_clipfrac_lower`` (0, as verl), ``n_selected``.

    Example
    -------
    >>> import torch
    >>> from entropy_kernels.training import clip_cov_policy_loss
    >>> g = torch.Generator().manual_seed(0)
    >>> old = -torch.rand(4, 64) * 3
    >>> lp = (old + 0.1 * torch.randn(4, 64, generator=g)).requires_grad_()
    >>> adv = torch.randn(4, 1, generator=g).expand(4, 64)
    >>> loss, m = clip_cov_policy_loss(old, lp, adv, torch.ones(4, 64), clip_cov_ratio=0.02, generator=g)
    >>> loss.backward()
    >>> int(m["n_selected"]) <= 5, bool((lp.grad == 0).sum() >= m["n_selected"])
    (True, True)
    """
    old_log_prob, log_prob, advantages, mask = _validation.check_policy_inputs(old_log_prob, log_prob, advantages, response_mask)
    agg = _aggregation(log_prob, loss_agg_mode, rollout_is_weights, global_batch_info)
    low, high, ratio, lb, ub = _validation.clip_cov_options(
        clip_ratio, clip_ratio_low, clip_ratio_high, clip_cov_ratio, clip_cov_lb, clip_cov_ub
    )
    rule = CovRule.clip_cov(ratio, low, high, lb, ub)
    _validation.check_process_group("process_group", process_group)
    if selection is not None:
        if generator is not None or seed is not None or process_group is not None:
            raise ValueError("selection replaces the sampling: do not pass generator, seed/offset or process_group with it")
        selected = _check_selection(selection, log_prob)
        stats = _ops.masked_stats(log_prob.detach(), advantages, mask)
    else:
        # offset None means 0 to the one-launch kernel (saves an allocation and a fill)
        seed, offset = _validation.seed_and_offset(generator, seed, offset, "log_prob", log_prob, zero_offset=False)
        if process_group is None:
            out = _fused(old_log_prob, log_prob, advantages, mask, rule, agg, 0.0, seed, offset)
            if out is not None:
                return out
        if offset is None:
            offset = torch.zeros_like(seed)
        selected, stats = _ops.select_tokens(log_prob.detach(), advantages, mask, old_log_prob, rule, seed, offset, process_group)
    return _loss(old_log_prob, log_prob, advantages, mask, selected, stats, rule, agg, 0.0)


def kl_cov_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    *,
    kl_cov_ratio: float = 2e-4,
    ppo_kl_coef: float = 0.1,
    selection: Optional[torch.Tensor] = None,
    process_group=None,
    rollout_is_weights: Optional[torch.Tensor] = None,
    **global_batch_info,
) -> Tuple[torch.Tensor, Metrics]:
    """KL-Cov: the unclipped policy-gradient loss ``−A·exp(d)``, ``d = lp − old_lp``, plus
    ``ppo_kl_coef·|d|`` on the ``k = max(1, int(kl_cov_ratio·#valid))`` valid tokens of largest
    covariance (:func:`entropy_kernels.kl_cov_select`); their gradient gets ``β·sign(d)``.

    Parameters
    ----------
    old_log_prob, log_prob, advantages, response_mask : Tensor ``[B, T]``
    loss_agg_mode : as :func:`clip_cov_policy_loss`
    kl_cov_ratio : float in (0, 1] (verl's default 2e-4; the paper uses 2e-3 for 7B models)
    ppo_kl_coef : float ≥ 0 (verl's ``PolicyLossConfig`` default 0.1; the paper's runs use 1)
    selection, process_group, rollout_is_weights, global_batch_info : as :func:`clip_cov_policy_loss`

    Returns
    -------
    ``(loss, metrics)``; ``ppo_kl`` is the masked mean of ``|d|`` and ``pg_clipfrac`` is 0, as
    verl reports them.

    Example
    -------
    >>> import torch
    >>> from entropy_kernels.training import kl_cov_policy_loss
    >>> old = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    >>> lp = torch.tensor([[-0.9, -2.2, -0.4, -3.0]], requires_grad=True)
    >>> adv = torch.tensor([[1.0, -1.0, 2.0, 0.5]])
    >>> loss, m = kl_cov_policy_loss(old, lp, adv, torch.ones(1, 4), kl_cov_ratio=0.25, ppo_kl_coef=1.0)
    >>> loss.backward()                         # token 2 has the largest cov: gets +|d|
    >>> round(loss.item(), 4), m["n_selected"].item(), lp.grad
    (-0.7242, 1, tensor([[-0.2763,  0.2047, -0.3026, -0.1250]]))
    >>> m["ppo_kl"]                               # masked mean of |d|
    tensor(0.1000)
    """
    old_log_prob, log_prob, advantages, mask = _validation.check_policy_inputs(old_log_prob, log_prob, advantages, response_mask)
    agg = _aggregation(log_prob, loss_agg_mode, rollout_is_weights, global_batch_info)
    rule = CovRule.kl_cov(_validation.check_fraction("kl_cov_ratio", kl_cov_ratio))
    coef = _validation.check_nonneg("ppo_kl_coef", ppo_kl_coef)
    _validation.check_process_group("process_group", process_group)
    if selection is not None:
        if process_group is not None:
            raise ValueError("selection replaces the top-k: do not pass process_group with it")
        selected = _check_selection(selection, log_prob)
        stats = _ops.masked_stats(log_prob.detach(), advantages, mask)
    else:
        if process_group is None:
            out = _fused(old_log_prob, log_prob, advantages, mask, rule, agg, coef, None, None)
            if out is not None:
                return out
        selected, stats = _ops.select_tokens(log_prob.detach(), advantages, mask, None, rule, None, None, process_group)
    return _loss(old_log_prob, log_prob, advantages, mask, selected, stats, rule, agg, coef)


def linear_cov_policy_loss(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_mode: str = "clip_cov",
    loss_agg_mode: str = "token-mean",
    *,
    bias: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    impl: str = "auto",
    **loss_options,
) -> Tuple[torch.Tensor, Metrics]:
    """End to end without ``[N, V]`` logits: log-probs of ``labels`` from the final hidden states
    and the LM head (:func:`entropy_kernels.linear_logprob_entropy`), then the Clip-Cov or KL-Cov
    loss. The metrics also hold the masked mean ``entropy`` of the policy (detached).

    Parameters
    ----------
    hidden : Tensor ``[B, T, D]`` — the states that predict the response tokens (for a
        prompt+response sequence: ``hidden[:, -R-1:-1]``, see ``response_logprobs_and_entropy``)
    lm_head_weight : Tensor ``[V, D]``; labels : int64 ``[B, T]`` (the response tokens)
    old_log_prob, advantages, response_mask : ``[B, T]``
    loss_mode : "clip_cov" | "kl_cov"
    loss_options : the keyword arguments of :func:`clip_cov_policy_loss` / :func:`kl_cov_policy_loss`

    Example
    -------
    >>> import torch
    >>> from entropy_kernels.training import linear_cov_policy_loss
    >>> h = torch.randn(2, 8, 16, requires_grad=True); w = torch.randn(50, 16)
    >>> y = torch.randint(0, 50, (2, 8)); old = -torch.rand(2, 8) * 4
    >>> loss, m = linear_cov_policy_loss(h, w, y, old, torch.randn(2, 8), torch.ones(2, 8), "kl_cov")
    >>> loss.backward(); h.grad.shape, sorted(m)
    (torch.Size([2, 8, 16]), ['entropy', 'n_selected', 'pg_clipfrac', 'pg_clipfrac_lower', 'ppo_kl'])
    """
    if loss_mode not in ("clip_cov", "kl_cov"):
        raise ValueError(f"loss_mode must be 'clip_cov' or 'kl_cov', got {loss_mode!r}")
    _validation.check_tensor("hidden", hidden)
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be a [B, T, D] tensor, got shape {tuple(hidden.shape)}")
    # the loss's own arguments before the log-probs are computed (the GEMMs are the cost)
    agg_normalization(loss_agg_mode, hidden.shape[1])
    for name, t in (("old_log_prob", old_log_prob), ("advantages", advantages), ("response_mask", response_mask)):
        _validation.check_tensor(name, t)
        if tuple(t.shape) != tuple(hidden.shape[:2]):
            raise ValueError(f"{name} shape {tuple(t.shape)} must be hidden's [B, T] = {tuple(hidden.shape[:2])}")
    log_prob, entropy = logprob_entropy(hidden, lm_head_weight, labels, bias=bias, temperature=temperature, impl=impl,
                                        weight_name="lm_head_weight")
    fn = clip_cov_policy_loss if loss_mode == "clip_cov" else kl_cov_policy_loss
    loss, metrics = fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, **loss_options)
    valid = response_mask > 0
    w = torch.where(valid, response_mask.to(torch.float32), 0.0)
    den = w.sum()
    metrics["entropy"] = torch.where(valid, entropy.detach() * w, 0.0).sum() / torch.where(den > 0, den, 1.0)
    return loss, metrics
