"""The eager fast path (``_backend.eager_direct``): outside tracing, the public functions of the
cheap ops launch their kernels directly instead of calling their registered ops, whose dispatch
costs more host time than the GPU work. ``EK_VIA_OPS=1`` routes every call through the ops.
Both paths must give bit-identical values and gradients, and the ops must still be what
torch.compile sees. (The Clip-Cov/KL-Cov and EKDF twins are checked in their own test files.)"""

import pytest
import torch

import entropy_kernels as ek
from entropy_kernels import config
from entropy_kernels import _backend
from entropy_kernels.ops import _eager


def both_paths(monkeypatch, fn):
    """[fn() with direct launches, fn() through the registered ops]."""
    out = []
    for via_ops in ("0", "1"):
        monkeypatch.setattr(config.CONFIG, "via_ops", via_ops == "1")
        out.append(fn())
    return out


def test_eager_direct_rule(monkeypatch):
    x = torch.ones(3)
    monkeypatch.setattr(config.CONFIG, "via_ops", False)
    assert _backend.eager_direct(x)
    assert not _backend.eager_direct(torch.nn.Parameter(x))  # a Tensor subclass: take the op
    seen = []
    torch.func.vmap(lambda row: seen.append(_backend.eager_direct(row)) or row)(torch.ones(2, 3))
    assert seen == [False]  # under a functorch transform (batched tensors look like plain ones)
    monkeypatch.setattr(config.CONFIG, "via_ops", True)
    assert not _backend.eager_direct(x)


def test_entropy_direct_path_equals_the_op(backend, monkeypatch):
    x = (torch.randn(5, 300, dtype=torch.float64) * 3).float().to(backend.device)
    t = (torch.rand(5, dtype=torch.float64) + 0.5).float().to(backend.device)
    gh, gl = torch.randn(5, device=backend.device), torch.randn(5, device=backend.device)

    def run():
        z = x.clone().requires_grad_()
        with backend.context():
            h, lse = ek.entropy(z, temperature=t, return_lse=True)
            (h * gh + lse * gl).sum().backward()
            h2 = ek.entropy(z.detach(), temperature=0.7)
        return h, lse, h2, z.grad

    fast, via_ops = both_paths(monkeypatch, run)
    for a, b in zip(fast, via_ops):
        assert torch.equal(a, b)
    # and the values are the entropy (float64 definition), so the comparison is not vacuous
    p = torch.softmax(x.double().cpu() / 0.7, -1)
    assert torch.allclose(fast[2].double().cpu(), -(p * p.log()).sum(-1), rtol=1e-5)


@pytest.mark.parametrize("mode", ["transformers", "exact"])
def test_top_h_direct_path_equals_the_op(backend, monkeypatch, mode):
    x = (torch.randn(3, 500, dtype=torch.float64) * 2).float().to(backend.device)
    seed, off = torch.tensor([7], device=backend.device), torch.tensor([3], device=backend.device)

    def run():
        with backend.context():
            return (ek.top_h_mask(x, 0.5, mode=mode, top_n=50),
                    ek.top_h_sample(x, 0.5, mode=mode, top_n=50, seed=seed, offset=off))

    (m1, s1), (m2, s2) = both_paths(monkeypatch, run)
    assert torch.equal(m1, m2) and torch.equal(s1, s2)
    assert m1.any(1).all() and m1.gather(1, s1[:, None]).all()  # samples are kept tokens


def test_autograd_function_twin_differentiates_like_the_backward():
    def impl(x, k):
        return x * k, (x * k).sum()

    def setup(ctx, inputs, output):
        ctx.k = inputs[1]

    def bwd(ctx, g_prod, g_sum):
        g = g_prod if g_prod is not None else 0
        return g + (g_sum if g_sum is not None else 0) * ctx.k, None

    F = _eager.autograd_function("Scale", impl, setup, bwd)
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    _, s = F.apply(x, 3.0)
    s.backward()
    assert torch.equal(x.grad, torch.full_like(x, 3.0))
