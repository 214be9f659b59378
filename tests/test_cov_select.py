"""Clip-Cov / KL-Cov token selection (``clip_cov_select`` / ``kl_cov_select``) against float64
oracles written here from verl's definitions: KL-Cov's top-k set, Clip-Cov's count, eligibility,
uniformity (chi-square over a fixed list of seeds) and reproducibility; padding, tiny and empty
batches, bad input, opcheck, torch.compile and (GPU) CUDA-graph capture."""

import itertools
import math

import pytest
import torch

import entropy_kernels as ek
from entropy_kernels import config

try:
    from entropy_kernels.kernels import cov_launch as K
except Exception:  # pragma: no cover - no Triton
    K = None


def run(backend, fn, *args, **kwargs):
    with backend.context():
        return fn(*args, **kwargs)


@pytest.fixture(params=[False, True], ids=["block1024", "block32"])
def small_blocks(request, monkeypatch):
    """block32: 32-token blocks (the smallest), so the kernels run many programs with multi-block chunks."""
    if request.param and K is not None:
        monkeypatch.setattr(K, "MAX_BLOCK", 32)
    return request.param


@pytest.fixture(params=["one-launch", "phases"])
def launch_path(request, monkeypatch):
    """Eagerly the selection runs as one cooperative launch (``select_fused``) or, with
    ``cov_fused`` off (``EK_COV_FUSED=0``), one launch per phase (several programs: their cross-program steps)."""
    monkeypatch.setattr(config.CONFIG, "cov_fused", request.param == "one-launch")
    return request.param


def make_batch(b, t, device="cpu", p_valid=0.8, scale=1.0):
    old = -torch.rand(b, t, dtype=torch.float64) * 4
    lp = old + 0.3 * torch.randn(b, t, dtype=torch.float64)
    adv = (torch.randn(b, 1, dtype=torch.float64) + 0.3 * torch.randn(b, t, dtype=torch.float64)) * 2 * scale
    mask = torch.rand(b, t) < p_valid
    return [x.float().to(device) for x in (old, lp, adv)] + [mask.to(device)]


# ---- float64 oracles, verl's formulas --------------------------------------------------------


def oracle_cov(lp, adv, mask):
    lp, adv, valid = lp.double().cpu(), adv.double().cpu(), mask.cpu() > 0
    if not valid.any():
        return torch.zeros_like(lp)
    return (adv - adv[valid].mean()) * (lp - lp[valid].mean())


def oracle_kl_cov(lp, adv, mask, ratio):
    """Indices (flat) of verl's top-k; ties (equal float32 cov) ordered by flat index."""
    cov = oracle_cov(lp, adv, mask).reshape(-1)
    valid = (mask.cpu() > 0).reshape(-1)
    idx = [i for i in range(cov.numel()) if valid[i]]
    if not idx:
        return set(), cov
    k = max(1, int(len(idx) * ratio))
    idx.sort(key=lambda i: (-float(cov[i]), i))
    return set(idx[:k]), cov


def oracle_clip_eligible(old, lp, adv, mask, low=0.2, high=0.2, lb=1.0, ub=5.0):
    old, lp, adv = old.double().cpu(), lp.double().cpu(), adv.double().cpu()
    valid = mask.cpu() > 0
    ratio = torch.exp(lp - old)
    l1, l2 = -adv * ratio, -adv * torch.clamp(ratio, 1 - low, 1 + high)
    cov = oracle_cov(lp, adv, mask)
    return valid & ~(l2 > l1) & (cov > lb) & (cov < ub)


def clip_count(mask, ratio):
    return max(int(ratio * float((mask.cpu() > 0).sum())), 1)


def assert_kl_matches(sel, lp, adv, mask, ratio):
    want, cov = oracle_kl_cov(lp, adv, mask, ratio)
    got = set(torch.nonzero(sel.cpu().reshape(-1)).reshape(-1).tolist())
    assert len(got) == len(want), f"selected {len(got)} tokens, want {len(want)}"
    diff = got ^ want
    if diff:  # only tokens whose covariances tie in float32 at the threshold may differ
        c32 = {float(cov[i].float()) for i in diff}
        assert len(c32) == 1, f"selection differs beyond float32 ties: {sorted(diff)[:10]}"


