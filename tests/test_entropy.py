"""entropy_kernels.entropy against an independent float64 oracle, on every backend.

The oracle below is written from the definition (softmax, then -Σ p log p, gradients by float64
autograd), not from the online algorithm the kernels use, so a kernel bug cannot hide in it.
"""

import pytest
import torch

import entropy_kernels as ek

NEG_INF = float("-inf")
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-5, torch.float16: 1e-5, torch.float64: 1e-6}
# Gradients are returned in the input dtype, so a 16-bit gradient carries its rounding.
GRAD_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float64: 1e-6}


def oracle(x, temperature=1.0):
    """(entropy, lse) in float64 from the definition; differentiable, safe for -inf entries."""
    z = x.double()
    if isinstance(temperature, torch.Tensor):
        z = z / temperature.double().expand(x.shape[:-1]).unsqueeze(-1)
    else:
        z = z / temperature
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    finite = ~torch.isneginf(z)
    log_p = torch.where(finite, z - lse, torch.zeros_like(z))  # 0 where masked: no 0*inf
    p = torch.where(finite, torch.exp(z - lse), torch.zeros_like(z))
    return -(p * log_p).sum(-1), lse.squeeze(-1)


def random_logits(shape, dtype, device, scale=3.0, masked_fraction=0.0):
    x = torch.randn(shape, dtype=torch.float64) * scale
    if masked_fraction:
        x[torch.rand(shape) < masked_fraction] = NEG_INF
        x[..., 0] = torch.randn(shape[:-1], dtype=torch.float64)  # keep >= 1 finite per row
    return x.to(dtype).to(device)


def rel_err(actual, expected):
    a, e = actual.double().cpu(), expected.double().cpu()
    assert not torch.isnan(a).any(), "NaN in result"
    return ((a - e).norm() / e.norm().clamp_min(1e-30)).item()


def run(backend, fn, *args, **kwargs):
    with backend.context():
        return fn(*args, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1), (5, 37), (2, 3, 300), (3, 1000)])
@pytest.mark.parametrize("temperature", [1.0, 0.6, 2.5])
def test_values_match_float64(backend, dtype, shape, temperature):
    x = random_logits(shape, dtype, backend.device, masked_fraction=0.1)
    h, lse = run(backend, ek.entropy, x, temperature=temperature, return_lse=True)
    h_ref, lse_ref = oracle(x.cpu(), temperature)
    assert h.shape == shape[:-1] and lse.shape == shape[:-1]
    assert h.dtype == torch.float32 and lse.dtype == torch.float32
    assert rel_err(h, h_ref) <= TOL[dtype] or (h.double().cpu() - h_ref).abs().max() < 1e-6
    assert rel_err(lse, lse_ref) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_gradients_match_float64(backend, dtype, temperature):
    x = random_logits((4, 3, 257), dtype, backend.device, masked_fraction=0.2)
    g_h = torch.randn(4, 3, dtype=torch.float32)
    g_lse = torch.randn(4, 3, dtype=torch.float32)

    xk = x.clone().requires_grad_()
    h, lse = run(backend, ek.entropy, xk, temperature=temperature, return_lse=True)
    run(backend, torch.autograd.backward, (h, lse), (g_h.to(h.device), g_lse.to(h.device)))

    xr = x.cpu().double().requires_grad_()
    h_ref, lse_ref = oracle(xr, temperature)
    torch.autograd.backward((h_ref, lse_ref), (g_h.double(), g_lse.double()))

    assert xk.grad.dtype == dtype and xk.grad.shape == x.shape
    assert rel_err(xk.grad, xr.grad) <= GRAD_TOL[dtype]
    masked = torch.isneginf(x.cpu())
    assert (xk.grad.cpu()[masked] == 0).all()


def test_gradient_of_one_output_only(backend):
    """Only lse (or only H) reaches the loss: the other's gradient is treated as zero."""
    x = random_logits((6, 130), torch.float32, backend.device)
    xk = x.clone().requires_grad_()
    _, lse = run(backend, ek.entropy, xk, temperature=0.5, return_lse=True)
    run(backend, lse.sum().backward)
    expected = torch.softmax(x.cpu().double() / 0.5, dim=-1) / 0.5
    assert rel_err(xk.grad, expected) <= 1e-5

    xk2 = x.clone().requires_grad_()
    h = run(backend, ek.entropy, xk2)
    run(backend, h.sum().backward)
    xr = x.cpu().double().requires_grad_()
    oracle(xr)[0].sum().backward()
    assert rel_err(xk2.grad, xr.grad) <= 1e-5


