"""Clip-Cov / KL-Cov policy losses: loss, metrics and gradients against float64 oracles written
here from verl's code (every ``loss_agg_mode``), the verl-style baseline of the reference
module, verl itself when importable, the fused hidden-states path, edge cases, opcheck,
torch.compile and (GPU) a CUDA-graph capture of a whole forward + backward."""

import pytest
import torch

import entropy_kernels as ek
from conftest import aot_once
from entropy_kernels import config
from entropy_kernels.reference.policy_loss import verl_clip_cov_loss, verl_kl_cov_loss
from entropy_kernels.training import LOSS_AGG_MODES, clip_cov_policy_loss, kl_cov_policy_loss, linear_cov_policy_loss

import verl_core_algos
from test_cov_select import make_batch, oracle_clip_eligible, run, small_blocks  # noqa: F401  (fixture)


def oracle_agg(loss_mat, mask, mode, dp_size=1, batch_num_tokens=None, global_batch_size=None, loss_scale_factor=None):
    """verl 0.9.1's agg_loss, written out from its code (0/1 mask): the seq-mean modes average
    over the sequences with a valid token; an empty local denominator counts as 1."""
    m = mask.to(loss_mat.dtype)
    masked = loss_mat * m
    if mode == "token-mean":
        n = m.sum().clamp_min(1) if batch_num_tokens is None else batch_num_tokens
        return masked.sum() / n * dp_size
    if mode == "token-sum":
        return masked.sum() * dp_size
    seq = masked.sum(-1)
    if mode == "seq-mean-token-mean":
        seq = seq / m.sum(-1).clamp_min(1)
    n_seq = (m.sum(-1) > 0).sum().clamp_min(1) if global_batch_size is None else global_batch_size
    loss = seq.sum() / n_seq * dp_size
    if mode == "seq-mean-token-sum-norm":
        loss = loss / (mask.shape[-1] if loss_scale_factor is None else loss_scale_factor)
    return loss


def oracle_clip_cov(old, lp, adv, mask, selected, mode, low=0.2, high=0.2, weights=None, **info):
    """verl's compute_policy_loss_clip_cov after the selection, float64, autograd."""
    ratio = torch.exp(lp - old)
    l1, l2 = -adv * ratio, -adv * torch.clamp(ratio, 1 - low, 1 + high)
    corr = torch.where(selected, 0.0, 1.0).double()
    m = mask.double()
    tok = torch.maximum(l1, l2) * corr
    return oracle_agg(tok if weights is None else tok * weights, mask, mode, **info), {
        "pg_clipfrac": ((corr == 0).double() * m).sum() / m.sum().clamp_min(1),
        "ppo_kl": (-(lp - old) * m).sum().detach() / m.sum().clamp_min(1),
    }


def oracle_kl_cov(old, lp, adv, mask, selected, mode, coef, weights=None, **info):
    d = lp - old
    loss = torch.where(selected, -adv * torch.exp(d) + coef * d.abs(), -adv * torch.exp(d))
    m = mask.double()
    return oracle_agg(loss if weights is None else loss * weights, mask, mode, **info), {
        "ppo_kl": (d.abs() * m).sum().detach() / m.sum().clamp_min(1)
    }


def rel_err(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30)) if b.norm() > 0 else float(a.norm())


def loss_err(loss, want, o, y, a, mask, mode, **info):
    """|loss − want| relative to the aggregated magnitude of the loss terms. The losses sum terms of
    both signs, so a sum that happens to land near 0 would make ``rel_err`` of the scalar measure
    fp32 cancellation, not the implementation (seen as rare seed-dependent failures)."""
    d = y.detach() - o
    scale = oracle_agg(a.abs() * torch.exp(d) + d.abs(), mask.cpu(), mode, **info)
    diff = (loss.detach().double().cpu() - want.detach()).abs()
    return float(diff / max(float(want.detach().abs()), float(scale), 1e-30))


def clip_kl_err(got, want, o, y, mask):
    """Clip-Cov's ppo_kl is a masked mean of ``old − lp``, terms of both signs: relative to the
    mean |old − lp| (as loss_err does for the loss), not to a mean that may cancel to ~0."""
    m = mask.cpu().double()
    scale = float(((y.detach() - o).abs() * m).sum() / m.sum().clamp_min(1))
    diff = float((got.detach().double().cpu() - want.detach()).abs())
    return diff / max(float(want.detach().abs()), scale, 1e-30)


