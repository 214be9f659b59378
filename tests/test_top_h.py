"""Top-H selection and sampling: the transformers rule against transformers' TopHLogitsWarper
itself, the exact rule against a float64 sorted reference and its defining property, and the
sampler's distribution, reproducibility and generate() integration."""

import math

import pytest
import torch

import entropy_kernels as ek
from entropy_kernels.reference.top_h import EXACT_SLACK, top_h_mask_reference

from test_top_h_logprobs import fullgraph_inputs

transformers = pytest.importorskip("transformers")
from transformers.generation.logits_process import TopHLogitsWarper  # noqa: E402


def run(backend, fn, *args, **kwargs):
    with backend.context():
        return fn(*args, **kwargs)


def warper_mask(logits, alpha, temperature):
    """transformers' own kept set on logits / T (one α per call: loop over rows)."""
    rows = []
    for i in range(logits.shape[0]):
        out = TopHLogitsWarper(top_h=float(alpha[i]))(None, logits[i : i + 1].float().cpu() / temperature)
        rows.append(~torch.isneginf(out))
    return torch.cat(rows)


@pytest.mark.parametrize("vocab", [1000, 4097])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.interpreter_pairwise
def test_transformers_mode_equals_top_h_logits_warper(backend, vocab, temperature, dtype):
    for _ in range(3):
        logits = (torch.randn(4, vocab) * torch.tensor([[1.0], [3.0], [0.3], [6.0]])).to(dtype)
        logits[0, torch.randint(0, vocab, (20,))] = float("-inf")
        alpha = torch.rand(4) * 0.9 + 0.05
        got = run(backend, ek.top_h_mask, logits.to(backend.device), alpha.to(backend.device), temperature=temperature)
        assert_equal_up_to_ties(got.cpu(), warper_mask(logits, alpha, temperature), logits, alpha, temperature)


def assert_equal_up_to_ties(got, ref, logits, alpha=None, temperature=1.0, top_n=100):
    """Same kept sets, except that among exactly tied logits (common in bf16) either may be kept,
    and (given ``alpha``) a one-token difference where the boundary token's cumulative entropy
    equals τ = α·H(q) to fp32 rounding (float64, relative 1e-5): transformers and we compute
    q, log q and H(q) in different fp32 orders, so a row sitting on the boundary may go either way."""
    for i in range(got.shape[0]):
        diff = got[i] ^ ref[i]
        if not diff.any():
            continue
        tied = logits[i][diff].float()
        if int(got[i].sum()) == int(ref[i].sum()) and (tied == tied[0]).all():
            continue
        assert alpha is not None and abs(int(got[i].sum()) - int(ref[i].sum())) == 1, f"row {i} differs beyond ties"
        z = torch.sort(logits[i].double() / temperature, descending=True).values[:top_n]
        log_q = torch.log_softmax(z, -1)
        q = log_q.exp()
        terms = torch.where(q > 0, -q * log_q, torch.zeros_like(q))
        tau = float(alpha[i]) * float(terms.sum())
        k = min(int(got[i].sum()), int(ref[i].sum()))  # the boundary token is the (k+1)-th
        boundary = float(torch.cumsum(terms, 0)[k])
        assert abs(boundary - tau) <= 1e-5 * max(1.0, tau), f"row {i} differs beyond ties and rounding ({boundary} vs τ {tau})"


def _check_exact_property(logits, alpha, kept, temperature=1.0):
    """kept is the top-K by probability with H_K <= α·H(p) < H_{K+1} (float64, up to the slack)."""
    z = logits.double() / temperature
    for i in range(z.shape[0]):
        p = torch.softmax(z[i], -1)
        order = torch.sort(-z[i], stable=True).indices
        k = int(kept[i].sum())
        assert k >= 1 and kept[i][order[:k]].all(), "kept set is not a prefix in probability order"
        ps = p[order]
        plogp = torch.where(ps > 0, ps * ps.log(), torch.zeros_like(ps))
        tau = alpha[i].double() * -(plogp.sum()) * (1 + EXACT_SLACK)
        s, t = torch.cumsum(ps, 0), torch.cumsum(plogp, 0)
        h = s.log() - t / s
        margin = 1e-5 * max(1.0, float(tau))
        assert k == 1 or h[k - 1] <= tau + margin
        assert k == z.shape[1] or h[k] > tau - margin