@pytest.mark.parametrize("offset", [0.0, 1e4, -1e4])
def test_extreme_logits(backend, offset):
    # ±1e4: saturated softmax (scale) and large common offsets (cancellation in lse - E[z]).
    x = (torch.randn(4, 500, dtype=torch.float64) * torch.tensor([1e4, 1.0, 10.0, 0.01]).unsqueeze(-1) + offset)
    x = x.float().to(backend.device)
    xk = x.clone().requires_grad_()
    h, lse = run(backend, ek.entropy, xk, return_lse=True)
    run(backend, h.sum().backward)
    xr = x.cpu().double().requires_grad_()
    h_ref, lse_ref = oracle(xr)
    h_ref.sum().backward()
    assert (h.double().cpu() - h_ref).abs().max() < 2e-5
    assert rel_err(lse, lse_ref) < 1e-6
    assert (xk.grad.double().cpu() - xr.grad).abs().max() < 1e-5


def test_vocab_of_one(backend):
    x = random_logits((7, 1), torch.float32, backend.device)
    xk = x.clone().requires_grad_()
    h, lse = run(backend, ek.entropy, xk, temperature=2.0, return_lse=True)
    run(backend, (h + lse).sum().backward)
    assert (h.cpu() == 0).all()
    torch.testing.assert_close(lse.cpu(), x.cpu()[:, 0] / 2.0)
    torch.testing.assert_close(xk.grad.cpu(), torch.full((7, 1), 0.5))  # d lse / dx = p / T = 1/2


def test_fully_masked_row(backend):
    x = random_logits((3, 50), torch.float32, backend.device)
    x[1] = NEG_INF
    xk = x.clone().requires_grad_()
    h, lse = run(backend, ek.entropy, xk, return_lse=True)
    assert torch.isnan(h[1]) and torch.isneginf(lse[1])
    h_ref, _ = oracle(x.cpu())
    torch.testing.assert_close(h.cpu()[[0, 2]].double(), h_ref[[0, 2]], rtol=1e-5, atol=1e-6)
    run(backend, h[[0, 2]].sum().backward)
    assert (xk.grad[1] == 0).all() and torch.isfinite(xk.grad).all()


@pytest.mark.parametrize(
    "make_view",
    [
        pytest.param(lambda t: t[:, :-1, :], id="time-shift"),
        pytest.param(lambda t: t[..., :150], id="vocab-slice"),
        pytest.param(lambda t: t[::2, 1:, 3:], id="strided-3d"),
        pytest.param(lambda t: t.transpose(0, 1), id="transposed-leading"),
        pytest.param(lambda t: t.transpose(1, 2)[:, :, :5].transpose(1, 2), id="last-dim-strided"),
        pytest.param(lambda t: t.unsqueeze(1).expand(4, 2, 5, 200)[:, :, 1:], id="expanded-4d"),
    ],
)
def test_non_contiguous_inputs(backend, make_view):
    base = random_logits((4, 5, 200), torch.float32, backend.device)
    view = make_view(base)
    xk = view.detach().requires_grad_()
    h = run(backend, ek.entropy, xk, temperature=0.9)
    g = torch.randn(h.shape, dtype=torch.float32)
    run(backend, h.backward, g.to(h.device))
    xr = view.detach().cpu().double().requires_grad_()
    h_ref = oracle(xr, 0.9)[0]
    h_ref.backward(g.double())
    assert h.shape == view.shape[:-1]
    assert rel_err(h, h_ref) <= 1e-5
    assert rel_err(xk.grad, xr.grad) <= 1e-5


@pytest.mark.parametrize("temp_shape", [(), (2, 1), (2, 3)])
def test_per_row_temperature(backend, temp_shape):
    x = random_logits((2, 3, 90), torch.float32, backend.device, masked_fraction=0.1)
    temperature = (torch.rand(temp_shape, dtype=torch.float32) * 1.5 + 0.3).to(backend.device)
    xk = x.clone().requires_grad_()
    h, lse = run(backend, ek.entropy, xk, temperature=temperature, return_lse=True)
    run(backend, (h * 2 - lse).sum().backward)
    xr = x.cpu().double().requires_grad_()
    h_ref, lse_ref = oracle(xr, temperature.cpu())
    (h_ref * 2 - lse_ref).sum().backward()
    assert rel_err(h, h_ref) <= 1e-5 and rel_err(lse, lse_ref) <= 1e-5
    assert rel_err(xk.grad, xr.grad) <= 1e-5


def test_empty_leading_dims(backend):
    x = torch.randn(0, 3, 10, device=backend.device)
    h = run(backend, ek.entropy, x)
    assert h.shape == (0, 3)