def _double(*xs):
    return [x.detach().double().cpu() for x in xs]


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.interpreter_pairwise
def test_clip_cov_loss_and_gradient_vs_oracle(backend, small_blocks, mode, dtype):  # noqa: F811
    b, t = (3, 50) if backend.name == "cpu-triton-interpreter" else (6, 300)
    old, lp, adv, mask = make_batch(b, t, backend.device, scale=2.0)
    mask[1] = False  # one sequence without valid tokens
    old, lp, adv = old.to(dtype), lp.to(dtype), adv.to(dtype)
    x = lp.clone().requires_grad_()
    kw = dict(clip_ratio_low=0.2, clip_ratio_high=0.28, clip_cov_ratio=0.05, clip_cov_lb=0.1, clip_cov_ub=3.0)
    loss, metrics = run(backend, clip_cov_policy_loss, old, x, adv, mask, mode,
                        generator=torch.Generator(backend.device).manual_seed(0), **kw)
    loss.backward()
    sel = run(backend, ek.clip_cov_select, old, lp, adv, mask, generator=torch.Generator(backend.device).manual_seed(0), **kw)
    assert int(metrics["n_selected"]) == int(sel.sum()) > 0
    o, y, a = _double(old, lp, adv)
    y.requires_grad_()
    want, wm = oracle_clip_cov(o, y, a, mask.cpu(), sel.cpu(), mode, 0.2, 0.28)
    want.backward()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert loss_err(loss, want, o, y, a, mask, mode) <= tol and rel_err(x.grad, y.grad) <= tol
    assert rel_err(metrics["pg_clipfrac"], wm["pg_clipfrac"]) <= 1e-6 and clip_kl_err(metrics["ppo_kl"], wm["ppo_kl"], o, y, mask) <= tol
    assert torch.all(x.grad[sel] == 0), "selected Clip-Cov tokens must get exactly zero gradient"
    assert loss.dtype == torch.float32 and metrics["ppo_kl"].dim() == 0


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.interpreter_pairwise
def test_kl_cov_loss_and_gradient_vs_oracle(backend, small_blocks, mode, dtype):  # noqa: F811
    b, t = (3, 50) if backend.name == "cpu-triton-interpreter" else (6, 300)
    old, lp, adv, mask = make_batch(b, t, backend.device)
    old, lp, adv = old.to(dtype), lp.to(dtype), adv.to(dtype)
    x = lp.clone().requires_grad_()
    loss, metrics = run(backend, kl_cov_policy_loss, old, x, adv, mask, mode, kl_cov_ratio=0.05, ppo_kl_coef=1.0)
    loss.backward()
    sel = run(backend, ek.kl_cov_select, lp, adv, mask, kl_cov_ratio=0.05)
    o, y, a = _double(old, lp, adv)
    y.requires_grad_()
    want, wm = oracle_kl_cov(o, y, a, mask.cpu(), sel.cpu(), mode, 1.0)
    want.backward()
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float64: 1e-12}[dtype]
    assert loss_err(loss, want, o, y, a, mask, mode) <= tol and rel_err(x.grad, y.grad) <= tol and rel_err(metrics["ppo_kl"], wm["ppo_kl"]) <= max(tol, 1e-6)
    assert float(metrics["pg_clipfrac"]) == 0.0