# ---- KL-Cov ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [2e-4, 0.01, 0.2, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.interpreter_pairwise
def test_kl_cov_top_k_equals_float64_oracle(backend, small_blocks, launch_path, ratio, dtype):
    shapes = [(3, 50), (2, 333)] if backend.name == "cpu-triton-interpreter" else [(3, 50), (8, 1000), (1, 4097)]
    for b, t in shapes:
        _, lp, adv, mask = make_batch(b, t, backend.device)
        lp, adv = lp.to(dtype), adv.to(dtype)
        sel = run(backend, ek.kl_cov_select, lp, adv, mask, kl_cov_ratio=ratio)
        assert sel.dtype == torch.bool and sel.shape == (b, t)
        assert_kl_matches(sel, lp, adv, mask, ratio)


def test_kl_cov_ties_go_to_the_lower_flat_index(backend, small_blocks, launch_path):
    # 4 distinct covariance values, each repeated many times, spread over the batch
    b, t = 4, 60
    adv = torch.tensor([1.0, -1.0, 2.0, -2.0]).repeat(b * t // 4).reshape(b, t)
    lp = torch.tensor([-1.0, -3.0, -1.0, -3.0]).repeat(b * t // 4).reshape(b, t)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[0, :7] = False
    for ratio in (0.05, 0.3, 0.6):
        sel = run(backend, ek.kl_cov_select, lp.to(backend.device), adv.to(backend.device), mask.to(backend.device), kl_cov_ratio=ratio)
        cov = oracle_cov(lp, adv, mask).reshape(-1)
        valid = mask.reshape(-1)
        k = max(1, int(int(valid.sum()) * ratio))
        order = sorted((i for i in range(b * t) if valid[i]), key=lambda i: (-float(cov[i]), i))
        want = torch.zeros(b * t, dtype=torch.bool)
        want[order[:k]] = True
        assert torch.equal(sel.cpu().reshape(-1), want), f"ratio {ratio}"


def test_kl_cov_k_formula_matches_python_int(backend):
    # int(n·ρ) at values where float32 arithmetic would round across the integer
    for n, ratio in [(10, 0.3), (1000, 0.0029), (5000, 2e-4), (49, 0.1), (3, 1 / 3)]:
        lp = -torch.rand(1, n) - torch.arange(n) * 1e-3
        adv = torch.randn(1, n)
        sel = run(backend, ek.kl_cov_select, lp.to(backend.device), adv.to(backend.device), torch.ones(1, n, device=backend.device), kl_cov_ratio=ratio)
        assert int(sel.sum()) == max(1, int(n * ratio)), (n, ratio)


# ---- Clip-Cov --------------------------------------------------------------------------------


@pytest.mark.parametrize("band", [(1.0, 5.0), (0.2, 2.0), (-math.inf, math.inf)])
@pytest.mark.parametrize("ratio", [2e-4, 0.05, 1.0])
@pytest.mark.interpreter_pairwise
def test_clip_cov_picks_min_n_eligible(backend, small_blocks, launch_path, band, ratio):
    shapes = [(3, 40), (2, 301)] if backend.name == "cpu-triton-interpreter" else [(3, 40), (16, 700)]
    for b, t in shapes:
        old, lp, adv, mask = make_batch(b, t, backend.device, scale=2.0)
        kw = dict(clip_cov_ratio=ratio, clip_cov_lb=band[0], clip_cov_ub=band[1], clip_ratio_low=0.2, clip_ratio_high=0.28)
        sel = run(backend, ek.clip_cov_select, old, lp, adv, mask, generator=torch.Generator(backend.device).manual_seed(1), **kw)
        eligible = oracle_clip_eligible(old, lp, adv, mask, 0.2, 0.28, *band)
        assert int(sel.sum()) == min(clip_count(mask, ratio), int(eligible.sum()))
        assert not (sel.cpu() & ~eligible).any(), "selected a token that is not eligible"


def _uniformity_case():
    # 20 tokens: 5 eligible (cov 1.5), 5 with cov -1.5, 10 with cov 0; n = max(int(0.1·20), 1) = 2
    adv = torch.tensor([3.0] * 5 + [-3.0] * 5 + [0.0] * 10).reshape(1, 20)
    lp = torch.tensor([-1.5] * 10 + [-2.5] * 10).reshape(1, 20)
    return lp.clone(), lp, adv, torch.ones(1, 20)


def test_clip_cov_sample_is_uniform(backend):
    old, lp, adv, mask = (x.to(backend.device) for x in _uniformity_case())
    n_seeds = 120 if backend.name == "cpu-triton-interpreter" else 600
    cells = {pair: 0 for pair in itertools.combinations(range(5), 2)}
    for s in range(n_seeds):  # a fixed list of seeds: the test is deterministic
        sel = run(backend, ek.clip_cov_select, old, lp, adv, mask, clip_cov_ratio=0.1,
                  seed=torch.tensor([1000 + s], device=backend.device), offset=torch.tensor([0], device=backend.device))
        picked = tuple(torch.nonzero(sel.cpu()[0]).reshape(-1).tolist())
        assert picked in cells, f"picked {picked}: must be 2 of the 5 eligible tokens"
        cells[picked] += 1
    expected = n_seeds / len(cells)
    chi2 = sum((c - expected) ** 2 / expected for c in cells.values())
    # 9 degrees of freedom: P(chi2 > 27.88) = 0.001. "Always the first n" scores 9·n_seeds.
    assert chi2 < 27.88, f"chi-square {chi2:.1f} over {cells}"


def test_clip_cov_reproducible_for_a_generator_state(backend):
    old, lp, adv, mask = make_batch(4, 64, backend.device, scale=3.0)
    kw = dict(clip_cov_ratio=0.05, clip_cov_lb=0.1)
    a = run(backend, ek.clip_cov_select, old, lp, adv, mask, generator=torch.Generator(backend.device).manual_seed(7), **kw)
    b = run(backend, ek.clip_cov_select, old, lp, adv, mask, generator=torch.Generator(backend.device).manual_seed(7), **kw)
    assert torch.equal(a, b)
    seed, off = torch.tensor([5], device=backend.device), torch.tensor([0], device=backend.device)
    c = run(backend, ek.clip_cov_select, old, lp, adv, mask, seed=seed, offset=off, **kw)
    assert torch.equal(c, run(backend, ek.clip_cov_select, old, lp, adv, mask, seed=seed, offset=off, **kw))
    picks = {tuple(run(backend, ek.clip_cov_select, old, lp, adv, mask, seed=torch.tensor([s], device=backend.device),
                       offset=off, **kw).cpu().reshape(-1).nonzero().reshape(-1).tolist()) for s in range(6)}
    assert len(picks) > 1, "different seeds never changed the sample"


# ---- padding, tiny and empty batches ---------------------------------------------------------


def test_padding_values_do_not_change_the_selection(backend, small_blocks):
    old, lp, adv, mask = make_batch(3, 80, backend.device, scale=2.0)
    junk = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30], device=backend.device)
    pad = junk[torch.randint(0, 4, mask.shape, device=backend.device)]
    dirty = [torch.where(mask, x, pad) for x in (old, lp, adv)]
    for fn, kw in ((ek.kl_cov_select, dict(kl_cov_ratio=0.1)),):
        assert torch.equal(run(backend, fn, lp, adv, mask, **kw), run(backend, fn, dirty[1], dirty[2], mask, **kw))
    kw = dict(clip_cov_ratio=0.1, clip_cov_lb=0.2, seed=torch.tensor([3], device=backend.device), offset=torch.tensor([0], device=backend.device))
    clean = run(backend, ek.clip_cov_select, old, lp, adv, mask, **kw)
    assert torch.equal(clean, run(backend, ek.clip_cov_select, *dirty, mask, **kw))
    # extra all-padding columns: KL-Cov's selection of the real tokens is unchanged
    wide = [torch.cat([x, junk[torch.randint(0, 4, (3, 7), device=backend.device)]], 1) for x in (lp, adv)]
    wmask = torch.cat([mask, torch.zeros(3, 7, dtype=torch.bool, device=backend.device)], 1)
    sel = run(backend, ek.kl_cov_select, *wide, wmask, kl_cov_ratio=0.1)
    assert torch.equal(sel[:, :80], run(backend, ek.kl_cov_select, lp, adv, mask, kl_cov_ratio=0.1)) and not sel[:, 80:].any()


