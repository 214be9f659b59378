"""The one-launch Clip-Cov / KL-Cov path (``kernels.cov_launch.fused``: every phase of the
selection and the loss in one cooperative launch, grid barriers in between) against the
phase-per-launch path and the float64 oracles; its routing and its fallback.

Under Triton's interpreter the fused kernel runs as one program (the interpreter runs programs
one after another, so a barrier with more would never open); the multi-program phases are the
same ``@triton.jit`` functions, tested with several programs through the phase-per-launch path.
On a GPU it runs one program per SM."""

import pytest
import torch

import entropy_kernels as ek
from entropy_kernels import config
from entropy_kernels.reference.policy_loss import LOSS_AGG_MODES
from entropy_kernels.training import clip_cov_policy_loss, kl_cov_policy_loss
from test_cov_select import clip_count, make_batch, oracle_clip_eligible, small_blocks  # noqa: F401  (fixture)
from test_cov_select import oracle_kl_cov as oracle_top_k
from test_policy_loss import _double, loss_err, oracle_kl_cov, rel_err

try:
    from entropy_kernels.kernels import cov_launch as K
except Exception:  # pragma: no cover - no Triton
    K = None


def _both_losses(backend, old, lp, adv, mask, mode, seed, offset, **extra):
    """Clip-Cov and KL-Cov fwd+bwd on one leaf: [loss, metrics..., loss, metrics..., grad]."""
    x = lp.clone().requires_grad_()
    with backend.context():
        a, ma = clip_cov_policy_loss(old, x, adv, mask, mode, clip_cov_ratio=0.1, clip_cov_lb=0.05, seed=seed, offset=offset,
                                     **extra)
        b, mb = kl_cov_policy_loss(old, x, adv, mask, mode, kl_cov_ratio=0.1, ppo_kl_coef=0.5, **extra)
    (a + 2 * b).backward()
    return [a, *ma.values(), b, *mb.values(), x.grad]


def _needs_triton(backend):
    if backend.name == "cpu-reference" or K is None:
        pytest.skip("the fused kernel is a Triton kernel")


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.interpreter_pairwise
def test_fused_equals_the_phase_launches_bit_for_bit(backend, small_blocks, monkeypatch, mode, dtype):  # noqa: F811
    """Same programs, chunks and warps for both paths, so even the partial sums add up in the same
    order: loss, metrics, n_selected and gradient must be identical."""
    _check_fused_equals_phases(backend, monkeypatch, mode, dtype)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_fused_equals_the_phase_launches_with_weights_and_global_batch(backend, small_blocks, monkeypatch, mode):  # noqa: F811
    """The same with verl's rollout_is_weights and a data-parallel global-batch denominator."""
    b, t = (3, 70) if backend.name == "cpu-triton-interpreter" else (8, 5000)
    weights = torch.rand(b, t, device=backend.device) * 2
    _check_fused_equals_phases(backend, monkeypatch, mode, torch.float32, rollout_is_weights=weights, dp_size=4,
                               batch_num_tokens=3 * b * t + 1, global_batch_size=4 * b + 3, loss_scale_factor=100)