@pytest.mark.parametrize("vocab, temperature", [(1000, 1.0), (4097, 2.0)])
def test_exact_mode_matches_float64_reference_and_property(backend, vocab, temperature):
    # scales: peaked, LM-like, flat (kept set > 1024 candidates: the bisection path)
    logits = torch.randn(5, vocab) * torch.tensor([[8.0], [3.0], [1.0], [0.05], [0.02]])
    alpha = torch.tensor([0.4, 0.3, 0.6, 0.95, 1.0])
    got = run(backend, ek.top_h_mask, logits.to(backend.device), alpha.to(backend.device), temperature=temperature, mode="exact").cpu()
    ref = top_h_mask_reference(logits, alpha, temperature, "exact", dtype=torch.float64)
    _check_exact_property(logits, alpha, got, temperature)
    for i in range(5):  # equal to the float64 greedy reference except in a float-rounding tie
        if not torch.equal(got[i], ref[i]):
            assert abs(int(got[i].sum()) - int(ref[i].sum())) == 1, f"row {i}: {int(got[i].sum())} vs {int(ref[i].sum())}"
    assert got[4].all()  # α = 1 keeps everything


def test_masked_and_nan_logits(backend):
    logits = torch.randn(3, 300) * 2
    logits[0, :290] = float("-inf")  # only 10 candidates are finite
    logits[1, 5] = float("nan")  # NaN counts as -inf
    logits[2] = float("-inf")
    logits[2, 7] = 1.0
    for mode in ("transformers", "exact"):
        got = run(backend, ek.top_h_mask, logits.to(backend.device), 0.5, mode=mode).cpu()
        assert not got[0, :290].any() and not got[1, 5] and got[2].tolist() == [i == 7 for i in range(300)]
        samples = run(backend, ek.top_h_sample, logits.to(backend.device), 0.5, mode=mode,
                      seed=torch.tensor([1], device=backend.device), offset=torch.tensor([0], device=backend.device)).cpu()
        assert got[torch.arange(3), samples].all()


def test_vocab_of_one_and_empty_batch(backend):
    assert run(backend, ek.top_h_mask, torch.randn(2, 1, device=backend.device), 0.3).all()
    assert run(backend, ek.top_h_mask, torch.randn(0, 10, device=backend.device), 0.3).shape == (0, 10)


@pytest.mark.parametrize("mode", ["transformers", "exact"])
def test_sampling_distribution_chi_square(backend, mode):
    # one row repeated: each row draws with its own Philox stream (seed + row)
    n = 1500 if backend.name != "cpu-triton-interpreter" else 160  # the interpreter is slow
    base = torch.tensor([3.0, 2.5, 2.0, 1.2, 0.5, 0.0, -1.0, -3.0, -5.0, -8.0])
    logits = base.expand(n, -1).contiguous()
    keep = top_h_mask_reference(base[None], torch.tensor([0.8]), 1.0, mode)[0]
    p = torch.where(keep, torch.softmax(base.double(), -1), torch.zeros(10, dtype=torch.float64))
    p = p / p.sum()
    samples = run(backend, ek.top_h_sample, logits.to(backend.device), 0.8, mode=mode,
                  seed=torch.tensor([1234], device=backend.device), offset=torch.tensor([0], device=backend.device)).cpu()
    assert keep[samples].all(), "a dropped token was sampled"
    counts = torch.bincount(samples, minlength=10).double()
    expected = p * n
    chi2 = float(((counts - expected) ** 2 / expected.clamp_min(1e-12))[keep].sum())
    df = int(keep.sum()) - 1
    assert df >= 2
    assert chi2 < df + 4.0 * math.sqrt(2 * df) + 10, (chi2, df, counts.tolist(), expected.tolist())


