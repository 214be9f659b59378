"""Checks every op declared through ``ops._registry.define_op`` gets, driven by the registry:
the op passes ``torch.library.opcheck`` (schema, fake impl, autograd registration) on its sample
calls, and the eager fast path (kernel launched directly) gives bit-identical outputs and
gradients to the registered op on the kernel path. An op added with ``define_op`` and samples
is covered here without a line of test code; its semantics are tested in its own file."""

import pytest
import torch

import entropy_kernels  # noqa: F401  (registers the ops)
from entropy_kernels import config
from entropy_kernels.ops._registry import REGISTRY, info_rows

from conftest import aot_once


CASES = [
    pytest.param(name, i, id=f"{name.split('::')[1]}-{label}")
    for name, rec in REGISTRY.items() if rec.samples is not None
    for i, (_, label) in enumerate(rec.samples())
]


FAST_PATH_CASES = [c for c in CASES if REGISTRY[c.values[0]].kernel is not None]


def _sample(name, i):
    return list(REGISTRY[name].samples())[i][0]


def _float_inputs(args):
    return [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]


def test_every_op_is_registered_and_has_samples():
    assert len(REGISTRY) >= 2
    missing = [name for name, rec in REGISTRY.items() if rec.samples is None]
    assert not missing, f"ops without sample calls for the shared tests: {missing}"
    publics = {row.public for row in info_rows()}
    assert "entropy" in publics


@pytest.mark.parametrize("name, i", CASES)
def test_opcheck(name, i):
    rec = REGISTRY[name]
    args = _sample(name, i)
    if rec.differentiable:
        for t in _float_inputs(args)[:1]:
            t.requires_grad_()
    torch.library.opcheck(rec.op, args, **aot_once(i == 0))  # the AOT trace on each op's first sample


@pytest.mark.interpreter
@pytest.mark.parametrize("name, i", FAST_PATH_CASES)
def test_eager_fast_path_equals_the_op(name, i, monkeypatch):
    from entropy_kernels import _backend

    rec = REGISTRY[name]
    args = _sample(name, i)
    runs = []
    for via_ops in (False, True):
        monkeypatch.setattr(config.CONFIG, "via_ops", via_ops)
        fresh = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        grads = []
        if rec.differentiable:
            fresh = [a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() and j == 0 else a
                     for j, a in enumerate(fresh)]
        with _backend.triton_on_cpu():
            assert rec.direct(tuple(fresh)) == (not via_ops)
            out = rec(*fresh)
            outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if o is not None]
            if rec.mutates_args:  # what a mutating op wrote is its result
                outs += [a for a in fresh if isinstance(a, torch.Tensor)]
            if rec.differentiable:
                seed = torch.Generator().manual_seed(1)
                loss = sum((o.double() * torch.randn(o.shape, generator=seed, dtype=torch.float64)).sum()
                           for o in outs if o.is_floating_point() and o.requires_grad)
                loss.backward()
                grads = [a.grad for a in fresh if isinstance(a, torch.Tensor) and a.grad is not None]
        runs.append([o.detach() for o in outs] + grads)
    for a, b in zip(*runs):
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                     and torch.equal(a.nan_to_num(), b.nan_to_num()))
    assert len(runs[0]) == len(runs[1])
