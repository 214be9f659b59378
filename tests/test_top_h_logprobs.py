"""Top-H log-probabilities: ``top_h_mask(..., return_log_mass=True)`` (log Σ_kept p) and
``top_h_sample(..., return_logprobs=True)`` (the sampled token's log-probability under the full
softmax and under the renormalised kept set), against float64 ``log_softmax`` of the full and
of the kept distribution on fresh random data, on every backend; NaN rows; the op's
registration (opcheck, torch.compile) with the statistics requested."""

import pytest
import torch

import entropy_kernels as ek

MODES = ["transformers", "exact"]
# (dtype, temperature): the interpreter is slow, so each dtype gets some of the temperatures
CASES = [(torch.float32, 1.0), (torch.float32, 0.6), (torch.float16, 1.7),
         pytest.param(torch.bfloat16, 0.8, marks=pytest.mark.gpu)]


def run(backend, fn, *args, **kwargs):
    with backend.context():
        return fn(*args, **kwargs)


def fullgraph_inputs(device):
    """Logits ``[4, 300]`` and a sampling seed / offset on ``device`` for a ``torch.compile``
    fullgraph test, with dynamo's caches cleared first (the test compiles from scratch)."""
    torch._dynamo.reset()
    logits = torch.randn(4, 300, device=device) * 2
    return logits, torch.tensor([5], device=device), torch.tensor([0], device=device)


def _inputs(dtype, vocab=2048):
    """4 rows: LM-like, peaked, flat (the exact rule keeps > 1024 tokens at α = 0.95: the
    kernel's whole-row bisection path) and one with -inf and NaN entries."""
    x = torch.randn(4, vocab) * torch.tensor([[3.0], [8.0], [0.02], [2.0]])
    x[3, torch.randperm(vocab)[:300]] = float("-inf")
    x[3, 7] = float("nan")
    alpha = torch.tensor([0.4, 0.6, 0.95, 0.3])
    return x.to(dtype), alpha


def _log_softmax64(x, temperature, keep=None):
    """float64 log_softmax of x / T (NaN as -inf), over the whole row or over ``keep`` only."""
    z = x.double() / temperature
    z = torch.where(torch.isnan(z), float("-inf"), z)
    if keep is not None:
        z = torch.where(keep, z, float("-inf"))
    return torch.log_softmax(z, dim=-1)