def test_one_and_zero_valid_tokens(backend):
    old, lp, adv, _ = make_batch(2, 9, backend.device)
    one = torch.zeros(2, 9, dtype=torch.bool, device=backend.device)
    one[1, 4] = True
    sel = run(backend, ek.kl_cov_select, lp, adv, one)
    assert torch.equal(sel, one), "KL-Cov: the one valid token is the top-1"
    # Clip-Cov: n = 1, but a lone token has cov 0 (it is its own mean): outside (1, 5)
    assert not run(backend, ek.clip_cov_select, old, lp, adv, one, generator=torch.Generator(backend.device).manual_seed(0)).any()
    assert torch.equal(run(backend, ek.clip_cov_select, lp, lp, adv, one, clip_cov_lb=-1.0,
                           generator=torch.Generator(backend.device).manual_seed(0)), one)
    none = torch.zeros(2, 9, dtype=torch.bool, device=backend.device)
    assert not run(backend, ek.kl_cov_select, lp, adv, none).any()
    assert not run(backend, ek.clip_cov_select, old, lp, adv, none, clip_cov_lb=-5.0,
                   generator=torch.Generator(backend.device).manual_seed(0)).any()


def test_float_and_integer_masks(backend):
    _, lp, adv, mask = make_batch(3, 40, backend.device)
    ref = run(backend, ek.kl_cov_select, lp, adv, mask, kl_cov_ratio=0.1)
    for m in (mask.long(), mask.float(), mask.to(torch.uint8)):
        assert torch.equal(run(backend, ek.kl_cov_select, lp, adv, m, kl_cov_ratio=0.1), ref)


