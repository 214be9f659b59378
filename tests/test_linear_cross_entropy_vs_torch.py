"""linear_cross_entropy against PyTorch's own F.linear_cross_entropy (torch >= 2.13, the chunked
path with LinearCrossEntropyOptions()) over the options both support: values and gradients of
the input, the LM-head weight and the bias, in fp32 on CPU (reference and Triton interpreter),
with a float64 F.cross_entropy oracle as the judge of both."""

import pytest
import torch
import torch.nn.functional as F

import entropy_kernels as ek

builtin = getattr(F, "linear_cross_entropy", None)
pytestmark = [
    pytest.mark.skipif(builtin is None, reason="torch < 2.13 has no F.linear_cross_entropy"),
    # torch's chunked path takes no label smoothing: it warns and runs its reference there
    pytest.mark.filterwarnings("ignore:linear_cross_entropy. ``options`` ignored:UserWarning"),
]

N, D, V = 29, 24, 300
GRID = [
    dict(reduction="mean"),
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(reduction="mean", ignore_index=7),
    dict(reduction="mean", label_smoothing=0.1),
    dict(reduction="sum", label_smoothing=0.2, ignore_index=-1),
    dict(reduction="none", label_smoothing=0.05),
]


def _data(device, bias, ignore_index):
    h = torch.randn(N, D, dtype=torch.float64).float().to(device)
    w = (torch.randn(V, D, dtype=torch.float64) / D**0.5 * 2).float().to(device)
    b = torch.randn(V, dtype=torch.float64).float().to(device) if bias else None
    y = torch.randint(0, V, (N,))
    y[torch.rand(N) < 0.2] = ignore_index
    return h, w, b, y.to(device)


def _loss_and_grads(fn, h, w, b):
    h, w = h.clone().requires_grad_(), w.clone().requires_grad_()
    b = b.clone().requires_grad_() if b is not None else None
    loss = fn(h, w, b)
    upstream = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape) if loss.dim() else None
    loss.backward(upstream)
    grads = [h.grad, w.grad] + ([b.grad] if b is not None else [])
    return loss.detach().double(), [g.double() for g in grads]


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("opts", GRID, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_equals_torch_builtin(backend, opts, bias):
    if backend.device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    ignore_index = opts.get("ignore_index", -100)
    h, w, b, y = _data(backend.device, bias, ignore_index)
    kw = dict(reduction=opts["reduction"], ignore_index=ignore_index, label_smoothing=opts.get("label_smoothing", 0.0))

    def ours(h, w, b):
        with backend.context():
            return ek.linear_cross_entropy(h, w, y, bias=b, **kw)

    def theirs(h, w, b):
        return builtin(h, w, y, linear_bias=b, options=torch.nn.LinearCrossEntropyOptions(), **kw)

    def oracle(h, w, b):
        z = h.double() @ w.double().T + (b.double() if b is not None else 0.0)
        return F.cross_entropy(z, y, **kw)

    got, got_grads = _loss_and_grads(ours, h, w, b)
    ref, ref_grads = _loss_and_grads(theirs, h, w, b)
    exact, exact_grads = _loss_and_grads(oracle, h, w, b)
    torch.testing.assert_close(got, ref, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(got, exact, rtol=2e-5, atol=2e-5)
    for name, g, r, e in zip(("input", "weight", "bias"), got_grads, ref_grads, exact_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=2e-6, msg=name)
        torch.testing.assert_close(g, e, rtol=1e-4, atol=2e-6, msg=name)


def test_all_ignored_mean_is_nan_like_torch(backend):
    if backend.device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    h, w, _, _ = _data(backend.device, False, -100)
    y = torch.full((N,), -100, device=backend.device)
    with backend.context():
        ours = ek.linear_cross_entropy(h, w, y)
    theirs = builtin(h, w, y, options=torch.nn.LinearCrossEntropyOptions())
    assert torch.isnan(ours) and torch.isnan(theirs)
