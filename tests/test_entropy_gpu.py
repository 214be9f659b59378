"""CUDA-only properties of entropy_kernels.entropy: real vocabulary sizes (split and unsplit
launch paths), no [N, V] fp32 temporaries, CUDA-graph capture (no host sync) and int64 offsets."""

import pytest
import torch

import entropy_kernels as ek
from gpu_helpers import peak_extra_bytes
from test_entropy import oracle, rel_err

pytestmark = pytest.mark.gpu
V = 151936


@pytest.mark.parametrize("rows", [1, 64, 1024])  # 1 and 64 rows are split over programs, 1024 not
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_large_vocab_matches_float64(rows, dtype):
    x = (torch.randn(rows, V, device="cuda") * 4).to(dtype)
    x[:, :1000] = float("-inf")
    xk = x.clone().requires_grad_()
    h, lse = ek.entropy(xk, temperature=1.3, return_lse=True)
    g = torch.randn(rows, device="cuda")
    h.backward(g)
    sub = slice(0, min(rows, 64))  # float64 oracle on a subset keeps the test light
    xr = x[sub].double().requires_grad_()
    h_ref, lse_ref = oracle(xr, 1.3)
    h_ref.backward(g[sub].double())
    assert rel_err(h[sub], h_ref) <= 1e-5 and rel_err(lse[sub], lse_ref) <= 1e-5
    assert rel_err(xk.grad[sub], xr.grad) <= (1e-5 if dtype == torch.float32 else 1e-2)




def test_no_fp32_copy_of_the_logits_is_allocated():
    rows = 256
    x = torch.randn(rows, V, device="cuda", dtype=torch.bfloat16)
    fp32_copy = rows * V * 4
    peak = peak_extra_bytes(lambda: ek.entropy(x))
    assert peak < 1 << 20, f"forward allocated {peak} bytes"  # outputs and per-row stats only
    xg = x.clone().requires_grad_()
    g = torch.randn(rows, device="cuda")
    peak = peak_extra_bytes(lambda: ek.entropy(xg).backward(g))
    grad_bytes = rows * V * 2  # the bf16 gradient itself is the only [N, V] allocation
    assert peak < grad_bytes + (1 << 20) < fp32_copy, f"fwd+bwd allocated {peak} bytes"


def test_cuda_graph_capture():
    x = torch.randn(64, V, device="cuda", dtype=torch.bfloat16)
    temps = torch.rand(64, device="cuda") + 0.5
    ek.entropy(x, temperature=temps)  # compile kernels outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        h = ek.entropy(x, temperature=temps)
    x.copy_(torch.randn_like(x))
    graph.replay()
    h_ref, _ = oracle(x[:8], temps[:8])
    assert rel_err(h[:8], h_ref) <= 1e-5


def test_offsets_beyond_int32():
    rows = (2**31) // V + 8  # rows * V > 2**31 elements
    x = torch.empty(rows, V, device="cuda", dtype=torch.bfloat16).normal_()
    last = x[-4:]
    h = ek.entropy(x)
    h_ref, _ = oracle(last)
    assert rel_err(h[-4:], h_ref) <= 1e-5
