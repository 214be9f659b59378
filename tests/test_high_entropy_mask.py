"""high_entropy_mask (the "80/20 rule" mask) against a pure-Python oracle on every backend: the
torch reference on the CPU, the Triton radix select under the interpreter and on CUDA (one
cooperative launch eagerly, four launches under torch.compile); ties, NaN/inf, masks of every
dtype, the count formula, opcheck, torch.compile, CUDA-graph capture, bad input."""

import math

import pytest
import torch

import entropy_kernels as ek
from entropy_kernels import config
from entropy_kernels.ops.high_entropy_mask import high_entropy_mask_op

try:
    from entropy_kernels.kernels import cov_launch as K
except Exception:  # pragma: no cover - no Triton
    K = None


def mask_oracle(entropy, mask, q):
    """Python: rank valid tokens by (-float32 entropy, flat index), keep the first ceil(q·n − 1e-9)."""
    ent = entropy.float().double().reshape(-1).tolist()
    valid = (mask.reshape(-1) != 0).tolist()
    idx = [i for i, v in enumerate(valid) if v and not math.isnan(ent[i])]
    n = sum(valid)
    k = 0 if n == 0 else max(1, math.ceil(q * n - 1e-9))
    keep = sorted(idx, key=lambda i: (-ent[i], i))[:k]
    if len(keep) < k:  # nan entropies rank last among the valid tokens
        keep += [i for i, v in enumerate(valid) if v and i not in keep][: k - len(keep)]
    out = torch.zeros(len(valid), dtype=torch.bool)
    out[keep] = True
    return out.reshape(entropy.shape)


def run(backend, *args, **kwargs):
    with backend.context():
        return ek.high_entropy_mask(*args, **kwargs)


@pytest.fixture(params=["one launch", "four launches"])
def launches(request, monkeypatch):
    monkeypatch.setattr(config.CONFIG, "cov_fused", request.param == "one launch")
    return request.param


@pytest.mark.parametrize("q", [0.2, 0.05, 0.5, 1.0])
def test_matches_oracle(backend, launches, q):
    shapes = [(4, 50), (1, 1), (3, 7), (2, 500)] if backend.name != "cuda-triton" else [(4, 50), (3, 7), (64, 4096)]
    for shape in shapes:
        ent = torch.rand(shape) * 3
        ent[..., ::5] = 1.5  # ties at many positions
        mask = torch.rand(shape) < 0.7
        got = run(backend, ent.to(backend.device), mask.to(backend.device), top_fraction=q)
        assert got.dtype == torch.bool and got.shape == ent.shape
        assert torch.equal(got.cpu(), mask_oracle(ent, mask, q)), (shape, q)


def test_many_programs_and_ties_across_them(backend, launches, monkeypatch):
    """32-token blocks: several programs (phase launches) or many blocks in one (fused under the
    interpreter); a value shared by most tokens puts the threshold's ties in every chunk."""
    if K is not None:
        monkeypatch.setattr(K, "MAX_BLOCK", 32)
    ent = torch.full((5, 61), 0.75)
    ent[:, ::7] = torch.rand(5, 9) * 2
    mask = torch.rand(5, 61) < 0.85
    got = run(backend, ent.to(backend.device), mask.to(backend.device), top_fraction=0.4)
    assert torch.equal(got.cpu(), mask_oracle(ent, mask, 0.4))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_input_dtypes_rank_as_float32(backend, launches, dtype):
    ent = (torch.rand(3, 90, dtype=torch.float64) * 4).to(dtype)
    mask = torch.rand(3, 90) < 0.8
    got = run(backend, ent.to(backend.device), mask.to(backend.device), top_fraction=0.3)
    assert torch.equal(got.cpu(), mask_oracle(ent, mask, 0.3))


def test_nan_inf_and_mask_dtypes(backend, launches):
    ent = torch.tensor([[0.5, float("nan"), 2.0, float("inf"), -float("inf"), 1.0, float("nan"), 0.0]])
    for mask in (torch.ones(1, 8, dtype=torch.bool), torch.ones(1, 8, dtype=torch.int64),
                 torch.tensor([[1.0, 1.0, 0.0, 1.0, 1.0, 0.5, 1.0, -2.0]])):
        for q in (0.2, 0.6, 0.9, 1.0):
            got = run(backend, ent.to(backend.device), mask.to(backend.device), top_fraction=q)
            assert torch.equal(got.cpu(), mask_oracle(ent, mask, q)), (mask.dtype, q)


def test_signed_zeros_tie_and_tiny_or_fp8_mask_values(backend, launches):
    """−0.0 and +0.0 entropies are equal (ties → lower index; −0.0 is what −Σp·log p gives for a
    one-hot row); a float64 mask weight of 1e-300 is nonzero, so valid; float8 masks work."""
    ent = torch.tensor([[-0.0, 0.0, 0.0, -0.0, 0.0, -0.0]])
    for mask in (torch.ones(1, 6, dtype=torch.bool),
                 torch.tensor([[1.0, 1e-300, 1.0, 5e-324, 0.0, 1.0]], dtype=torch.float64),
                 torch.tensor([[1.0, 0.0, 2.0, 1.0, 1.0, 0.0]]).to(torch.float8_e4m3fn)):
        for q in (0.34, 0.5, 0.8):
            got = run(backend, ent.to(backend.device), mask.to(backend.device), top_fraction=q)
            assert torch.equal(got.cpu(), mask_oracle(ent, mask.float() if mask.dtype == torch.float8_e4m3fn else mask, q)), (mask.dtype, q)


