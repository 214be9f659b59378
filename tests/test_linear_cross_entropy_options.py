"""linear_cross_entropy's class weights (F.cross_entropy(weight=...) semantics) and integer
shifts, against float64 oracles on every backend and implementation."""

import pytest
import torch
import torch.nn.functional as F

import entropy_kernels as ek
from entropy_kernels.training import LinearCrossEntropyLoss

N, D, V = 23, 16, 90


def _impls(backend):
    # the kernels' own paths under the interpreter; the CPU reference path otherwise
    return ["fused", "chunked"] if backend.name == "cpu-triton-interpreter" else ["reference", "auto"]


def _data(device, ignore_index=-100):
    h = torch.randn(N, D, dtype=torch.float64).float().to(device)
    w = (torch.randn(V, D, dtype=torch.float64) / D**0.5 * 2).float().to(device)
    y = torch.randint(0, V, (N,))
    y[torch.rand(N) < 0.25] = ignore_index
    cw = (torch.rand(V, dtype=torch.float64) * 2 + 0.05).float().to(device)
    return h, w, y.to(device), cw


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore_index", [-100, 3])
def test_class_weight_equals_torch_cross_entropy_weight(backend, reduction, ignore_index):
    if backend.device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    h, w, y, cw = _data(backend.device, ignore_index)
    z = h.double() @ w.double().T
    hx, wx = h.clone().requires_grad_(), w.clone().requires_grad_()
    want = F.cross_entropy(z.requires_grad_(), y, weight=cw.double(), reduction=reduction, ignore_index=ignore_index)
    up = torch.rand(want.shape, dtype=torch.float64, device=z.device) if reduction == "none" else torch.tensor(1.0, dtype=torch.float64, device=z.device)
    hd, wd = h.double().requires_grad_(), w.double().requires_grad_()
    F.cross_entropy(hd @ wd.T, y, weight=cw.double(), reduction=reduction, ignore_index=ignore_index).backward(up)
    for impl in _impls(backend):
        if impl == "chunked" and reduction == "none":
            continue  # chunked computes gradients of a scalar loss only
        hx.grad = wx.grad = None
        with backend.context():
            got = ek.linear_cross_entropy(hx, wx, y, class_weight=cw, reduction=reduction, ignore_index=ignore_index,
                                          impl=impl)
            got.backward(up.float())
        torch.testing.assert_close(got.double(), want.detach(), rtol=2e-5, atol=2e-5, msg=impl)
        torch.testing.assert_close(hx.grad.double(), hd.grad, rtol=1e-4, atol=2e-6, msg=impl)
        torch.testing.assert_close(wx.grad.double(), wd.grad, rtol=1e-4, atol=2e-6, msg=impl)


def test_class_weight_through_the_loss_module():
    h, w, y, cw = _data("cpu")
    loss_fn = LinearCrossEntropyLoss(class_weight=cw)
    assert "class_weight" in dict(loss_fn.named_buffers())
    want = F.cross_entropy(h.double() @ w.double().T, y, weight=cw.double())
    torch.testing.assert_close(loss_fn(h, w, y).double(), want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("s", [0, 1, 2, 5, True, False])
def test_integer_shift_equals_a_manual_slice(backend, s):
    if backend.device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    b, t = 3, 9
    h = torch.randn(b, t, D, dtype=torch.float64).float().to(backend.device)
    w = (torch.randn(V, D, dtype=torch.float64) / D**0.5).float().to(backend.device)
    y = torch.randint(0, V, (b, t), device=backend.device)
    k = int(s)
    z = h.double() @ w.double().T
    z_kept, y_kept = (z[:, :-k], y[:, k:]) if k else (z, y)
    for reduction in ("mean", "none"):
        want = F.cross_entropy(z_kept.reshape(-1, V), y_kept.reshape(-1), reduction=reduction)
        with backend.context():
            got, lse = ek.linear_cross_entropy(h, w, y, shift=s, reduction=reduction, return_lse=True, impl="fused"
                                               if backend.name == "cpu-triton-interpreter" else "auto")
        if reduction == "none":
            assert got.shape == (b, t - k) and lse.shape == (b, t - k)
            got = got.reshape(-1)
        torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=2e-5)
        torch.testing.assert_close(lse.double().reshape(-1), torch.logsumexp(z_kept, -1).reshape(-1), rtol=2e-5, atol=2e-5)


def test_shift_past_the_sequence_is_all_ignored():
    h, w = torch.randn(2, 3, D), torch.randn(V, D)
    y = torch.randint(0, V, (2, 3))
    assert torch.isnan(ek.linear_cross_entropy(h, w, y, shift=4))  # no target left: mean of nothing
    assert ek.linear_cross_entropy(h, w, y, shift=4, reduction="none").shape == (2, 0)


@pytest.mark.parametrize("bad,exc,name", [
    (dict(shift=-1), ValueError, "shift"), (dict(shift=1.0), TypeError, "shift"), (dict(shift="1"), TypeError, "shift"),
    (dict(class_weight=torch.ones(V - 1)), ValueError, "class_weight"),
    (dict(class_weight=torch.ones(V, dtype=torch.int64)), TypeError, "class_weight"),
    (dict(class_weight=[1.0] * V), TypeError, "class_weight"),
    (dict(class_weight=torch.ones(V), label_smoothing=0.1), ValueError, "class_weight"),
])
def test_bad_shift_and_class_weight_raise_naming_the_argument(bad, exc, name):
    h, w = torch.randn(2, 5, D), torch.randn(V, D)
    y = torch.randint(0, V, (2, 5))
    with pytest.raises(exc, match=name):
        ek.linear_cross_entropy(h, w, y, **bad)