def _check_fused_equals_phases(backend, monkeypatch, mode, dtype, **extra):
    _needs_triton(backend)
    b, t = (3, 70) if backend.name == "cpu-triton-interpreter" else (8, 5000)
    old, lp, adv, mask = (x.to(dtype) if x.is_floating_point() else x for x in make_batch(b, t, backend.device, scale=2.0))
    seed, off = torch.tensor([7], device=backend.device), torch.tensor([3], device=backend.device)
    monkeypatch.setattr(K, "_grid", K._fused_grid)  # the phase launches on the fused kernel's grid
    monkeypatch.setattr(K, "FUSED_MAX_WARPS", 4)  # and the fused kernel with the phase kernels' warps
    calls = []
    real_fused = K.fused
    monkeypatch.setattr(K, "fused", lambda *a: calls.append(1) or real_fused(*a))
    monkeypatch.setattr(config.CONFIG, "cov_fused", True)
    fused = _both_losses(backend, old, lp, adv, mask, mode, seed, off, **extra)
    assert len(calls) == 2, "both losses must take the one-launch path"
    monkeypatch.setattr(config.CONFIG, "cov_fused", False)
    phases = _both_losses(backend, old, lp, adv, mask, mode, seed, off, **extra)
    assert len(calls) == 2
    assert int(fused[4]) > 0 and int(fused[9]) > 0  # n_selected of both losses
    for got, want in zip(fused, phases):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got.detach(), want.detach())


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_fused_kl_cov_vs_float64_oracle(backend, small_blocks, mode):  # noqa: F811
    """The fused path on its own against verl's formulas (selection from the oracle's top-k)."""
    _needs_triton(backend)
    b, t = (3, 60) if backend.name == "cpu-triton-interpreter" else (16, 3000)
    old, lp, adv, mask = make_batch(b, t, backend.device)
    x = lp.clone().requires_grad_()
    with backend.context():
        loss, metrics = kl_cov_policy_loss(old, x, adv, mask, mode, kl_cov_ratio=0.05, ppo_kl_coef=1.0)
    loss.backward()
    want_set, _ = oracle_top_k(lp, adv, mask, 0.05)
    sel = torch.zeros(b * t, dtype=torch.bool)
    sel[list(want_set)] = True
    sel = sel.reshape(b, t)
    o, y, a = _double(old, lp, adv)
    y.requires_grad_()
    want, wm = oracle_kl_cov(o, y, a, mask.cpu(), sel, mode, 1.0)
    want.backward()
    assert int(metrics["n_selected"]) == len(want_set)
    assert loss_err(loss, want, o, y, a, mask, mode) <= 1e-5 and rel_err(x.grad, y.grad) <= 1e-5
    assert rel_err(metrics["ppo_kl"], wm["ppo_kl"]) <= 1e-6 and float(metrics["pg_clipfrac_lower"]) == 0.0


def test_fused_clip_cov_selects_only_eligible_tokens(backend, small_blocks):  # noqa: F811
    """Clip-Cov through the fused path: the detached tokens (zero gradient where the oracle's
    gradient is not zero) are exactly n_selected eligible tokens."""
    _needs_triton(backend)
    b, t = (3, 80) if backend.name == "cpu-triton-interpreter" else (16, 3000)
    old, lp, adv, mask = make_batch(b, t, backend.device, scale=2.0)
    x = lp.clone().requires_grad_()
    with backend.context():
        loss, metrics = clip_cov_policy_loss(old, x, adv, mask, clip_cov_ratio=0.05, clip_cov_lb=0.1, clip_cov_ub=3.0,
                                             generator=torch.Generator(backend.device).manual_seed(1))
    loss.backward()
    elig = oracle_clip_eligible(old, lp, adv, mask, lb=0.1, ub=3.0)
    # an eligible token's unselected gradient is -A·r/Σm ≠ 0, so a zero gradient there means "selected"
    detached = elig & (x.grad.cpu() == 0)
    assert int(detached.sum()) == int(metrics["n_selected"]) == min(clip_count(mask, 0.05), int(elig.sum())) > 0


def test_routing_one_launch_and_fallback(backend, monkeypatch):
    """With the one-launch path on, the losses never call the phase launchers; a device that
    refuses the cooperative launch gets a warning and the phase launches, with the same result."""
    _needs_triton(backend)
    old, lp, adv, mask = make_batch(2, 40, backend.device, scale=2.0)
    seed, off = torch.tensor([2], device=backend.device), torch.tensor([0], device=backend.device)
    monkeypatch.setattr(K, "_grid", K._fused_grid)
    monkeypatch.setattr(config.CONFIG, "cov_fused", True)

    def no_phases(*args):
        raise AssertionError("a phase launcher was called on the one-launch path")

    with monkeypatch.context() as m:
        for name in ("select", "policy_loss"):
            m.setattr(K, name, no_phases)
        one_launch = _both_losses(backend, old, lp, adv, mask, "token-mean", seed, off)

    def refuse(*args):
        raise K.FusedLaunchUnavailable("too many blocks in cooperative launch")

    monkeypatch.setattr(K, "fused", refuse)
    with pytest.warns(UserWarning, match="one launch per phase"):
        fallback = _both_losses(backend, old, lp, adv, mask, "token-mean", seed, off)
    for got, want in zip(one_launch, fallback):
        assert torch.equal(got.detach(), want.detach())