# verl's config.global_batch_info: the data-parallel / global-batch denominators of agg_loss
GLOBAL_BATCH_INFO = {
    "local": {},
    "dp2": dict(dp_size=2, batch_num_tokens=1234, global_batch_size=9),
    "dp1-given": dict(batch_num_tokens=777, global_batch_size=5, loss_scale_factor=64),
}


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("info", list(GLOBAL_BATCH_INFO))
def test_global_batch_info_and_rollout_weights_vs_oracle(backend, mode, info):
    """verl's global-batch normalisation and rollout-correction weights, both losses: loss,
    gradient and metrics against the float64 oracles (the metrics stay local means, as verl's)."""
    info = GLOBAL_BATCH_INFO[info]
    b, t = (3, 40) if backend.name == "cpu-triton-interpreter" else (5, 200)
    old, lp, adv, mask = make_batch(b, t, backend.device, scale=2.0)
    mask[1] = False
    weights = torch.rand(b, t, device=backend.device) * 2
    gen = lambda: torch.Generator(backend.device).manual_seed(4)  # noqa: E731
    kw = dict(clip_cov_ratio=0.05, clip_cov_lb=0.1, clip_cov_ub=3.0)
    x, z = lp.clone().requires_grad_(), lp.clone().requires_grad_()
    lc, mc = run(backend, clip_cov_policy_loss, old, x, adv, mask, mode, generator=gen(), rollout_is_weights=weights, **kw, **info)
    lk, mk = run(backend, kl_cov_policy_loss, old, z, adv, mask, mode, kl_cov_ratio=0.05, ppo_kl_coef=0.5,
                 rollout_is_weights=weights, **info)
    (lc + lk).backward()
    sel_c = run(backend, ek.clip_cov_select, old, lp, adv, mask, generator=gen(), **kw).cpu()
    sel_k = run(backend, ek.kl_cov_select, lp, adv, mask, kl_cov_ratio=0.05).cpu()
    assert sel_c.any() and int(mc["n_selected"]) == int(sel_c.sum())
    o, y, a = _double(old, lp, adv)
    w = weights.double().cpu()
    yc, yk = y.clone().requires_grad_(), y.clone().requires_grad_()
    want_c, wmc = oracle_clip_cov(o, yc, a, mask.cpu(), sel_c, mode, weights=w, **info)
    want_k, wmk = oracle_kl_cov(o, yk, a, mask.cpu(), sel_k, mode, 0.5, weights=w, **info)
    (want_c + want_k).backward()
    assert loss_err(lc, want_c, o, y, a, mask, mode, **info) <= 1e-5 and rel_err(x.grad, yc.grad) <= 1e-5
    assert loss_err(lk, want_k, o, y, a, mask, mode, **info) <= 1e-5 and rel_err(z.grad, yk.grad) <= 1e-5
    assert rel_err(mc["pg_clipfrac"], wmc["pg_clipfrac"]) <= 1e-6 and rel_err(mk["ppo_kl"], wmk["ppo_kl"]) <= 1e-5
    assert torch.all(x.grad[sel_c.to(x.device)] == 0)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_counts_as_tensors_equal_counts_as_numbers(backend, mode):
    """batch_num_tokens / global_batch_size as one-element tensors (read by the kernels on the
    device) give the same losses and gradients as the same Python numbers; a count of 0 means
    "not given" both ways."""
    old, lp, adv, mask = make_batch(3, 40, backend.device, scale=2.0)
    seed, off = torch.tensor([2], device=backend.device), torch.tensor([0], device=backend.device)
    for tokens, seqs in ((1234, 9), (0, 0), (77, 2)):
        results = []
        for as_tensor in (False, True):
            wrap = (lambda v: torch.tensor(v, device=backend.device)) if as_tensor else (lambda v: v)  # noqa: E731
            info = dict(dp_size=2, batch_num_tokens=wrap(tokens), global_batch_size=wrap(seqs))
            x = lp.clone().requires_grad_()
            a, _ = run(backend, clip_cov_policy_loss, old, x, adv, mask, mode, clip_cov_ratio=0.1, clip_cov_lb=0.05,
                       seed=seed, offset=off, **info)
            b, _ = run(backend, kl_cov_policy_loss, old, x, adv, mask, mode, kl_cov_ratio=0.1, **info)
            (a + 2 * b).backward()
            results.append([a, b, x.grad])
        for by_number, by_tensor in zip(*results):
            assert torch.allclose(by_tensor.detach(), by_number.detach(), rtol=1e-6, atol=0), (tokens, seqs)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_kl_cov_equals_verl_style_baseline(backend, mode):
    old, lp, adv, mask = make_batch(4, 120, backend.device)
    x = lp.clone().requires_grad_()
    loss, metrics = run(backend, kl_cov_policy_loss, old, x, adv, mask, mode, kl_cov_ratio=0.02, ppo_kl_coef=0.5)
    loss.backward()
    o, y, a = _double(old, lp, adv)
    y.requires_grad_()
    want, wm = verl_kl_cov_loss(o, y, a, mask.cpu().double(), mode, kl_cov_ratio=0.02, ppo_kl_coef=0.5)
    want.backward()
    assert loss_err(loss, want, o, y, a, mask, mode) <= 1e-5 and rel_err(x.grad, y.grad) <= 1e-5 and rel_err(metrics["ppo_kl"], wm["ppo_kl"]) <= 1e-5