# ---- ops, compile, errors --------------------------------------------------------------------


@pytest.mark.kernel_backends_only
def test_opcheck(backend):
    old, lp, adv, mask = make_batch(2, 37, backend.device, scale=2.0)
    seed, off = torch.tensor([1], device=backend.device), torch.tensor([0], device=backend.device)
    ops = torch.ops.entropy_kernels
    with backend.context():
        stats = ops.cov_stats.default(lp, adv, mask)
        torch.library.opcheck(ops.cov_stats.default, (lp, adv, mask))
        torch.library.opcheck(ops.cov_select.default, (lp, adv, mask, None, False, 0.1, 0.0, 0.0, 0.0, 0.0, None, None))
        torch.library.opcheck(ops.cov_keys.default, (lp, adv, mask, None, stats, False, 0.0, 0.0, 0.0, 0.0, None, None))
        if backend.name != "cpu-triton-interpreter":
            # (traced on fake CPU tensors the op takes the reference path, whose counter-based
            # random keys differ by design from the kernel's Philox keys that eager uses here)
            torch.library.opcheck(ops.cov_select.default, (lp, adv, mask, old, True, 0.1, 0.2, 0.2, 0.1, 5.0, seed, off))


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()
    old, lp, adv, mask = make_batch(4, 100, device, scale=2.0)
    seed, off = torch.tensor([5], device=device), torch.tensor([0], device=device)

    def step(old, lp, adv, mask):
        return (ek.kl_cov_select(lp, adv, mask, kl_cov_ratio=0.05),
                ek.clip_cov_select(old, lp, adv, mask, clip_cov_ratio=0.05, clip_cov_lb=0.1, seed=seed, offset=off))

    compiled = torch.compile(step, fullgraph=True)
    for got, want in zip(compiled(old, lp, adv, mask), step(old, lp, adv, mask)):
        assert torch.equal(got, want)


