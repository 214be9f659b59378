"""The eager fast path (``_backend.eager_direct``): outside tracing, the public functions of the
cheap ops launch their kernels directly instead of calling their registered ops, whose dispatch
costs more host time than the GPU work. ``EK_VIA_OPS=1`` routes every call through the ops.
Both paths must give bit-identical values and gradients, and the ops must still be what
torch.compile sees. Every op declared through the registry is checked by
``tests/test_registry.py`` (entropy, Top-H, EKDF decode); the Clip-Cov/KL-Cov twins in their own
test files; here the routing rule and the twin factory."""

import torch

from entropy_kernels import config
from entropy_kernels import _backend
from entropy_kernels.ops import _eager


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