def test_clip_cov_equals_verl_style_baseline_given_its_selection(backend):
    old, lp, adv, mask = make_batch(4, 120, backend.device, scale=3.0)
    o, y, a = _double(old, lp, adv)
    y.requires_grad_()
    want, wm = verl_clip_cov_loss(o, y, a, mask.cpu().double(), clip_cov_ratio=0.05, clip_cov_lb=0.1,
                                  generator=torch.Generator().manual_seed(3))
    want.backward()
    # its choice, replayed: verl's nonzero order (row-major) of the float64 eligible set, the
    # same randperm stream, the first min(n, #eligible)
    eligible = oracle_clip_eligible(o, y.detach(), a, mask.cpu(), lb=0.1)
    idx = torch.nonzero(eligible)
    n = max(int(0.05 * float(mask.sum())), 1)
    idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(3))[: min(n, len(idx))]]
    sel = torch.zeros_like(eligible)
    sel[idx[:, 0], idx[:, 1]] = True
    assert sel.any()
    x = lp.clone().requires_grad_()
    loss, metrics = run(backend, clip_cov_policy_loss, old, x, adv, mask, selection=sel.to(backend.device))
    loss.backward()
    assert loss_err(loss, want, o, y, a, mask, "token-mean") <= 1e-5 and rel_err(x.grad, y.grad) <= 1e-5
    assert rel_err(metrics["pg_clipfrac"], wm["pg_clipfrac"]) <= 1e-6 and clip_kl_err(metrics["ppo_kl"], wm["ppo_kl"], o, y, mask) <= 1e-5


VERL = verl_core_algos.load()
needs_verl = pytest.mark.skipif(VERL is None, reason="verl is not installed (README: pip install --no-deps verl)")


def _verl_batch(empty_row):
    old, lp, adv, mask = make_batch(4, 150, "cpu", scale=2.0)
    if empty_row:
        mask[1] = False  # a fully masked sequence: left out of the seq-mean denominators
    return old, lp, adv, mask


def _verl_extras(extras, mask):
    """``(global_batch_info, rollout_is_weights)`` for the verl comparisons."""
    if extras == "plain":
        return {}, None
    info = dict(dp_size=2, batch_num_tokens=int(mask.sum()) * 2 + 5, global_batch_size=7, loss_scale_factor=None)
    return info, torch.rand(mask.shape) * 2


@needs_verl
@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("empty_row", [False, True], ids=["dense", "empty-row"])
@pytest.mark.parametrize("extras", ["plain", "dp2-weights"])
def test_kl_cov_equals_verl(backend, mode, empty_row, extras):
    """verl's own compute_policy_loss_kl_cov on the same inputs: loss, gradient and ppo_kl; also
    with verl's global_batch_info (dp_size 2) and rollout_is_weights."""
    old, lp, adv, mask = _verl_batch(empty_row)
    info, weights = _verl_extras(extras, mask)
    y = lp.clone().requires_grad_()
    cfg = verl_core_algos.config(kl_cov_ratio=0.03, ppo_kl_coef=0.5)
    cfg.global_batch_info = dict(info)
    want, wm = VERL.compute_policy_loss_kl_cov(old, y, adv, mask.float(), mode, cfg, rollout_is_weights=weights)
    want.backward()
    dev = backend.device
    x = lp.to(dev).requires_grad_()
    extra = {} if weights is None else dict(rollout_is_weights=weights.to(dev))
    loss, metrics = run(backend, kl_cov_policy_loss, old.to(dev), x, adv.to(dev), mask.to(dev), mode,
                        kl_cov_ratio=0.03, ppo_kl_coef=0.5, **extra, **info)
    loss.backward()
    o, yy, a = _double(old, lp, adv)
    assert loss_err(loss, want.double(), o, yy, a, mask, mode, **info) <= 1e-5 and rel_err(x.grad, y.grad) <= 1e-5
    assert abs(float(metrics["ppo_kl"]) - wm["actor/ppo_kl"]) <= 1e-5 * abs(wm["actor/ppo_kl"])


