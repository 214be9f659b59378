"""The Triton entropy kernels launched directly (no op layer), with tiny block sizes and forced
row splits so that multi-block loops, ragged last blocks and the split/combine path all run on
small shapes: under the interpreter on CPU, compiled on CUDA."""

import pytest
import torch

from entropy_kernels import _backend
from test_entropy import NEG_INF, oracle, random_logits, rel_err

pytestmark = [pytest.mark.kernels, pytest.mark.skipif(not _backend.triton_available(), reason="needs triton")]


def _device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def _kernels():
    if _device() == "cpu" and not _backend.interpreting():
        pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1")
    from entropy_kernels.kernels import entropy as K

    return K


@pytest.mark.parametrize("block, num_splits", [(16, 1), (16, 3), (32, 7), (64, 2), (128, None)])
@pytest.mark.parametrize("n_cols", [1, 15, 16, 17, 100, 301])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_kernel_blocks_and_splits(block, num_splits, n_cols, dtype):
    K = _kernels()
    x = random_logits((5, n_cols), dtype, _device(), masked_fraction=0.25 if n_cols > 1 else 0.0)
    h, lse, stats = K.entropy_forward(x, None, 0.8, block=block, num_splits=num_splits)
    xr = x.cpu().double().requires_grad_()
    h_ref, lse_ref = oracle(xr, 0.8)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert rel_err(h, h_ref) <= tol or (h.double().cpu() - h_ref).abs().max() < 1e-6
    assert rel_err(lse, lse_ref) <= tol

    g_h, g_lse = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    grad = K.entropy_backward(
        g_h.to(h), g_lse.to(h), x, h, stats, None, 0.8, block=block, num_splits=num_splits
    )
    torch.autograd.backward((h_ref, lse_ref), (g_h, g_lse))
    assert rel_err(grad, xr.grad) <= (1e-9 if dtype == torch.float64 else 2e-3)


def test_kernel_split_rows_with_masked_slices():
    """A split whose whole slice is -inf must merge as an empty partial, not as nan."""
    K = _kernels()
    x = random_logits((3, 96), torch.float32, _device())
    x[:, :64] = NEG_INF  # first two splits of 32 see only masked logits
    x[2, :] = NEG_INF  # and one row is fully masked
    h, lse, _ = K.entropy_forward(x, None, 1.0, block=16, num_splits=6)
    h_ref, lse_ref = oracle(x.cpu())
    torch.testing.assert_close(h.cpu()[:2].double(), h_ref[:2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse.cpu()[:2].double(), lse_ref[:2], rtol=1e-6, atol=1e-6)
    assert torch.isnan(h[2]) and torch.isneginf(lse[2])


def test_kernel_row_temperature_and_strides():
    K = _kernels()
    base = random_logits((3, 6, 80), torch.float32, _device())
    view = base[:, 1:4, 5:70]  # two leading strides, sliced vocab
    row_t = (torch.rand(9) + 0.5).to(view.device)
    h, lse, _ = K.entropy_forward(view, row_t, 1.0, block=16, num_splits=2)
    h_ref, lse_ref = oracle(view.cpu(), row_t.cpu().reshape(3, 3))
    assert rel_err(h, h_ref) <= 1e-5 and rel_err(lse, lse_ref) <= 1e-5


def test_linear_softmax_backward_in_vocabulary_chunks():
    """The fused backward accumulates dW one vocabulary chunk per launch: any chunking must give
    the same gradients as the float64 reference (targets and bias shift with the chunk)."""
    if _device() == "cpu" and not _backend.interpreting():
        pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1")
    from entropy_kernels.kernels import linear_softmax as L
    from entropy_kernels.reference import linear_softmax as R

    n, d, v = 21, 32, 300
    h = torch.randn(n, d).half().to(_device())
    w = (torch.randn(v, d) * 0.3).half().to(_device())
    b = torch.randn(v).half().to(_device())
    y = torch.randint(0, v, (n,)).to(_device())
    stats = L.linear_softmax_forward(h, w, b, y, 0.0, 1.0)
    coeffs = torch.randn(n, 4).to(_device())
    ref = R.linear_softmax_backward_reference(
        coeffs.cpu().double(), h.cpu().double(), w.cpu().double(), b.cpu().double(), y.cpu(), stats.cpu().double()
    )
    for chunk in (None, 128, 64):
        got = L.linear_softmax_backward(coeffs, None, h, w, b, y, stats, 0.0, 1.0, False, block_v=64, vocab_chunk=chunk)
        for g, r in zip(got, ref):
            assert rel_err(g, r) <= 2e-3, chunk
