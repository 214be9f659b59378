"""CUDA-only checks of linear_logprob_entropy: bf16 at real tile counts, memory of the fused
(no [N, V] buffer) and stored (exactly one bf16 copy of the logits) modes."""

import pytest
import torch

import entropy_kernels as ek
from gpu_helpers import peak_extra_bytes
from test_linear_logprob_entropy import oracle, rel

pytestmark = pytest.mark.gpu


def _inputs(n, d, v, dtype=torch.bfloat16):
    h = torch.randn(n, d, device="cuda").to(dtype).requires_grad_()
    w = (torch.randn(v, d, device="cuda") / d**0.5 * 3).to(dtype).requires_grad_()
    y = torch.randint(0, v, (n,), device="cuda")
    y[::7] = -100
    return h, w, y


@pytest.mark.parametrize("impl", ["fused", "stored", "chunked"])
@pytest.mark.parametrize("n, d, v", [(1024, 512, 32000), (333, 520, 32003)])
def test_bf16_matches_float64(impl, n, d, v, monkeypatch):
    if impl == "chunked":  # 128-token chunks: the dW sum crosses several chunks
        import entropy_kernels.ops.linear_softmax_chunked as chunked

        monkeypatch.setattr(chunked, "CHUNK_BYTES", 128 * v * 2)
    h, w, y = _inputs(n, d, v)
    lp, ent = ek.linear_logprob_entropy(h, w, y, temperature=0.9, impl=impl)
    g1, g2 = torch.randn_like(lp), torch.randn_like(ent)
    torch.autograd.backward([lp, ent], [g1, g2])
    hr, wr = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    lp_r, ent_r = oracle(hr, wr, y, temperature=0.9, logits_dtype=torch.bfloat16 if impl in ("stored", "chunked") else None)
    torch.autograd.backward([lp_r, ent_r], [g1.double(), g2.double()])
    assert rel(lp, lp_r) <= 1e-2 and rel(ent, ent_r) <= 1e-2
    assert rel(h.grad, hr.grad) <= 2e-2 and rel(w.grad, wr.grad) <= 2e-2




def _step(h, w, y, impl):
    lp, ent = ek.linear_logprob_entropy(h, w, y, impl=impl)
    (lp.sum() + 0.01 * ent.sum()).backward()


def test_fused_memory_has_no_logits():
    n, d, v = 4096, 1024, 65536
    h, w, y = _inputs(n, d, v)
    _step(h, w, y, "fused")
    h.grad = w.grad = None
    peak = peak_extra_bytes(lambda: _step(h, w, y, "fused"))
    grads = (n * d + v * d) * 2
    accumulators = n * d * 4 + min(v * d * 4, 256 * 2**20)  # fp32 dh and one dW vocabulary chunk
    assert peak - grads <= accumulators + 32 * 2**20, f"{(peak - grads) / 2**20:.1f} MiB beyond the gradients"
    assert peak < n * v * 2


def test_stored_memory_is_one_copy_of_the_logits():
    n, d, v = 4096, 1024, 65536
    h, w, y = _inputs(n, d, v)
    _step(h, w, y, "stored")
    h.grad = w.grad = None
    peak = peak_extra_bytes(lambda: _step(h, w, y, "stored"))
    grads = (n * d + v * d) * 2
    logits = n * v * 2
    assert peak <= grads + logits + 300 * 2**20  # + one backward chunk (256 MiB) and slack
    assert peak < grads + 2 * logits


def test_chunked_memory_is_one_chunk_of_logits(monkeypatch):
    """chunked keeps no logits between forward and backward: at most one chunk (and its
    gradient, written in place) beyond the gradients, far below one copy of the logits."""
    import entropy_kernels.ops.linear_softmax_chunked as chunked

    n, d, v = 4096, 1024, 65536
    monkeypatch.setattr(chunked, "CHUNK_BYTES", 64 * 2**20)  # 512 tokens of 65536 bf16 logits
    h, w, y = _inputs(n, d, v)
    _step(h, w, y, "chunked")
    h.grad = w.grad = None
    peak = peak_extra_bytes(lambda: _step(h, w, y, "chunked"))
    grads = (n * d + v * d) * 2
    chunk = 64 * 2**20
    # one chunk of logits, the chunk's dh product before its copy, stats and coefficients
    assert peak - grads <= chunk + 512 * d * 2 + 32 * 2**20, f"{(peak - grads) / 2**20:.1f} MiB beyond the gradients"
    assert peak < grads + n * v * 2 // 4