@needs_verl
@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("empty_row", [False, True], ids=["dense", "empty-row"])
@pytest.mark.parametrize("extras", ["plain", "dp2-weights"])
def test_clip_cov_equals_verl_given_its_random_choice(backend, mode, empty_row, extras, monkeypatch):
    """verl's own compute_policy_loss_clip_cov; its random choice (``nonzero`` of its eligible
    tokens, ``randperm``) is recorded and passed to ours as ``selection=``: the same loss,
    gradient and metrics."""
    old, lp, adv, mask = _verl_batch(empty_row)
    info, weights = _verl_extras(extras, mask)
    seen = {}
    real_nonzero, real_randperm = torch.nonzero, torch.randperm
    monkeypatch.setattr(torch, "nonzero", lambda *a, **k: seen.setdefault("idx", real_nonzero(*a, **k)))
    monkeypatch.setattr(torch, "randperm", lambda *a, **k: seen.setdefault("perm", real_randperm(*a, **k)))
    y = lp.clone().requires_grad_()
    cfg = verl_core_algos.config(clip_cov_ratio=0.02, clip_cov_lb=0.2, clip_cov_ub=4.0)
    cfg.global_batch_info = dict(info)
    want, wm = VERL.compute_policy_loss_clip_cov(old, y, adv, mask.float(), mode, cfg, rollout_is_weights=weights)
    monkeypatch.undo()
    want.backward()
    n = max(int(0.02 * float(mask.sum())), 1)
    chosen = seen["idx"][seen["perm"][:n]]
    sel = torch.zeros_like(mask)
    sel[chosen[:, 0], chosen[:, 1]] = True
    assert sel.any() and not (sel & ~oracle_clip_eligible(old, lp, adv, mask, 0.2, 0.28, 0.2, 4.0)).any()
    dev = backend.device
    x = lp.to(dev).requires_grad_()
    extra = {} if weights is None else dict(rollout_is_weights=weights.to(dev))
    loss, metrics = run(backend, clip_cov_policy_loss, old.to(dev), x, adv.to(dev), mask.to(dev), mode,
                        clip_ratio_high=0.28, selection=sel.to(dev), **extra, **info)
    loss.backward()
    o, yy, a = _double(old, lp, adv)
    assert loss_err(loss, want.double(), o, yy, a, mask, mode, **info) <= 1e-5 and rel_err(x.grad, y.grad) <= 1e-5
    assert abs(float(metrics["pg_clipfrac"]) - wm["actor/pg_clipfrac"]) <= 1e-6
    assert clip_kl_err(metrics["ppo_kl"], torch.tensor(wm["actor/ppo_kl"], dtype=torch.float64), o, yy, mask) <= 1e-5


def test_zero_and_one_valid_tokens(backend):
    old, lp, adv, _ = make_batch(2, 9, backend.device)
    none = torch.zeros(2, 9, dtype=torch.bool, device=backend.device)
    for fn in (clip_cov_policy_loss, kl_cov_policy_loss):
        for mode in LOSS_AGG_MODES:
            x = lp.clone().requires_grad_()
            loss, metrics = run(backend, fn, old, x, adv, none, mode)
            loss.backward()
            assert float(loss.detach()) == 0.0 and torch.all(x.grad == 0)
            assert all(torch.isfinite(v).all() and float(v) == 0 for v in metrics.values())
    one = none.clone()
    one[0, 3] = True
    x = lp.clone().requires_grad_()
    loss, metrics = run(backend, kl_cov_policy_loss, old, x, adv, one, ppo_kl_coef=1.0)
    loss.backward()
    d = float(lp[0, 3] - old[0, 3])
    want = -float(adv[0, 3]) * torch.exp(torch.tensor(d)).item() + abs(d)
    assert abs(float(loss.detach()) - want) <= 1e-5 * max(1.0, abs(want)) and int(metrics["n_selected"]) == 1
    assert torch.count_nonzero(x.grad) <= 1


