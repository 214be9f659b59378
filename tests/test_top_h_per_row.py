"""Per-row Top-H settings: a ``[B]`` tensor ``temperature`` (and ``alpha``) in ``top_h_mask`` /
``top_h_sample``, and a ``[B]`` tensor ``top_h`` in ``TopHLogitsProcessor``, against the float64
reference row by row (each row at its own scalar settings)."""

import pytest
import torch

import entropy_kernels as ek
from entropy_kernels.decoding import TopHLogitsProcessor
from entropy_kernels.reference.top_h import top_h_mask_reference


def run(backend, fn, *args, **kwargs):
    with backend.context():
        return fn(*args, **kwargs)


def _rows_reference(x, alpha, temperature, mode):
    """float64 reference, one row at a time at its own (α, T)."""
    return torch.cat([top_h_mask_reference(x[i : i + 1].double(), alpha[i : i + 1], float(temperature[i]), mode,
                                           dtype=torch.float64) for i in range(x.shape[0])])


def _assert_close_sets(got, ref):
    # equal, or one token apart where a row sits on the boundary to fp32 rounding
    for i in range(got.shape[0]):
        assert torch.equal(got[i], ref[i]) or abs(int(got[i].sum()) - int(ref[i].sum())) == 1, f"row {i}"


@pytest.mark.parametrize("mode", ["transformers", "exact"])
def test_per_row_temperature_and_alpha_match_the_reference(backend, mode):
    x = torch.randn(3, 1000) * 3
    alpha = torch.tensor([0.3, 0.6, 0.9])
    temperature = torch.tensor([0.5, 1.0, 2.0])
    dev = backend.device
    got = run(backend, ek.top_h_mask, x.to(dev), alpha.to(dev), temperature=temperature.to(dev), mode=mode).cpu()
    _assert_close_sets(got, _rows_reference(x, alpha, temperature, mode))
    seed, off = torch.tensor([2], device=dev), torch.tensor([0], device=dev)
    tokens, logprob, logprob_kept = run(backend, ek.top_h_sample, x.to(dev), alpha.to(dev), temperature=temperature.to(dev),
                                        mode=mode, seed=seed, offset=off, return_logprobs=True)
    tokens = tokens.cpu()
    rows = torch.arange(3)
    assert got[rows, tokens].all()
    z = x.double() / temperature.double()[:, None]
    full = torch.log_softmax(z, -1)[rows, tokens]
    kept = torch.log_softmax(torch.where(got, z, float("-inf")), -1)[rows, tokens]
    torch.testing.assert_close(logprob.cpu().double(), full, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(logprob_kept.cpu().double(), kept, atol=2e-4, rtol=1e-4)


def test_scalar_tensor_temperature_equals_the_float(backend):
    x = (torch.randn(2, 500) * 2).to(backend.device)
    a = run(backend, ek.top_h_mask, x, 0.5, temperature=torch.tensor(0.7, device=backend.device))
    b = _rows_reference(x.cpu(), torch.full((2,), 0.5), torch.full((2,), 0.7), "transformers")
    _assert_close_sets(a.cpu(), b)


def test_logits_processor_with_per_row_top_h(backend):
    scores = torch.randn(3, 400) * 3
    top_h = torch.tensor([0.2, 0.5, 0.8])
    with backend.context():
        got = TopHLogitsProcessor(top_h)(None, scores.to(backend.device)).cpu()
        for i in range(3):
            one = TopHLogitsProcessor(float(top_h[i]))(None, scores[i : i + 1].to(backend.device)).cpu()
            assert torch.equal(got[i : i + 1], one)
    _assert_close_sets(~torch.isneginf(got), _rows_reference(scores, top_h, torch.ones(3), "transformers"))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: ek.top_h_mask(torch.randn(2, 10), 0.4, temperature=torch.ones(3)), ValueError, "temperature"),
        (lambda: ek.top_h_mask(torch.randn(2, 10), 0.4, temperature=torch.ones(2, 1)), ValueError, "temperature"),
        (lambda: ek.top_h_mask(torch.randn(2, 10), 0.4, temperature=torch.ones(2, dtype=torch.int64)), TypeError, "temperature"),
        (lambda: ek.top_h_sample(torch.randn(2, 10), 0.4, temperature=torch.ones(3)), ValueError, "temperature"),
        (lambda: ek.top_h_mask(torch.randn(2, 10), 0.4, temperature=torch.ones(2, device="meta")), ValueError, "temperature"),
        (lambda: TopHLogitsProcessor(torch.ones(2, 2)), ValueError, "top_h"),
        (lambda: TopHLogitsProcessor(torch.ones(2, dtype=torch.int64)), TypeError, "top_h"),
    ],
)
def test_bad_per_row_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()