def test_count_at_exact_multiples(backend):
    """q·n landing on an integer up to fp64 rounding is not rounded up (0.2·10, 0.05·700, 0.1·30).
    The last case is one where one rounding (an FMA of n·q − 1e-9) gives 12031 and two roundings,
    as Python and torch compute it, give 12030: the kernel must not contract the two."""
    for n, q in ((10, 0.2), (700, 0.05), (30, 0.1), (3, 1.0), (7, 1 / 7), (22678, 0.5304700590881472)):
        ent = torch.rand(1, n)
        got = run(backend, ent.to(backend.device), torch.ones(1, n, dtype=torch.bool, device=backend.device), top_fraction=q)
        assert int(got.sum()) == max(1, math.ceil(q * n - 1e-9)), (n, q)


def test_edge_cases(backend):
    dev = backend.device
    ent = torch.tensor([0.5, float("nan"), 2.0, 1.0], device=dev)
    assert not run(backend, ent, torch.zeros(4, dtype=torch.bool, device=dev)).any()  # no valid token
    got = run(backend, ent, torch.tensor([True, True, False, False], device=dev), top_fraction=0.2)
    assert got.tolist() == [True, False, False, False]  # k = 1; nan ranks last
    assert run(backend, ent, torch.ones(4, dtype=torch.bool, device=dev), top_fraction=0.5).tolist() == [False, False, True, True]
    empty = run(backend, torch.empty(0, 5, device=dev), torch.empty(0, 5, dtype=torch.bool, device=dev))
    assert empty.shape == (0, 5) and empty.dtype == torch.bool
    one = run(backend, torch.tensor([[3.0]], device=dev), torch.tensor([[True]], device=dev), top_fraction=0.01)
    assert one.tolist() == [[True]]


def test_detached_and_non_contiguous(backend):
    base = torch.rand(40, 6, device=backend.device, requires_grad=True)
    ent = base.t()  # non-contiguous view with grad
    mask = (torch.rand(40, 6, device=backend.device) < 0.9).t()
    got = run(backend, ent, mask, top_fraction=0.25)
    assert torch.equal(got.cpu(), mask_oracle(ent.detach().cpu(), mask.cpu(), 0.25))


def test_one_launch_equals_four_launches(backend, monkeypatch):
    if backend.name == "cpu-reference" or K is None:
        pytest.skip("compares the two Triton paths")
    ent = torch.rand(7, 333, device=backend.device)
    ent[:, ::3] = 0.5
    mask = torch.rand(7, 333, device=backend.device) < 0.8
    calls = []
    real = K.top_values_fused
    monkeypatch.setattr(K, "top_values_fused", lambda *a: calls.append(1) or real(*a))
    with backend.context():
        one = ek.high_entropy_mask(ent, mask, 0.3)
        monkeypatch.setattr(config.CONFIG, "cov_fused", False)
        four = ek.high_entropy_mask(ent, mask, 0.3)
    assert calls == [1] and torch.equal(one, four)


@pytest.mark.kernel_backends_only
def test_opcheck(backend):
    ent = torch.rand(3, 41, device=backend.device)
    mask = torch.rand(3, 41, device=backend.device) < 0.7
    with backend.context():
        torch.library.opcheck(high_entropy_mask_op, (ent, mask, 0.2))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()
    ent = torch.rand(4, 300, device=device)
    mask = torch.rand(4, 300, device=device) < 0.8
    fn = torch.compile(lambda e, m: ek.high_entropy_mask(e, m, 0.2), fullgraph=True)
    assert torch.equal(fn(ent, mask).cpu(), mask_oracle(ent.cpu(), mask.cpu(), 0.2))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(top_fraction=0.0), ValueError, "top_fraction"),
        (dict(top_fraction=1.5), ValueError, "top_fraction"),
        (dict(top_fraction=True), ValueError, "top_fraction"),
        (dict(mask=torch.ones(3, dtype=torch.bool)), ValueError, "mask shape"),
        (dict(entropy=torch.ones(4, dtype=torch.int64)), TypeError, "entropy"),
        (dict(mask=torch.ones(4, dtype=torch.complex64)), TypeError, "mask"),
    ],
)
def test_bad_input(kwargs, error, match):
    args = dict(entropy=torch.rand(4), mask=torch.ones(4, dtype=torch.bool), top_fraction=0.2)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        ek.high_entropy_mask(**args)


@pytest.mark.gpu
@pytest.mark.parametrize("flag", ["1", "0"])
def test_cuda_graph_capturable_million_tokens(flag, monkeypatch):
    monkeypatch.setattr(config.CONFIG, "cov_fused", flag != "0")
    ent = torch.rand(1 << 20, device="cuda")
    mask = torch.rand(1 << 20, device="cuda") < 0.8
    ek.high_entropy_mask(ent, mask)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ek.high_entropy_mask(ent, mask)
    ent.copy_(torch.rand_like(ent))
    graph.replay()
    assert out.sum().item() == math.ceil(0.2 * mask.sum().item())
    assert torch.equal(out.cpu(), mask_oracle(ent.cpu(), mask.cpu(), 0.2))