def _both_selections(backend, old, lp, adv, mask, seed, offset):
    with backend.context():
        clip = ek.clip_cov_select(old, lp, adv, mask, clip_cov_ratio=0.1, clip_cov_lb=0.05, seed=seed, offset=offset)
        kl = ek.kl_cov_select(lp, adv, mask, kl_cov_ratio=0.1)
    return clip, kl


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_fused_selection_equals_the_phase_launches_bit_for_bit(backend, small_blocks, monkeypatch, dtype):  # noqa: F811
    """``clip_cov_select`` / ``kl_cov_select`` take the one-launch kernel (no phase launcher is
    called) and, on the phase launches' grid and warps, return the same selections and the
    same statistics bit for bit."""
    _needs_triton(backend)
    b, t = (3, 70) if backend.name == "cpu-triton-interpreter" else (8, 5000)
    old, lp, adv, mask = (x.to(dtype) if x.is_floating_point() else x for x in make_batch(b, t, backend.device, scale=2.0))
    seed, off = torch.tensor([5], device=backend.device), torch.tensor([11], device=backend.device)
    monkeypatch.setattr(K, "_grid", K._fused_grid)
    monkeypatch.setattr(K, "FUSED_MAX_WARPS", 4)
    monkeypatch.setattr(config.CONFIG, "cov_fused", True)
    with monkeypatch.context() as m:
        m.setattr(K, "select", lambda *a: pytest.fail("a phase launcher was called on the one-launch path"))
        fused = _both_selections(backend, old, lp, adv, mask, seed, off)
    monkeypatch.setattr(config.CONFIG, "cov_fused", False)
    phases = _both_selections(backend, old, lp, adv, mask, seed, off)
    for got, want in zip(fused, phases):
        assert got.dtype == torch.bool and got.shape == (b, t) and int(got.sum()) > 0
        assert torch.equal(got, want)
    for clip_mode in (True, False):  # the statistics the losses reuse (selection= with process_group)
        args = (lp, adv, mask, old if clip_mode else None, clip_mode, 0.1, 0.2, 0.2, 0.05, 5.0, seed, off)
        with backend.context():
            sel_f, st_f = K.select_fused(*args)
            sel_p, st_p = K.select(*args)
        assert torch.equal(sel_f, sel_p) and st_f.shape == st_p.shape == (4,) and torch.equal(st_f, st_p)


def test_fused_selection_falls_back_to_the_phase_launches(backend, monkeypatch):
    """A device that refuses the cooperative launch: a warning, then the phase launches (same
    selection as with ``EK_COV_FUSED=0``)."""
    _needs_triton(backend)
    old, lp, adv, mask = make_batch(2, 40, backend.device, scale=2.0)
    seed, off = torch.tensor([2], device=backend.device), torch.tensor([0], device=backend.device)
    monkeypatch.setattr(config.CONFIG, "cov_fused", False)
    want = _both_selections(backend, old, lp, adv, mask, seed, off)
    monkeypatch.setattr(config.CONFIG, "cov_fused", True)

    def refuse(*args):
        raise K.FusedLaunchUnavailable("too many blocks in cooperative launch")

    monkeypatch.setattr(K, "select_fused", refuse)
    with pytest.warns(UserWarning, match="one launch per phase"):
        got = _both_selections(backend, old, lp, adv, mask, seed, off)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_selection_only_and_explicit_selection_keep_the_phase_path(backend, monkeypatch):
    """``selection=`` and the public selection functions do not use the fused loss kernel."""
    _needs_triton(backend)
    old, lp, adv, mask = make_batch(2, 30, backend.device, scale=2.0)

    def no_fused(*args):
        raise AssertionError("fused kernel called")

    monkeypatch.setattr(K, "fused", no_fused)
    with backend.context():
        sel = ek.kl_cov_select(lp, adv, mask, kl_cov_ratio=0.2)
        loss, metrics = kl_cov_policy_loss(old, lp.clone().requires_grad_(), adv, mask, selection=sel)
    assert int(metrics["n_selected"]) == int(sel.sum()) > 0 and torch.isfinite(loss)