def test_sampling_is_reproducible(backend):
    logits = (torch.randn(4, 300) * 2).to(backend.device)
    seed, off = torch.tensor([7], device=backend.device), torch.tensor([0], device=backend.device)
    a = run(backend, ek.top_h_sample, logits, 0.9, seed=seed, offset=off)
    b = run(backend, ek.top_h_sample, logits, 0.9, seed=seed, offset=off)
    c = run(backend, ek.top_h_sample, logits, 0.9, seed=seed, offset=off + 300)
    assert torch.equal(a, b) and not torch.equal(a, c)
    g1 = torch.Generator(device=backend.device).manual_seed(3)
    g2 = torch.Generator(device=backend.device).manual_seed(3)
    assert torch.equal(run(backend, ek.top_h_sample, logits, 0.9, generator=g1), run(backend, ek.top_h_sample, logits, 0.9, generator=g2))


def structured_rows(vocab):
    """Rows that stress the prefilter bound (the n-th largest of the group maxima): LM-like,
    sorted ascending (every large key sits in the last groups), all equal (every key ties with
    the bound), bf16-rounded (many exact ties), and a row with a few finite logits."""
    rows = torch.randn(5, vocab) * 3
    rows[1] = torch.sort(rows[1]).values
    rows[2] = 0.25
    rows[3] = rows[3].to(torch.bfloat16).float()
    rows[4] = float("-inf")
    rows[4, torch.randperm(vocab)[:37]] = torch.randn(37)
    return rows


def _kernel_and_reference(backend, logits, alpha, mode):
    seed, off = torch.tensor([5], device=backend.device), torch.tensor([0], device=backend.device)
    got = run(backend, ek.top_h_mask, logits, alpha, mode=mode).cpu()
    samples = run(backend, ek.top_h_sample, logits, alpha, mode=mode, seed=seed, offset=off).cpu()
    ref = top_h_mask_reference(logits.cpu().double(), alpha.cpu(), 1.0, mode, dtype=torch.float64)
    if mode == "transformers":
        assert_equal_up_to_ties(got, ref, logits.cpu(), alpha.cpu())
    else:
        _check_exact_property(logits.cpu(), alpha.cpu(), got)
        for i in range(len(got)):  # the float64 greedy reference, up to a float-rounding tie
            assert torch.equal(got[i], ref[i]) or abs(int(got[i].sum()) - int(ref[i].sum())) == 1, f"row {i}"
    assert got[torch.arange(len(got)), samples].all()


@pytest.mark.parametrize("capacity", [8192, 64], ids=["prefilter", "overflow-to-whole-row"])
def test_prefiltered_selection_and_its_overflow_match_the_reference(backend, monkeypatch, capacity):
    """The kernel's prefilter (keys above the n-th largest group maximum, compacted, then the
    radix select on them) and its overflow path (more such keys than the capacity: radix select
    over the row) keep what the float64 reference keeps; transformers rule on the structured
    rows, exact rule on a vocabulary with >= 1024 groups."""
    if backend.name == "cpu-reference":
        pytest.skip("kernel paths only")
    from entropy_kernels.kernels import top_h as K

    monkeypatch.setattr(K, "CAND_CAPACITY", capacity)
    assert K.prefilter_groups(3000, 100, 4096)[1] > 0 and K.prefilter_groups(16400, 1024, 4096)[1] > 0
    logits = structured_rows(3000).to(backend.device)
    alpha = torch.tensor([0.3, 0.5, 0.9, 0.6, 0.4], device=backend.device)
    _kernel_and_reference(backend, logits, alpha, "transformers")
    wide = torch.randn(2, 16400) * 3
    wide[1] = torch.sort(wide[1]).values.to(torch.bfloat16).float()  # sorted, with bf16 ties
    _kernel_and_reference(backend, wide.to(backend.device), alpha[:2], "exact")


def test_exact_rule_splits_tie_groups_by_index(backend):
    """More than 1024 kept tokens with the cut inside a group of equal logits (the bisection
    path): the kept set is still the prefix of the index-ordered ties, of the right length."""
    logits = structured_rows(3000)
    alpha = torch.tensor([0.3, 0.5, 0.9, 0.6, 0.4])
    got = run(backend, ek.top_h_mask, logits.to(backend.device), alpha.to(backend.device), mode="exact").cpu()
    _check_exact_property(logits, alpha, got)
    assert 1024 < int(got[2].sum()) < 3000  # the all-equal row at α = 0.9: e^{0.9·log 3000} ≈ 1347


