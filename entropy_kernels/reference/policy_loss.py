"""Clip-Cov / KL-Cov ("The Entropy Mechanism of RL for Reasoning LMs") in plain torch.

Two layers:

- building blocks (masked statistics, per-token covariance, eligibility, the token counts, the
  top-k-by-key selection, the per-token loss) written with tensor ops only — no host
  synchronisation, so they also serve as the CPU path and the fake (meta) impl of the ops;
- :func:`verl_clip_cov_loss` / :func:`verl_kl_cov_loss`: the loss the way verl computes it
  (``nonzero``, ``randperm``, ``.item()``, a copy to the CPU), the benchmark baseline.

Conventions shared with the kernels (``kernels/cov_phases.py``, ``kernels/radix_select.py``):

- ``mask``: a token is *valid* where ``mask > 0``; mask values weight the means (verl's
  ``masked_mean``), so a 0/1 mask gives plain means over the valid tokens.
- Statistics ``stats = (Σ m·A, Σ m·lp, Σ m, #valid)`` in float64; means are 0 when Σ m = 0.
- Covariance ``cov = (A − mean A)·(lp − mean lp)`` in float64 (``lp`` detached).
- Selection keys are integers in ``[0, 2**32)``; 0 means "never selected". The selection is the
  ``k`` largest keys, ties broken by the lower flattened index, so it has exactly
  ``min(k, #keys > 0)`` tokens. KL-Cov keys are the covariance rounded to float32, mapped to
  an order-preserving integer (NaN ranks lowest among the valid tokens); Clip-Cov keys are
  independent uniform random integers in ``[1, 2**31]`` on the eligible tokens.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

# the keys, counts and loss aggregation are the package's definitions (shared with the kernels'
# launchers and the training wrappers); re-exported here for the oracle's callers
from ..loss_aggregation import (  # noqa: F401
    LOSS_AGG_MODES, SEQ_TOKEN_MEAN_REDUCTION, SEQ_TOKEN_SUM_REDUCTION, TOKEN_SUM_REDUCTION, Count, aggregate,
    agg_normalization, reduce_loss_weights, sequence_count,
)
from ..selection_keys import clip_cov_count, float_key, kl_cov_count, random_key  # noqa: F401


def masked_stats(log_prob: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(Σ m·A, Σ m·lp, Σ m, #valid)`` over the valid tokens, float64 ``[4]``.

    Example
    -------
    >>> lp = torch.tensor([[-1.0, -2.0, -9.0]]); a = torch.tensor([[1.0, 3.0, 7.0]])
    >>> masked_stats(lp, a, torch.tensor([[1, 1, 0]]))
    tensor([ 4., -3.,  2.,  2.], dtype=torch.float64)
    """
    valid = mask > 0
    w = torch.where(valid, mask.double(), 0.0)
    zero = torch.zeros((), dtype=torch.float64, device=log_prob.device)
    sa = torch.where(valid, w * advantages.double(), zero).sum()
    sl = torch.where(valid, w * log_prob.detach().double(), zero).sum()
    return torch.stack([sa, sl, w.sum(), valid.sum().double()])