def _x(b=2, t=5, **kw):
    return torch.randn(b, t, **kw)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: ek.kl_cov_select(_x(), _x(2, 6), torch.ones(2, 5)), ValueError, "advantages shape"),
        (lambda: ek.kl_cov_select(_x(), _x(), torch.ones(2, 6)), ValueError, "response_mask shape"),
        (lambda: ek.kl_cov_select(torch.randn(10), torch.randn(10), torch.ones(10)), ValueError, r"\[B, T\]"),
        (lambda: ek.kl_cov_select(torch.zeros(0, 4), torch.zeros(0, 4), torch.ones(0, 4)), ValueError, "non-empty"),
        (lambda: ek.kl_cov_select(_x(), _x(), torch.ones(2, 5), kl_cov_ratio=0.0), ValueError, "kl_cov_ratio"),
        (lambda: ek.kl_cov_select(_x(), _x(), torch.ones(2, 5), kl_cov_ratio=1.5), ValueError, "kl_cov_ratio"),
        (lambda: ek.kl_cov_select(_x().long(), _x(), torch.ones(2, 5)), TypeError, "log_prob"),
        (lambda: ek.kl_cov_select(_x(), _x().int(), torch.ones(2, 5)), TypeError, "advantages"),
        (lambda: ek.kl_cov_select(_x(), _x(), [[1] * 5] * 2), TypeError, "response_mask"),
        (lambda: ek.clip_cov_select(_x(), _x(), _x(), torch.ones(2, 5), clip_cov_ratio=-1), ValueError, "clip_cov_ratio"),
        (lambda: ek.clip_cov_select(_x(), _x(), _x(), torch.ones(2, 5), clip_cov_lb=5.0, clip_cov_ub=1.0), ValueError, "clip_cov_lb"),
        (lambda: ek.clip_cov_select(_x(), _x(), _x(), torch.ones(2, 5), clip_ratio=-0.1), ValueError, "clip_ratio_low"),
        (lambda: ek.clip_cov_select(_x(), _x(), _x(), torch.ones(2, 5), clip_ratio_low=1.5), ValueError, "clip_ratio_low"),
        (lambda: ek.clip_cov_select(_x(), _x(), _x(), torch.ones(2, 5), clip_ratio_high=math.inf), ValueError, "clip_ratio_high"),
        (lambda: ek.clip_cov_select(_x(2, 4), _x(), _x(), torch.ones(2, 5)), ValueError, "old_log_prob shape"),
        (lambda: ek.clip_cov_select(_x(), _x(), _x(), torch.ones(2, 5), seed=torch.tensor([1])), ValueError, "together"),
        (lambda: ek.clip_cov_select(_x(), _x(), _x(), torch.ones(2, 5), seed=torch.tensor([1.0]), offset=torch.tensor([0])),
         ValueError, "int64"),
        (lambda: ek.clip_cov_select(_x(), _x(), _x(), torch.ones(2, 5), generator=torch.Generator(), seed=torch.tensor([1]),
                                    offset=torch.tensor([0])), ValueError, "not both"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---- GPU ------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_large_batch_matches_oracle(launch_path):
    old, lp, adv, mask = make_batch(64, 4096, "cuda", scale=2.0)
    for ratio in (2e-4, 2e-3):
        assert_kl_matches(ek.kl_cov_select(lp, adv, mask, kl_cov_ratio=ratio), lp, adv, mask, ratio)
        sel = ek.clip_cov_select(old, lp, adv, mask, clip_cov_ratio=ratio, generator=torch.Generator("cuda").manual_seed(0))
        eligible = oracle_clip_eligible(old, lp, adv, mask)
        assert int(sel.sum()) == min(clip_count(mask, ratio), int(eligible.sum())) and not (sel.cpu() & ~eligible).any()


@pytest.mark.gpu
def test_cuda_graph_capture_selection(launch_path):
    old, lp, adv, mask = make_batch(32, 2048, "cuda", scale=2.0)
    seed, off = torch.tensor([11], device="cuda"), torch.tensor([0], device="cuda")
    kw = dict(clip_cov_ratio=2e-3, seed=seed, offset=off)
    ek.kl_cov_select(lp, adv, mask, kl_cov_ratio=2e-3)
    ek.clip_cov_select(old, lp, adv, mask, **kw)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kl = ek.kl_cov_select(lp, adv, mask, kl_cov_ratio=2e-3)
        clip = ek.clip_cov_select(old, lp, adv, mask, **kw)
    for x, y in zip((old, lp, adv), make_batch(32, 2048, "cuda", scale=2.0)):
        x.copy_(y)
    graph.replay()
    assert torch.equal(kl, ek.kl_cov_select(lp, adv, mask, kl_cov_ratio=2e-3))
    assert torch.equal(clip, ek.clip_cov_select(old, lp, adv, mask, **kw))