@pytest.mark.parametrize("mode", ["transformers", "exact"])
def test_boundary_ties_are_kept_on_every_path(backend, mode):
    """Rows of n equal logits (padded with -inf) whose k-th token sits exactly on the boundary:
    transformers rule at α = k/n (cumulative entropy k·log(n)/n = τ), exact rule at
    α = log k / log n (H_k = log k = τ). The boundary token is kept on every path, whatever order
    its fp32 sums are taken in (the reference kept 31 of 64 at α = 0.5, the kernel 32)."""
    pairs = {"transformers": [(64, 32), (10, 10), (100, 75)], "exact": [(64, 8), (10, 5), (7, 7)]}[mode]
    logits = torch.full((len(pairs), 100), float("-inf"))
    alpha = torch.empty(len(pairs))
    for i, (n, k) in enumerate(pairs):
        logits[i, torch.randperm(100)[:n]] = 0.7
        alpha[i] = k / n if mode == "transformers" else math.log(k) / math.log(n)
    got = run(backend, ek.top_h_mask, logits.to(backend.device), alpha.to(backend.device), mode=mode).cpu()
    assert got.sum(1).tolist() == [k for _, k in pairs]
    for i in range(len(pairs)):  # the lowest indices of the tie group
        finite = torch.nonzero(~torch.isneginf(logits[i])).flatten()
        assert torch.equal(torch.nonzero(got[i]).flatten(), finite[: pairs[i][1]])