def token_covariance(log_prob: torch.Tensor, advantages: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """``(A − mean A)·(lp − mean lp)`` in float64, the means taken from ``stats``."""
    den = torch.where(stats[2] > 0, stats[2], 1.0)
    return (advantages.double() - stats[0] / den) * (log_prob.detach().double() - stats[1] / den)


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def ppo_surrogates(
    old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ratio, L1 = −A·ratio, L2 = −A·clamp(ratio, 1−ε_low, 1+ε_high))`` in fp32 (fp64 for fp64 input)."""
    dt = compute_dtype(log_prob)
    ratio = torch.exp(log_prob.to(dt) - old_log_prob.to(dt))
    a = advantages.to(dt)
    return ratio, -a * ratio, -a * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)


def clip_cov_eligible(
    old_log_prob, log_prob, advantages, mask, stats, clip_low: float, clip_high: float, lb: float, ub: float
) -> torch.Tensor:
    """Valid, not already PPO-clipped (``L2 > L1``), and ``lb < cov < ub`` (open interval)."""
    _, l1, l2 = ppo_surrogates(old_log_prob, log_prob.detach(), advantages, clip_low, clip_high)
    cov = token_covariance(log_prob, advantages, stats)
    return (mask > 0) & ~(l2 > l1) & (cov > lb) & (cov < ub)


def select_top(key: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Bool mask of the ``k`` largest keys (``key > 0`` only), ties → lower flattened index."""
    flat = key.reshape(-1)
    order = torch.sort(flat, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return ((rank < k) & (flat > 0)).reshape(key.shape)


def kl_cov_keys(log_prob, advantages, mask, stats) -> torch.Tensor:
    return torch.where(mask > 0, float_key(token_covariance(log_prob, advantages, stats)), 0)


def clip_cov_keys(old_log_prob, log_prob, advantages, mask, stats, clip_low, clip_high, lb, ub, uniform) -> torch.Tensor:
    eligible = clip_cov_eligible(old_log_prob, log_prob, advantages, mask, stats, clip_low, clip_high, lb, ub)
    return torch.where(eligible, random_key(uniform), 0)



def _weighted(loss_mat: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
    """verl's rollout correction: the per-token loss times the (constant) importance weights."""
    return loss_mat if weights is None else loss_mat * weights.detach().to(loss_mat.dtype)


def cov_loss_parts_reference(
    old_log_prob, log_prob, advantages, mask, selected, stats, clip_mode: bool, reduction: int,
    clip_low: float, clip_high: float, kl_coef: float, weights: Optional[torch.Tensor] = None,
    given: Count = 0.0, mult: float = 1.0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, metrics [pg_clipfrac, ppo_kl], coef)`` with ``coef = ∂loss/∂log_prob`` written
    out analytically -- the CPU path of ``entropy_kernels::cov_policy_loss``. ``stats[2]`` is
    Σ m; ``reduction, given, mult`` as :func:`agg_normalization` returns them; ``weights``:
    verl's ``rollout_is_weights`` (constants multiplying each token's loss)."""
    dt = compute_dtype(log_prob)
    valid = mask > 0
    w = torch.where(valid, mask.to(dt), 0.0)
    lp, old, a = log_prob.detach().to(dt), old_log_prob.to(dt), advantages.to(dt)
    d = lp - old
    ratio = torch.exp(d)
    l1 = -a * ratio
    if clip_mode:
        l2 = -a * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
        # the selected tokens' terms times 0, as verl's ``loss * corr``: a NaN/inf stays NaN there
        l12 = torch.maximum(l1, l2)
        tok = torch.where(selected, l12 * 0.0, l12)
        grad = torch.where(selected, l1 * 0.0, torch.where(l2 > l1, 0.0, l1))
        kl = -d
    else:
        tok = torch.where(selected, l1 + kl_coef * d.abs(), l1)
        grad = torch.where(selected, l1 + kl_coef * torch.sign(d), l1)
        kl = d.abs()
    tok, grad = _weighted(tok, weights), _weighted(grad, weights)
    den_all = stats[2].to(dt)
    den_all = torch.where(den_all > 0, den_all, 1.0)
    # the loss is linear in the per-token terms: ∂loss/∂lp = the same reduction of ``grad``
    c = reduce_loss_weights(w, reduction, given, mult)
    loss = (c * torch.where(valid, tok, 0.0)).sum()
    coef = c * torch.where(valid, grad, 0.0)
    clipfrac = torch.where(valid & selected, w, 0.0).sum() / den_all if clip_mode else torch.zeros((), dtype=dt, device=lp.device)
    ppo_kl = torch.where(valid, w * kl, 0.0).sum() / den_all
    return loss, torch.stack([clipfrac, ppo_kl]).float(), coef.float() if dt != torch.float64 else coef


# --------------------------------------------------------------------------------------------
# verl-style implementations (host round trips and all): the benchmark baseline.


def verl_clip_cov_loss(
    old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", clip_ratio=0.2,
    clip_ratio_low=None, clip_ratio_high=None, clip_cov_ratio=2e-4, clip_cov_lb=1.0, clip_cov_ub=5.0,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Clip-Cov as verl computes it: ``nonzero`` of the eligible tokens, ``randperm``, ``.item()``."""
    clip_low = clip_ratio if clip_ratio_low is None else clip_ratio_low
    clip_high = clip_ratio if clip_ratio_high is None else clip_ratio_high
    mask = response_mask
    neg_kl = log_prob - old_log_prob
    ratio = torch.exp(neg_kl)
    ppo_kl = (-neg_kl * mask).sum() / mask.sum()
    l1 = -advantages * ratio
    l2 = -advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    clip_by_origin = (l2 > l1) & (mask > 0)
    mean_a = (advantages * mask).sum() / mask.sum()
    mean_lp = (log_prob.detach() * mask).sum() / mask.sum()
    cov = (advantages - mean_a) * (log_prob - mean_lp)
    cov[mask == 0] = -torch.inf
    cov[clip_by_origin] = -torch.inf
    clip_num = max(int(clip_cov_ratio * mask.sum().item()), 1)
    idx = torch.nonzero((cov < clip_cov_ub) & (cov > clip_cov_lb) & (mask > 0))
    corr = torch.ones_like(advantages)
    if len(idx) > 0:
        perm = torch.randperm(len(idx), generator=generator, device="cpu").to(idx.device)
        idx = idx[perm[: min(clip_num, len(idx))]]
        corr[idx[:, 0], idx[:, 1]] = 0
    clipfrac = ((corr == 0).float() * mask).sum() / mask.sum()
    loss = aggregate(torch.maximum(l1, l2) * corr, mask, loss_agg_mode)
    return loss, {"pg_clipfrac": clipfrac, "ppo_kl": ppo_kl}


def verl_kl_cov_loss(
    old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", kl_cov_ratio=2e-4, ppo_kl_coef=0.1
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """KL-Cov as verl computes it: the valid tokens gathered and copied to the CPU, ``torch.topk``."""
    neg_kl = log_prob - old_log_prob
    abs_kl = neg_kl.abs()
    ratio = torch.exp(neg_kl)
    ppo_kl_abs = (abs_kl * response_mask).sum() / response_mask.sum()
    pg_losses = -advantages * ratio
    pg_losses_kl = pg_losses + ppo_kl_coef * abs_kl
    valid = response_mask > 0
    valid_idx = torch.nonzero(valid.reshape(-1), as_tuple=True)[0]
    adv = advantages[valid].detach().reshape(-1).cpu()
    lp = log_prob[valid].detach().reshape(-1).cpu()
    if len(adv) > 0:
        cov = (adv - adv.mean()) * (lp - lp.mean())
        k = max(1, int(len(cov) * kl_cov_ratio))
        top = valid_idx[torch.topk(cov, k, largest=True).indices.to(valid_idx.device)]
        t = advantages.shape[1]
        pg_losses = pg_losses.clone()
        pg_losses[top // t, top % t] = pg_losses_kl[top // t, top % t]
    loss = aggregate(pg_losses, response_mask, loss_agg_mode)
    return loss, {"pg_clipfrac": torch.zeros(()), "ppo_kl": ppo_kl_abs}
