"""verl's policy-loss interface (``training.verl_adapter``): verl's own Clip-Cov / KL-Cov on
the same inputs and config (data-parallel global-batch info and rollout weights included), the
config fields and defaults it reads, the metric names, and the registration in verl's registry."""

import types

import pytest
import torch

from entropy_kernels.reference.policy_loss import LOSS_AGG_MODES
from entropy_kernels.training import clip_cov_policy_loss
from entropy_kernels.training.verl_adapter import (
    compute_policy_loss_clip_cov,
    compute_policy_loss_kl_cov,
    register_with_verl,
)

import verl_core_algos
from test_cov_select import make_batch, oracle_clip_eligible, run
from test_policy_loss import _double, loss_err, rel_err

VERL = verl_core_algos.load()
needs_verl = pytest.mark.skipif(VERL is None, reason="verl is not installed (README: pip install --no-deps verl)")

INFOS = {
    "none": {},
    "dp2": dict(dp_size=2, batch_num_tokens=901, global_batch_size=11, loss_scale_factor=None),
    "dp1-norm": dict(dp_size=1, batch_num_tokens=None, global_batch_size=None, loss_scale_factor=33),
}


def _config(info, **policy_loss):
    cfg = verl_core_algos.config(**policy_loss)
    cfg.global_batch_info = dict(INFOS[info])
    return cfg


def _same_scalar(ours, theirs, tol=1e-5):
    return abs(float(ours) - float(theirs)) <= tol * max(1.0, abs(float(theirs)))


def _verl_and_ours(backend, verl_fn, our_fn, batch, mode, cfg, info):
    """Both on the same batch and config: returns our metrics, verl's metrics and our
    gradient, after checking loss and gradient."""
    old, lp, adv, mask, weights = batch
    y = lp.clone().requires_grad_()
    want, wm = verl_fn(old, y, adv, mask.float(), mode, cfg, rollout_is_weights=weights)
    want.backward()
    dev = backend.device
    x = lp.to(dev).requires_grad_()
    loss, metrics = run(backend, our_fn, old.to(dev), x, adv.to(dev), mask.to(dev), mode, cfg, weights.to(dev))
    loss.backward()
    o, yy, a = _double(old, lp, adv)
    info_kw = {k: v for k, v in INFOS[info].items() if v is not None}
    assert loss_err(loss, want.double(), o, yy, a, mask, mode, **info_kw) <= 1e-5 and rel_err(x.grad, y.grad) <= 1e-5
    assert set(wm) == set(metrics) and all(isinstance(v, torch.Tensor) and not v.requires_grad for v in metrics.values())
    return metrics, wm, x.grad


@needs_verl
@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("info", list(INFOS))
def test_kl_cov_adapter_equals_verl(backend, mode, info):
    old, lp, adv, mask = make_batch(4, 120, "cpu", scale=2.0)
    mask[2] = False
    batch = (old, lp, adv, mask, torch.rand(4, 120) * 2)
    cfg = _config(info, kl_cov_ratio=0.03)  # ppo_kl_coef unset: verl's default 1.0 on both sides
    metrics, wm, _ = _verl_and_ours(backend, VERL.compute_policy_loss_kl_cov, compute_policy_loss_kl_cov, batch, mode, cfg, info)
    assert _same_scalar(metrics["actor/ppo_kl"], wm["actor/ppo_kl"])


