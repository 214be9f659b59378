"""The Clip-Cov / KL-Cov losses behind verl's policy-loss interface, so a verl trainer uses the
kernels by configuration alone.

verl looks its policy losses up by name (``actor_rollout_ref.actor.policy_loss.loss_mode``) in
``verl.trainer.ppo.core_algos.POLICY_LOSS_REGISTRY`` and calls them as
``fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights)``.
:func:`compute_policy_loss_clip_cov` / :func:`compute_policy_loss_kl_cov` have that signature,
read the same fields of ``config`` with the same defaults (``clip_ratio*``,
``policy_loss.clip_cov_*`` / ``kl_cov_ratio`` / ``ppo_kl_coef``, ``global_batch_info``) and
return the same metric names; :func:`register_with_verl` puts them in the registry.

Differences from verl's own functions, all deliberate:

- no host synchronisation in the loss: the metrics are detached 0-dim tensors, not Python
  floats (verl's ``ppo_loss`` wraps them in its ``Metric``, which reads them with ``.item()``
  right away -- one sync per metric there, as with verl's own losses -- while a step captured
  in a CUDA graph or a caller of its own can keep them on the device);
- Clip-Cov's random choice comes from counter-based keys on the device (seeded from torch's
  default generator of the device), not from ``torch.randperm`` on the CPU: the same
  distribution, a different draw;
- KL-Cov ranks the covariance in float64 rounded to float32 with ties to the lower index
  (verl: fp32 ``torch.topk``, ties unspecified).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

import torch

from .policy_loss import GLOBAL_BATCH_INFO, clip_cov_policy_loss, kl_cov_policy_loss

LOSS_MODES = ("clip_cov", "kl_cov")


def _field(obj: Any, name: str, default=None):
    """``obj.name`` for verl's dataclass / OmegaConf configs, ``obj[name]`` for plain dicts;
    ``default`` when missing or None (verl's ``x if x is not None else default``)."""
    if obj is None:
        return default
    value = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
    return default if value is None else value


def _global_batch_info(config) -> Dict[str, Any]:
    """The set entries of ``config.global_batch_info`` (verl fills it per micro-batch; None means
    "use the local batch", which is also what our losses do when an entry is absent)."""
    info = _field(config, "global_batch_info", {}) or {}
    return {k: info[k] for k in GLOBAL_BATCH_INFO if info.get(k) is not None}


def _check_config(config) -> None:
    if config is None or _field(config, "policy_loss") is None:
        raise ValueError("config must be verl's actor config (with .policy_loss), as verl passes it to its policy losses")


def _verl_policy_loss(loss: Callable, metrics: Tuple[str, ...]):
    """Decorator: ``arguments(config) -> loss's keyword arguments`` becomes verl's policy-loss
    function of the same name and docstring, with verl's signature ``(old_log_prob, log_prob,
    advantages, response_mask, loss_agg_mode="token-mean", config=None, rollout_is_weights=None)``:
    it checks ``config``, calls ``loss`` with those arguments, the global-batch info and the
    rollout weights, and returns ``metrics`` detached under verl's ``actor/`` names. (verl's
    interface once, for both losses.)"""

    def wrap(arguments: Callable[[Any], Dict[str, Any]]):
        def compute_policy_loss(
            old_log_prob: torch.Tensor,
            log_prob: torch.Tensor,
            advantages: torch.Tensor,
            response_mask: torch.Tensor,
            loss_agg_mode: str = "token-mean",
            config=None,
            rollout_is_weights: Optional[torch.Tensor] = None,
        ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
            _check_config(config)
            value, out = loss(
                old_log_prob, log_prob, advantages, response_mask, loss_agg_mode,
                **arguments(config),
                rollout_is_weights=rollout_is_weights,
                **_global_batch_info(config),
            )
            return value, {f"actor/{name}": out[name].detach() for name in metrics}

        compute_policy_loss.__name__ = compute_policy_loss.__qualname__ = arguments.__name__
        compute_policy_loss.__doc__ = arguments.__doc__
        return compute_policy_loss

    return wrap


@_verl_policy_loss(clip_cov_policy_loss, metrics=("pg_clipfrac", "ppo_kl"))
def compute_policy_loss_clip_cov(config) -> Dict[str, Any]:
    """verl's ``compute_policy_loss_clip_cov`` (same arguments, config fields, defaults and
    metric names) on :func:`entropy_kernels.training.clip_cov_policy_loss`.

    Example
    -------
    >>> import torch, types
    >>> from entropy_kernels.training.verl_adapter import compute_policy_loss_clip_cov
    >>> config = types.SimpleNamespace(clip_ratio=0.2, clip_ratio_low=None, clip_ratio_high=0.28,
    ...     policy_loss=types.SimpleNamespace(clip_cov_ratio=0.05, clip_cov_lb=None, clip_cov_ub=None),
    ...     global_batch_info={"dp_size": 1, "batch_num_tokens": None})
    >>> old = -torch.rand(2, 64) * 3
    >>> lp = (old + 0.1 * torch.randn(2, 64)).requires_grad_()
    >>> loss, metrics = compute_policy_loss_clip_cov(old, lp, torch.randn(2, 64), torch.ones(2, 64), config=config)
    >>> loss.backward(); sorted(metrics)
    ['actor/pg_clipfrac', 'actor/ppo_kl']
    """
    # (the decorator's body runs the loss; this one reads the config as verl's function does)
    policy = _field(config, "policy_loss")
    clip_ratio = _field(config, "clip_ratio", 0.2)
    return dict(
        clip_ratio=clip_ratio,
        clip_ratio_low=_field(config, "clip_ratio_low", clip_ratio),
        clip_ratio_high=_field(config, "clip_ratio_high", clip_ratio),
        clip_cov_ratio=_field(policy, "clip_cov_ratio", 2e-4),
        clip_cov_lb=_field(policy, "clip_cov_lb", 1.0),
        clip_cov_ub=_field(policy, "clip_cov_ub", 5.0),
    )


@_verl_policy_loss(kl_cov_policy_loss, metrics=("ppo_kl",))
def compute_policy_loss_kl_cov(config) -> Dict[str, Any]:
    """verl's ``compute_policy_loss_kl_cov`` (same arguments, config fields, defaults --
    ``kl_cov_ratio`` 2e-4, ``ppo_kl_coef`` 1.0 when unset -- and metric name) on
    :func:`entropy_kernels.training.kl_cov_policy_loss`.

    Example
    -------
    >>> import torch, types
    >>> from entropy_kernels.training.verl_adapter import compute_policy_loss_kl_cov
    >>> config = types.SimpleNamespace(policy_loss={"kl_cov_ratio": 0.1, "ppo_kl_coef": None})
    >>> old = -torch.rand(2, 64) * 3
    >>> lp = (old + 0.1 * torch.randn(2, 64)).requires_grad_()
    >>> loss, metrics = compute_policy_loss_kl_cov(old, lp, torch.randn(2, 64), torch.ones(2, 64), config=config)
    >>> loss.backward(); list(metrics)
    ['actor/ppo_kl']
    """
    policy = _field(config, "policy_loss")
    return dict(kl_cov_ratio=_field(policy, "kl_cov_ratio", 2e-4), ppo_kl_coef=_field(policy, "ppo_kl_coef", 1.0))


POLICY_LOSSES = {"clip_cov": compute_policy_loss_clip_cov, "kl_cov": compute_policy_loss_kl_cov}


def register_with_verl(loss_modes: Iterable[str] = LOSS_MODES, prefix: str = "ek_", replace: bool = False) -> Dict[str, Any]:
    """Register the kernel-backed losses in verl's policy-loss registry under ``prefix + mode``
    (select them with ``actor_rollout_ref.actor.policy_loss.loss_mode=ek_clip_cov``), and with
    ``replace=True`` also under verl's own names, so an unchanged config uses them.

    Call it in every process that computes the loss (verl's actor workers: e.g. from a module
    they import); returns ``{name: the function it replaced or None}``.

    Example
    -------
    >>> from entropy_kernels.training.verl_adapter import register_with_verl
    >>> register_with_verl()  # doctest: +SKIP
    {'ek_clip_cov': None, 'ek_kl_cov': None}
    """
    # checked before verl is imported: a string would be iterated character by character
    if isinstance(loss_modes, str) or not isinstance(loss_modes, Iterable):
        raise TypeError(f"loss_modes must be a list of mode names (e.g. ['clip_cov']), got {loss_modes!r}")
    loss_modes = list(loss_modes)
    for mode in loss_modes:
        if mode not in POLICY_LOSSES:
            raise ValueError(f"loss_modes must be among {tuple(POLICY_LOSSES)}, got {mode!r}")
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    if not isinstance(replace, bool):
        raise TypeError(f"replace must be True or False, got {replace!r}")
    from verl.trainer.ppo import core_algos

    replaced = {}
    for mode in loss_modes:
        if mode not in POLICY_LOSSES:
            raise ValueError(f"loss_modes must be among {tuple(POLICY_LOSSES)}, got {mode!r}")
        names = list(dict.fromkeys([prefix + mode] + ([mode] if replace else [])))  # prefix "" + replace: once
        for name in names:
            replaced[name] = core_algos.POLICY_LOSS_REGISTRY.get(name)
            core_algos.register_policy_loss(name)(POLICY_LOSSES[mode])
    return replaced