def _tol(dtype):
    # computed in fp32 from the (rounded) inputs on every path: the fp32 lse of logits of
    # scale ≤ 8·4 / T is good to a few 1e-6 relative
    return dict(atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype, temperature", CASES)
def test_log_mass_matches_float64_kept_mass(backend, mode, dtype, temperature):
    x, alpha = _inputs(dtype)
    x, alpha = x.to(backend.device), alpha.to(backend.device)
    mask, log_mass = run(backend, ek.top_h_mask, x, alpha, temperature=temperature, mode=mode, return_log_mass=True)
    assert log_mass.dtype == torch.float32 and log_mass.shape == (4,)
    plain = run(backend, ek.top_h_mask, x, alpha, temperature=temperature, mode=mode)
    assert torch.equal(mask, plain)  # the flag changes nothing else
    mask, x = mask.cpu(), x.cpu()
    ref = torch.logsumexp(torch.where(mask, _log_softmax64(x, temperature), torch.tensor(float("-inf"), dtype=torch.float64)), -1)
    torch.testing.assert_close(log_mass.cpu().double(), ref, **_tol(dtype))
    assert (log_mass.cpu() <= 1e-6).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype, temperature", CASES)
def test_sampled_logprobs_match_float64_log_softmax(backend, mode, dtype, temperature):
    x, alpha = _inputs(dtype)
    x, alpha = x.to(backend.device), alpha.to(backend.device)
    seed, off = torch.tensor([3], device=backend.device), torch.tensor([0], device=backend.device)
    tokens, logprob, logprob_kept = run(backend, ek.top_h_sample, x, alpha, temperature=temperature, mode=mode,
                                        seed=seed, offset=off, return_logprobs=True)
    assert logprob.dtype == logprob_kept.dtype == torch.float32 and logprob.shape == logprob_kept.shape == (4,)
    # the same seed without the flag draws the same tokens
    assert torch.equal(tokens, run(backend, ek.top_h_sample, x, alpha, temperature=temperature, mode=mode, seed=seed, offset=off))
    keep = run(backend, ek.top_h_mask, x, alpha, temperature=temperature, mode=mode).cpu()
    x, tokens = x.cpu(), tokens.cpu()
    rows = torch.arange(4)
    assert keep[rows, tokens].all()
    full = _log_softmax64(x, temperature)[rows, tokens]
    kept = _log_softmax64(x, temperature, keep)[rows, tokens]
    torch.testing.assert_close(logprob.cpu().double(), full, **_tol(dtype))
    torch.testing.assert_close(logprob_kept.cpu().double(), kept, **_tol(dtype))
    assert (logprob_kept >= logprob).all() and (logprob_kept.cpu() <= 1e-6).all()


@pytest.mark.parametrize("mode", MODES)
def test_rows_without_a_finite_logit_give_nan(backend, mode):
    """A row of -inf/NaN only: log_mass, logprob and logprob_kept are NaN (documented); the
    other rows are unaffected."""
    x = torch.randn(3, 300)
    x[1] = float("-inf")
    x[2] = float("nan")
    x = x.to(backend.device)
    _, log_mass = run(backend, ek.top_h_mask, x, 0.5, mode=mode, return_log_mass=True)
    _, logprob, logprob_kept = run(backend, ek.top_h_sample, x, 0.5, mode=mode, seed=torch.tensor([1], device=backend.device),
                                   offset=torch.tensor([0], device=backend.device), return_logprobs=True)
    for t in (log_mass, logprob, logprob_kept):
        assert torch.isfinite(t[0]) and torch.isnan(t[1:]).all(), t


def test_alpha_one_keeps_the_full_mass(backend):
    x = (torch.randn(2, 500) * 2).to(backend.device)
    _, log_mass = run(backend, ek.top_h_mask, x, 1.0, mode="exact", return_log_mass=True)
    torch.testing.assert_close(log_mass.cpu(), torch.zeros(2), atol=1e-5, rtol=0)


def test_kept_mass_never_rounds_above_one(backend):
    """log Σ_kept p <= 0 and log p_kept >= log p on every row, also where the kept mass is 1 up to
    fp32 rounding (a peaked row, or nearly the whole row kept), where an fp32 sum can exceed 1."""
    x = torch.randn(64, 300) * 2
    x[::2, 0] += 25.0  # peaked rows: one token holds all but ~1e-10 of the mass
    x = x.to(backend.device)
    alpha = torch.rand(64, device=backend.device) * 0.1 + 0.9
    seed, off = torch.tensor([11], device=backend.device), torch.tensor([0], device=backend.device)
    _, log_mass = run(backend, ek.top_h_mask, x, alpha, mode="exact", return_log_mass=True)
    _, logprob, logprob_kept = run(backend, ek.top_h_sample, x, alpha, mode="exact", seed=seed, offset=off,
                                   return_logprobs=True)
    assert (log_mass <= 0).all(), log_mass.max()
    assert (logprob_kept >= logprob).all(), (logprob_kept - logprob).min()


@pytest.mark.kernel_backends_only
def test_opcheck_with_stats(backend):
    logits = (torch.randn(3, 200) * 2).to(backend.device)
    alpha = torch.full((3,), 0.5, device=backend.device)
    op = torch.ops.entropy_kernels.top_h.default
    with backend.context():
        torch.library.opcheck(op, (logits, alpha, 0.8, False, 100, True, None, None, True))
        torch.library.opcheck(op, (logits, alpha, 0.8, True, 100, True, None, None, True))
        if backend.name != "cpu-triton-interpreter":  # (the kernel's Philox noise differs from the fake trace's reference path)
            seed, off = torch.tensor([1], device=backend.device), torch.tensor([0], device=backend.device)
            torch.library.opcheck(op, (logits, alpha, 0.8, False, 100, False, seed, off, True))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_torch_compile_fullgraph_with_the_flags(device):
    logits, seed, off = fullgraph_inputs(device)

    def step(x):
        mask, log_mass = ek.top_h_mask(x, 0.4, temperature=0.7, return_log_mass=True)
        return (mask, log_mass, *ek.top_h_sample(x, 0.4, mode="exact", seed=seed, offset=off, return_logprobs=True))

    eager = step(logits)
    compiled = torch.compile(step, fullgraph=True)(logits)
    assert torch.equal(eager[0], compiled[0]) and torch.equal(eager[2], compiled[2])
    for a, b in zip(eager[1:], compiled[1:]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: ek.top_h_mask(torch.randn(2, 10), 0.4, return_log_mass=1), TypeError, "return_log_mass"),
        (lambda: ek.top_h_mask(torch.randn(2, 10), 0.4, return_log_mass=None), TypeError, "return_log_mass"),
        (lambda: ek.top_h_sample(torch.randn(2, 10), 0.4, return_logprobs="yes"), TypeError, "return_logprobs"),
        (lambda: ek.top_h_sample(torch.randn(2, 10), 0.4, return_logprobs=torch.tensor(True)), TypeError, "return_logprobs"),
    ],
)
def test_bad_flags(call, error, match):
    with pytest.raises(error, match=match):
        call()