def test_prefilter_group_sizes():
    from entropy_kernels.kernels.top_h import MAX_GROUPS, prefilter_groups

    for v, n, block in ((151936, 100, 4096), (151936, 1024, 4096), (3000, 100, 4096), (50, 100, 64), (10**7, 1024, 4096),
                        (10000, 1024, 4096)):
        group, nsub = prefilter_groups(v, n, block)
        groups = -(-v // group)
        if nsub == 0:  # disabled: too many groups to rank, or too few for a bound
            assert groups > MAX_GROUPS or groups < n
            continue
        assert 16 <= group <= block and group & (group - 1) == 0 and block % group == 0
        assert nsub >= groups and nsub & (nsub - 1) == 0 and groups <= MAX_GROUPS
        # as many groups as the selection needs, if the vocabulary has them, and not 2x more
        assert groups >= n or group == 16
        assert group == 16 or -(-v // (group * 2)) < n or group * 2 > block


@pytest.mark.kernel_backends_only
def test_opcheck(backend):
    logits = (torch.randn(3, 200) * 2).to(backend.device)
    alpha = torch.full((3,), 0.5, device=backend.device)
    seed, off = torch.tensor([1], device=backend.device), torch.tensor([0], device=backend.device)
    with backend.context():
        torch.library.opcheck(torch.ops.entropy_kernels.top_h.default, (logits, alpha, 1.0, False, 100, True, None, None))
        if backend.name != "cpu-triton-interpreter":
            # (traced on fake CPU tensors, the op takes the reference path, whose counter-based
            # noise differs by design from the kernel's Philox stream that eager uses here)
            torch.library.opcheck(torch.ops.entropy_kernels.top_h.default, (logits, alpha, 0.7, True, 100, False, seed, off))
        else:
            torch.library.opcheck(torch.ops.entropy_kernels.top_h.default, (logits, alpha, 0.7, True, 100, True, None, None))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_torch_compile_fullgraph(device):
    logits, seed, off = fullgraph_inputs(device)

    def step(x):
        return ek.top_h_mask(x, 0.4), ek.top_h_sample(x, 0.4, mode="exact", seed=seed, offset=off)

    compiled = torch.compile(step, fullgraph=True)
    m1, s1 = step(logits)
    m2, s2 = compiled(logits)
    assert torch.equal(m1, m2) and torch.equal(s1, s2)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: ek.top_h_mask(torch.randn(10), 0.4), ValueError, "2-D"),
        (lambda: ek.top_h_mask(torch.randn(2, 10), 0.0), ValueError, "alpha"),
        (lambda: ek.top_h_mask(torch.randn(2, 10), 1.5), ValueError, "alpha"),
        (lambda: ek.top_h_mask(torch.randn(2, 10), torch.ones(3)), ValueError, "alpha"),
        (lambda: ek.top_h_mask(torch.randn(2, 10), 0.4, mode="fast"), ValueError, "mode"),
        (lambda: ek.top_h_mask(torch.randn(2, 10), 0.4, temperature=0.0), ValueError, "temperature"),
        (lambda: ek.top_h_mask(torch.randn(2, 10), 0.4, top_n=0), ValueError, "top_n"),
        (lambda: ek.top_h_mask(torch.ones(2, 10, dtype=torch.int64), 0.4), TypeError, "logits"),
        (lambda: ek.top_h_sample(torch.randn(2, 10), 0.4, seed=torch.tensor([1])), ValueError, "together"),
        (lambda: ek.top_h_sample(torch.randn(2, 10), 0.4, seed=torch.tensor([1.0]), offset=torch.tensor([0])), ValueError, "int64"),
        (lambda: ek.top_h_sample(torch.randn(2, 10), 0.4, generator=torch.Generator(), seed=torch.tensor([1]), offset=torch.tensor([0])), ValueError, "not both"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.gpu
def test_cuda_graph_capture():
    logits = torch.randn(64, 151936, device="cuda") * 3
    seed, off = torch.tensor([11], device="cuda"), torch.tensor([0], device="cuda")
    ek.top_h_sample(logits, 0.4, seed=seed, offset=off)
    ek.top_h_mask(logits, 0.4, mode="exact")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        samples = ek.top_h_sample(logits, 0.4, seed=seed, offset=off)
        mask = ek.top_h_mask(logits, 0.4, mode="exact")
    logits.copy_(torch.randn_like(logits) * 3)
    off.add_(151936)
    graph.replay()
    assert torch.equal(mask, ek.top_h_mask(logits, 0.4, mode="exact"))
    assert ek.top_h_mask(logits, 0.4)[torch.arange(64, device="cuda"), samples].all()


# ------------------------------------------------------------------- generate() ------------

def _tiny_llama():
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def _generate(model, ids, **kwargs):
    torch.manual_seed(1234)
    return model.generate(ids, do_sample=True, max_new_tokens=12, top_k=None, top_p=None, pad_token_id=0, **kwargs)


def test_generate_with_processor_and_kernel_warper_match_transformers():
    from entropy_kernels.decoding import TopHLogitsProcessor, use_kernel_for_transformers_top_h

    model = _tiny_llama()
    ids = torch.randint(1, 97, (3, 5))
    # sharpen the tiny model's flat logits so that Top-H actually truncates
    model.lm_head.weight.data *= 40
    ref = _generate(model, ids, top_h=0.4)
    with_processor = _generate(model, ids, logits_processor=[TopHLogitsProcessor(0.4)])
    try:
        use_kernel_for_transformers_top_h()
        with_kernel = _generate(model, ids, top_h=0.4)
    finally:
        use_kernel_for_transformers_top_h(False)
    assert torch.equal(with_processor, ref) and torch.equal(with_kernel, ref)
    untruncated = _generate(model, ids)
    assert not torch.equal(untruncated, ref)  # the comparison above is not vacuous


def test_top_h_generate_loop():
    from entropy_kernels.decoding import top_h_generate

    table = torch.randn(30, 30) * 4
    out = top_h_generate(lambda x: table[x[:, -1]], torch.tensor([[1], [2]]), 6, 0.5, eos_token_id=3,
                         generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 7)
    for t in range(1, 7):  # every emitted token is in the Top-H set of its step (or eos after eos)
        prev = out[:, t - 1]
        keep = ek.top_h_mask(table[prev], 0.5)
        finished = (out[:, 1:t] == 3).any(dim=1) if t > 1 else torch.zeros(2, dtype=torch.bool)
        assert (keep[torch.arange(2), out[:, t]] | (finished & (out[:, t] == 3))).all()