def test_fused_hidden_state_path_matches_logits(backend):
    if backend.name == "cpu-triton-interpreter":
        pytest.skip("the log-prob op's own interpreter tests cover its kernels; this checks the composition")
    b, t, d, v = 2, 12, 16, 40
    h = torch.randn(b, t, d, device=backend.device)
    w = torch.randn(v, d, device=backend.device) / d**0.5
    y = torch.randint(0, v, (b, t), device=backend.device)
    old, _, adv, mask = make_batch(b, t, backend.device)
    for loss_mode in ("clip_cov", "kl_cov"):
        hx = h.clone().requires_grad_()
        extra = dict(seed=torch.tensor([1], device=backend.device), offset=torch.tensor([0], device=backend.device),
                     clip_cov_lb=-10.0, clip_cov_ratio=0.1) if loss_mode == "clip_cov" else dict(kl_cov_ratio=0.1)
        loss, metrics = run(backend, linear_cov_policy_loss, hx, w, y, old, adv, mask, loss_mode, temperature=0.9, **extra)
        loss.backward()
        hr = h.double().clone().requires_grad_()
        logits = hr @ w.double().T / 0.9
        lp = torch.log_softmax(logits, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        if loss_mode == "clip_cov":
            sel = run(backend, ek.clip_cov_select, old, lp.detach().float(), adv, mask, **extra)
            want, _ = oracle_clip_cov(old.double(), lp, adv.double(), mask, sel, "token-mean")
        else:
            sel = run(backend, ek.kl_cov_select, lp.detach().float(), adv, mask, kl_cov_ratio=0.1)
            want, _ = oracle_kl_cov(old.double(), lp, adv.double(), mask, sel, "token-mean", 0.1)
        want.backward()
        assert rel_err(loss, want) <= 1e-4 and rel_err(hx.grad, hr.grad) <= 1e-4
        assert "entropy" in metrics and torch.isfinite(metrics["entropy"])


@pytest.mark.kernel_backends_only
def test_opcheck(backend):
    old, lp, adv, mask = make_batch(2, 37, backend.device, scale=2.0)
    sel = torch.rand(2, 37, device=backend.device) < 0.2
    ops = torch.ops.entropy_kernels
    with backend.context():
        stats = ops.cov_stats.default(lp, adv, mask)
        rows = mask.float().sum(-1)
        weights = torch.rand(2, 37, device=backend.device)
        den = torch.tensor(6.5, dtype=torch.float64, device=backend.device)
        cases = ((True, 0, None, None, None, 0.0, 1.0), (False, 1, rows, weights, None, 0.0, 37.0),
                 (True, 2, rows, None, None, 3.5, 1.0), (False, 2, rows, weights, den, 0.0, 1.0),
                 (False, 0, None, weights, None, 0.5, 1.0), (True, 1, rows, None, den, 0.0, 3.0))
        for i, (clip, agg, rc, w, d, given, mult) in enumerate(cases):
            torch.library.opcheck(ops.cov_policy_loss.default, (
                old, lp.clone().requires_grad_(), adv, mask, sel, stats, rc, clip, agg, 0.2, 0.28, 0.7, w, d, given, mult,
            ), **aot_once(i == 0))


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_eager_fast_path_equals_the_registered_ops(backend, monkeypatch, mode):
    """Eagerly the losses launch their kernels directly (custom-op dispatch costs more host time
    than the GPU work); EK_VIA_OPS=1 routes them through the torch.library ops instead.
    Both must give bit-identical losses, metrics, selections and gradients."""
    old, lp, adv, mask = make_batch(3, 41, backend.device, scale=2.0)
    seed, off = torch.tensor([11], device=backend.device), torch.tensor([5], device=backend.device)
    results = []
    for via_ops in ("0", "1"):
        monkeypatch.setattr(config.CONFIG, "via_ops", via_ops == "1")
        x = lp.clone().requires_grad_()
        with backend.context():
            a, ma = clip_cov_policy_loss(old, x, adv, mask, mode, clip_cov_ratio=0.1, clip_cov_lb=0.05, seed=seed, offset=off)
            b, mb = kl_cov_policy_loss(old, x, adv, mask, mode, kl_cov_ratio=0.1, ppo_kl_coef=0.5)
        (a + 2 * b).backward()
        results.append([a, b, *ma.values(), *mb.values(), x.grad])
    assert int(results[0][2 + 3]) > 0  # something was selected (n_selected of Clip-Cov)
    for fast, via_op in zip(*results):
        assert torch.equal(fast.detach(), via_op.detach())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()
    old, lp, adv, mask = make_batch(4, 100, device, scale=2.0)
    seed, off = torch.tensor([5], device=device), torch.tensor([0], device=device)

    weights = torch.rand(4, 100, device=device)

    def step(x):
        a, _ = clip_cov_policy_loss(old, x, adv, mask, clip_cov_ratio=0.05, clip_cov_lb=0.1, seed=seed, offset=off)
        b, _ = kl_cov_policy_loss(old, x, adv, mask, "seq-mean-token-mean", kl_cov_ratio=0.05)
        c, _ = kl_cov_policy_loss(old, x, adv, mask, "seq-mean-token-sum-norm", kl_cov_ratio=0.05, rollout_is_weights=weights,
                                  dp_size=2, global_batch_size=9)
        return a + b + c

    x1, x2 = lp.clone().requires_grad_(), lp.clone().requires_grad_()
    step(x1).backward()
    torch.compile(step, fullgraph=True)(x2).backward()
    assert torch.allclose(x1.grad, x2.grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("as_tensor", [False, True], ids=["ints", "tensors"])
def test_torch_compile_with_counts_that_change_every_step(device, as_tensor):
    """verl's batch_num_tokens / global_batch_size change every mini-batch: a compiled step must
    follow them (ints become symbolic after the first change; tensors never recompile)."""
    torch._dynamo.reset()
    old, lp, adv, mask = make_batch(4, 60, device, scale=2.0)

    def step(x, tokens, seqs):
        a, _ = kl_cov_policy_loss(old, x, adv, mask, "token-mean", kl_cov_ratio=0.05, dp_size=2, batch_num_tokens=tokens)
        b, _ = kl_cov_policy_loss(old, x, adv, mask, "seq-mean-token-mean", kl_cov_ratio=0.05, dp_size=2,
                                  global_batch_size=seqs)
        return a + b

    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(step, fullgraph=True, backend=counter)
    for tokens, seqs in ((400, 8), (333, 7), (512, 9)):
        args = (torch.tensor(tokens, device=device), torch.tensor(seqs, device=device)) if as_tensor else (tokens, seqs)
        x1, x2 = lp.clone().requires_grad_(), lp.clone().requires_grad_()
        want = step(x1, tokens, seqs)
        want.backward()
        got = compiled(x2, *args)
        got.backward()
        assert torch.allclose(got, want, rtol=1e-6) and torch.allclose(x2.grad, x1.grad, rtol=1e-6, atol=1e-9)
    assert counter.frame_count == (1 if as_tensor else 2)  # ints: one recompile, then symbolic


def _x(b=2, t=5):
    return torch.randn(b, t)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: kl_cov_policy_loss(_x(), _x(), _x(), torch.ones(2, 5), "token-max"), ValueError, "loss_agg_mode"),
        (lambda: kl_cov_policy_loss(_x(), _x(), _x(), torch.ones(2, 5), dp_size=2), ValueError, "batch_num_tokens"),
        (lambda: kl_cov_policy_loss(_x(), _x(), _x(), torch.ones(2, 5), "seq-mean-token-mean", dp_size=2), ValueError,
         "global_batch_size"),
        (lambda: kl_cov_policy_loss(_x(), _x(), _x(), torch.ones(2, 5), batch_num_tokens=torch.ones(2)), TypeError,
         "one real number"),
        (lambda: kl_cov_policy_loss(_x(), _x(), _x(), torch.ones(2, 5), "seq-mean-token-sum-norm",
                                    loss_scale_factor=torch.tensor(3.0)), TypeError, "loss_scale_factor"),
        (lambda: kl_cov_policy_loss(_x(), _x(), _x(), torch.ones(2, 5), dp_size=0), ValueError, "dp_size"),
        (lambda: kl_cov_policy_loss(_x(), _x(), _x(), torch.ones(2, 5), "seq-mean-token-sum-norm", loss_scale_factor=0),
         ValueError, "loss_scale_factor"),
        (lambda: kl_cov_policy_loss(_x(), _x(), _x(), torch.ones(2, 5), kl_ratio=0.1), TypeError, "kl_ratio"),
        (lambda: clip_cov_policy_loss(_x(), _x(), _x(), torch.ones(2, 5), rollout_is_weights=_x(2, 4)), ValueError,
         "rollout_is_weights"),
        (lambda: clip_cov_policy_loss(_x(), _x(), _x(), torch.ones(2, 5), rollout_is_weights=torch.ones(2, 5, dtype=torch.long)),
         TypeError, "rollout_is_weights"),
        (lambda: kl_cov_policy_loss(_x(), _x(), _x(), torch.ones(2, 5), ppo_kl_coef=-1.0), ValueError, "ppo_kl_coef"),
        (lambda: kl_cov_policy_loss(_x(), _x(), _x(), torch.ones(2, 5), kl_cov_ratio=2.0), ValueError, "kl_cov_ratio"),
        (lambda: kl_cov_policy_loss(_x(), _x(), _x(3, 5), torch.ones(2, 5)), ValueError, "advantages shape"),
        (lambda: clip_cov_policy_loss(_x(), _x(), _x(), torch.ones(2, 5), selection=torch.ones(2, 5)), TypeError, "selection"),
        (lambda: clip_cov_policy_loss(_x(), _x(), _x(), torch.ones(2, 5), selection=torch.ones(2, 4, dtype=torch.bool)),
         ValueError, "selection"),
        (lambda: clip_cov_policy_loss(_x(), _x(), _x(), torch.ones(2, 5), selection=torch.ones(2, 5, dtype=torch.bool),
                                      generator=torch.Generator()), ValueError, "selection"),
        (lambda: clip_cov_policy_loss(_x(), _x(), _x(), torch.ones(2, 5), clip_cov_ub=0.5), ValueError, "clip_cov_lb"),
        (lambda: linear_cov_policy_loss(torch.randn(2, 5, 4), torch.randn(7, 4), torch.zeros(2, 5, dtype=torch.long),
                                        _x(), _x(), torch.ones(2, 5), "ppo"), ValueError, "loss_mode"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---- GPU ------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_graph_capture_of_a_whole_loss_step():
    """Forward + backward of both losses captured once and replayed on new data: no host sync
    anywhere (capture fails on one), same results as eager."""
    b, t = 64, 1024
    old, lp, adv, mask = make_batch(b, t, "cuda", scale=2.0)
    x = lp.clone().requires_grad_()
    seed, off = torch.tensor([3], device="cuda"), torch.tensor([0], device="cuda")

    def step():
        x.grad = None
        l1, m1 = clip_cov_policy_loss(old, x, adv, mask, clip_cov_ratio=2e-3, seed=seed, offset=off)
        l2, m2 = kl_cov_policy_loss(old, x, adv, mask, "seq-mean-token-mean", kl_cov_ratio=2e-3)
        (l1 + l2).backward()
        return l1.detach(), l2.detach(), m1["pg_clipfrac"], m2["ppo_kl"]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    x.grad = None
    with torch.cuda.graph(graph):
        out = step()
        grad = x.grad
    new = make_batch(b, t, "cuda", scale=2.0)
    for dst, src in zip((old, lp, adv), new[:3]):
        dst.copy_(src)
    with torch.no_grad():
        x.copy_(lp)
    graph.replay()
    got = [o.clone() for o in out] + [grad.clone()]
    want = list(step()) + [x.grad]
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-6, atol=1e-9)


@pytest.mark.gpu
def test_cuda_graph_replay_reads_the_current_global_counts():
    """Counts passed as device tensors and updated in place between replays: the captured step
    uses the current value (a Python number would be baked into the graph)."""
    old, lp, adv, mask = make_batch(16, 512, "cuda", scale=2.0)
    x = lp.clone().requires_grad_()
    tokens = torch.tensor(10_000, device="cuda")

    def step():
        x.grad = None
        loss, _ = kl_cov_policy_loss(old, x, adv, mask, kl_cov_ratio=2e-3, dp_size=2, batch_num_tokens=tokens)
        loss.backward()
        return loss.detach()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
        grad = x.grad
    tokens.fill_(4_321)
    graph.replay()
    got, got_grad = out.clone(), grad.clone()
    want = step()
    assert torch.allclose(got, want, rtol=1e-6) and torch.allclose(got_grad, x.grad, rtol=1e-6, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_cuda_million_tokens_vs_oracle(mode):
    old, lp, adv, mask = make_batch(256, 4096, "cuda", scale=2.0)
    x = lp.clone().requires_grad_()
    loss, _ = kl_cov_policy_loss(old, x, adv, mask, mode, kl_cov_ratio=2e-4, ppo_kl_coef=1.0)
    loss.backward()
    sel = ek.kl_cov_select(lp, adv, mask, kl_cov_ratio=2e-4)
    o, y, a = _double(old, lp, adv)
    y.requires_grad_()
    want, _ = oracle_kl_cov(o, y, a, mask.cpu(), sel.cpu(), mode, 1.0)
    want.backward()
    assert loss_err(loss, want, o, y, a, mask, mode) <= 1e-5 and rel_err(x.grad, y.grad) <= 1e-5
