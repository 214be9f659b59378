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

import math
from typing import Dict, Optional, Tuple, Union

import torch

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "token-sum", "seq-mean-token-sum-norm")

# the three reductions the kernels implement (``AGG``): every mode is one of them with a denominator
TOKEN_SUM_REDUCTION, SEQ_TOKEN_SUM_REDUCTION, SEQ_TOKEN_MEAN_REDUCTION = 0, 1, 2


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


def sequence_count(w: torch.Tensor) -> torch.Tensor:
    """The seq-mean denominator of verl's ``agg_loss``: the sequences (rows of the ``[B, T]``
    weights ``w``) with at least one valid token -- at least 1, so an empty batch gives 0."""
    return (w.sum(-1) > 0).sum().clamp_min(1).to(w.dtype)


Count = Union[float, torch.Tensor]


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