def test_fused_disabled_by_the_switch(monkeypatch):
    """EK_COV_FUSED=0 (read into config.CONFIG at import, or by config.reload()) and
    config.override turn the one-launch path off; unset, it is on."""
    if K is None:
        pytest.skip("no Triton")
    with monkeypatch.context() as m:
        m.setenv("EK_COV_FUSED", "0")
        config.reload()
        assert not K.fused_enabled(torch.device("cpu"))
        m.delenv("EK_COV_FUSED")
        config.reload()
        assert K.fused_enabled(torch.device("cpu"))
        with config.override(cov_fused=False):
            assert not K.fused_enabled(torch.device("cpu"))
        assert K.fused_enabled(torch.device("cpu"))
    config.reload()  # back to this process's environment


# ---- GPU ------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_fused_ties_across_many_programs_vs_oracle(monkeypatch):
    """KL-Cov with every covariance equal within a sequence (constant advantage and log-prob per
    row): the threshold key is shared by thousands of tokens spread over many programs (32-token
    blocks), so the tie ranks must be carried across programs through the grid barriers. The
    selection must be the oracle's (lowest flat indices first), also with the phase launches."""
    monkeypatch.setattr(K, "MAX_BLOCK", 32)
    b, t = 64, 777
    lp = (-torch.arange(1, b + 1, dtype=torch.float32) / 8).repeat_interleave(t).reshape(b, t)
    adv = torch.linspace(-2, 2, b).repeat_interleave(t).reshape(b, t)
    old = lp - 0.01
    mask = torch.rand(b, t) < 0.9
    want_set, _ = oracle_top_k(lp, adv, mask, 0.3)
    want = torch.zeros(b * t, dtype=torch.bool)
    want[list(want_set)] = True
    for flag in ("1", "0"):
        monkeypatch.setattr(config.CONFIG, "cov_fused", flag != "0")
        x = lp.cuda().requires_grad_()
        loss, metrics = kl_cov_policy_loss(old.cuda(), x, adv.cuda(), mask.cuda(), kl_cov_ratio=0.3, ppo_kl_coef=1.0)
        loss.backward()
        # selected tokens get the extra +β·sign(d) = +1/Σm in their gradient
        o, y, a = _double(old, lp, adv)
        y.requires_grad_()
        ref, _ = oracle_kl_cov(o, y, a, mask, want.reshape(b, t), "token-mean", 1.0)
        ref.backward()
        assert int(metrics["n_selected"]) == len(want_set)
        assert rel_err(x.grad, y.grad) <= 1e-6 and loss_err(loss, ref, o, y, a, mask, "token-mean") <= 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize("n_tokens", [65_536, 1_048_576])
def test_cuda_fused_many_programs_vs_phases(n_tokens):
    """One program per SM (fused, grid barriers) against four per SM (phase launches): the same
    selection (n_selected and the zero-gradient pattern), losses equal to fp32 rounding."""
    b = n_tokens // 4096
    old, lp, adv, mask = make_batch(b, 4096, "cuda", scale=2.0)
    seed, off = torch.tensor([9], device="cuda"), torch.tensor([0], device="cuda")
    out = {}
    for flag in ("1", "0"):
        with pytest.MonkeyPatch.context() as m:
            m.setattr(config.CONFIG, "cov_fused", flag != "0")
            x = lp.clone().requires_grad_()
            a, ma = clip_cov_policy_loss(old, x, adv, mask, clip_cov_ratio=2e-3, seed=seed, offset=off)
            y = lp.clone().requires_grad_()
            k, mk = kl_cov_policy_loss(old, y, adv, mask, kl_cov_ratio=2e-3, ppo_kl_coef=1.0)
            (a + k).backward()
            out[flag] = (a, ma, x.grad, k, mk, y.grad)
    f, p = out["1"], out["0"]
    for i in (1, 4):
        assert int(f[i]["n_selected"]) == int(p[i]["n_selected"]) > 0
    assert torch.equal(f[2] == 0, p[2] == 0) and torch.allclose(f[2], p[2], rtol=1e-6, atol=0)
    assert torch.allclose(f[5], p[5], rtol=1e-6, atol=0)
    assert rel_err(f[0], p[0]) <= 1e-5 and rel_err(f[3], p[3]) <= 1e-5