@needs_verl
@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("info", list(INFOS))
def test_clip_cov_adapter_equals_verl_when_the_choice_is_forced(backend, mode, info):
    """With ``clip_cov_ratio`` so large that n exceeds the eligible tokens, both implementations
    must detach every eligible token: no randomness left, so the losses must agree exactly."""
    old, lp, adv, mask = make_batch(4, 120, "cpu", scale=2.0)
    cfg = _config(info, clip_cov_ratio=0.5, clip_cov_lb=1.5, clip_cov_ub=2.0)
    eligible = oracle_clip_eligible(old, lp, adv, mask, 0.2, 0.28, 1.5, 2.0)
    assert 0 < int(eligible.sum()) < int(0.5 * float(mask.sum()))
    batch = (old, lp, adv, mask, torch.rand(4, 120) * 2)
    metrics, wm, grad = _verl_and_ours(backend, VERL.compute_policy_loss_clip_cov, compute_policy_loss_clip_cov, batch, mode,
                                       cfg, info)
    assert _same_scalar(metrics["actor/pg_clipfrac"], wm["actor/pg_clipfrac"], 1e-6)
    assert torch.all(grad.cpu()[eligible] == 0)


def test_clip_cov_adapter_reads_verls_config_fields(backend):
    """The adapter passes the config's fields (and verl's defaults for unset ones) to
    clip_cov_policy_loss: with torch's default generator in the same state, the same loss,
    gradient and metrics as the direct call with those arguments."""
    old, lp, adv, mask = make_batch(3, 80, backend.device, scale=2.0)
    cfg = types.SimpleNamespace(
        clip_ratio=0.25, clip_ratio_low=None, clip_ratio_high=0.3, global_batch_info={"dp_size": 1, "batch_num_tokens": None},
        policy_loss={"clip_cov_ratio": 0.1, "clip_cov_lb": 0.05, "clip_cov_ub": None},  # a plain dict works too
    )
    results = []
    for call in ("adapter", "direct"):
        torch.manual_seed(123)
        x = lp.clone().requires_grad_()
        if call == "adapter":
            loss, m = run(backend, compute_policy_loss_clip_cov, old, x, adv, mask, "seq-mean-token-mean", cfg)
            m = [m["actor/pg_clipfrac"], m["actor/ppo_kl"]]
        else:
            loss, m = run(backend, clip_cov_policy_loss, old, x, adv, mask, "seq-mean-token-mean", clip_ratio=0.25,
                          clip_ratio_low=0.25, clip_ratio_high=0.3, clip_cov_ratio=0.1, clip_cov_lb=0.05, clip_cov_ub=5.0)
            m = [m["pg_clipfrac"], m["ppo_kl"]]
        loss.backward()
        results.append([loss.detach(), *m, x.grad])
    assert float(results[0][1]) > 0  # something was detached
    for ours, direct in zip(*results):
        assert torch.equal(ours, direct)


@pytest.mark.parametrize("fn", [compute_policy_loss_clip_cov, compute_policy_loss_kl_cov])
def test_adapter_rejects_a_missing_config(fn):
    x = torch.randn(2, 5)
    with pytest.raises(ValueError, match="config"):
        fn(x, x, x, torch.ones(2, 5))


@needs_verl
def test_register_with_verl(monkeypatch):
    monkeypatch.setattr(VERL, "POLICY_LOSS_REGISTRY", dict(VERL.POLICY_LOSS_REGISTRY))
    verls_own = VERL.get_policy_loss_fn("kl_cov")
    replaced = register_with_verl()
    assert replaced == {"ek_clip_cov": None, "ek_kl_cov": None}
    assert VERL.get_policy_loss_fn("ek_clip_cov") is compute_policy_loss_clip_cov
    assert VERL.get_policy_loss_fn("ek_kl_cov") is compute_policy_loss_kl_cov
    assert VERL.get_policy_loss_fn("kl_cov") is verls_own  # verl's names untouched by default
    replaced = register_with_verl(["kl_cov"], replace=True)
    assert replaced["kl_cov"] is verls_own and VERL.get_policy_loss_fn("kl_cov") is compute_policy_loss_kl_cov
    with pytest.raises(ValueError, match="loss_modes"):
        register_with_verl(["vanilla"])
    verls_clip = VERL.get_policy_loss_fn("clip_cov")
    assert register_with_verl(["clip_cov"], prefix="", replace=True) == {"clip_cov": verls_clip}