def test_outputs_are_fresh(backend):
    x = random_logits((3, 1), torch.float32, backend.device)
    h, lse = run(backend, ek.entropy, x, return_lse=True)
    assert h.data_ptr() != x.data_ptr() and lse.data_ptr() != x.data_ptr()


# ------------------------------------------------------------------------------ bad input ----

@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: ek.entropy(torch.ones(3, 4, dtype=torch.int64)), TypeError, "logits must have a floating dtype"),
        (lambda: ek.entropy(torch.ones(3, 4, dtype=torch.bool)), TypeError, "logits must have a floating dtype"),
        (lambda: ek.entropy([[1.0, 2.0]]), TypeError, "logits must be a torch.Tensor"),
        (lambda: ek.entropy(torch.tensor(1.0)), ValueError, "at least 1 dimension"),
        (lambda: ek.entropy(torch.ones(3, 0)), ValueError, "non-empty last"),
        (lambda: ek.entropy(torch.ones(3, 4), temperature=0.0), ValueError, "temperature must be finite and > 0"),
        (lambda: ek.entropy(torch.ones(3, 4), temperature=-1.0), ValueError, "temperature must be finite and > 0"),
        (lambda: ek.entropy(torch.ones(3, 4), temperature=float("nan")), ValueError, "temperature"),
        (lambda: ek.entropy(torch.ones(3, 4), temperature=float("inf")), ValueError, "temperature"),
        (lambda: ek.entropy(torch.ones(3, 4), temperature=True), TypeError, "temperature"),
        (lambda: ek.entropy(torch.ones(3, 4), temperature="1"), TypeError, "temperature"),
        (lambda: ek.entropy(torch.ones(3, 4), temperature=torch.ones(3, dtype=torch.int32)), TypeError, "temperature"),
        (lambda: ek.entropy(torch.ones(3, 4), temperature=torch.ones(4)), ValueError, "broadcastable"),
        (lambda: ek.entropy(torch.ones(3, 4), temperature=torch.ones(1, 3)), ValueError, "broadcastable"),
        (lambda: ek.entropy(torch.ones(3, 4), temperature=torch.ones(3, device="meta")), ValueError, "temperature is a meta tensor"),  # (a device without data)
    ],
)
def test_bad_input_raises_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ------------------------------------------------- torch.library / autograd / compile -------

def test_gradcheck_float64(backend):
    # small: gradcheck perturbs every input twice, and the interpreter is slow
    x = random_logits((2, 2, 9), torch.float64, backend.device, masked_fraction=0.1).requires_grad_()
    temperature = (torch.rand(2, 1, dtype=torch.float64) + 0.5).to(backend.device)

    def f(x):
        h, lse = ek.entropy(x, temperature=temperature, return_lse=True)
        return h, lse

    with backend.context():
        assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("with_row_temperature", [False, True])
@pytest.mark.kernel_backends_only
def test_opcheck(backend, with_row_temperature):
    x = random_logits((4, 77), torch.float32, backend.device, masked_fraction=0.1)
    row_t = (torch.rand(4) + 0.5).to(backend.device) if with_row_temperature else None
    with backend.context():
        torch.library.opcheck(torch.ops.entropy_kernels.entropy_fwd.default, (x.requires_grad_(), row_t, 0.8))
        h, lse, stats = torch.ops.entropy_kernels.entropy_fwd(x.detach(), row_t, 0.8)
        g = torch.randn_like(h)
        torch.library.opcheck(
            torch.ops.entropy_kernels.entropy_bwd.default, (g, torch.randn_like(lse), x.detach(), h, stats, row_t, 0.8)
        )


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_torch_compile_fullgraph_matches_eager(device):
    torch._dynamo.reset()
    x = random_logits((3, 4, 200), torch.float32, device, masked_fraction=0.1)
    temperature = (torch.rand(3, 1) + 0.5).to(device)

    def loss(x, t_scalar):
        h, lse = ek.entropy(x[:, :-1], temperature=t_scalar, return_lse=True)
        h2 = ek.entropy(x, temperature=temperature)
        return (h * 3).sum() - lse.mean() + h2.sum()

    compiled = torch.compile(loss, fullgraph=True)
    xe = x.clone().requires_grad_()
    xc = x.clone().requires_grad_()
    eager_out = loss(xe, 0.7)
    compiled_out = compiled(xc, 0.7)
    eager_out.backward()
    compiled_out.backward()
    torch.testing.assert_close(compiled_out, eager_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-5, atol=1e-6)
