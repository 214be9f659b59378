"""Eager twins of registered differentiable ops (see ``_backend.eager_direct``).

Eagerly, a ``torch.library`` op with a registered autograd costs ~60-150 µs of host time per call
-- more than the GPU work of a small op -- so the public functions of the cheap ops call the same
implementation through a plain :class:`torch.autograd.Function` when nothing is being traced, and
the registered op otherwise (torch.compile, fake tensors, ``EK_VIA_OPS=1``). Both paths share the
implementation, ``setup_context`` and ``backward`` functions, so they give identical results
(tests check it bit for bit).
"""

from __future__ import annotations

from typing import Callable

import torch


def autograd_function(name: str, implementation: Callable, setup_context: Callable, backward: Callable) -> type:
    """A :class:`torch.autograd.Function` whose ``apply(*inputs)`` returns
    ``implementation(*inputs)`` and differentiates like an op registered with
    ``register_autograd(backward, setup_context=setup_context)``.

    It uses the ``forward(ctx, ...)`` form: with a ``setup_context`` staticmethod,
    ``Function.apply`` binds the arguments through ``inspect.signature`` on every call (~40 µs).

    Example
    -------
    >>> import torch
    >>> def impl(x): return x * 2
    >>> def setup(ctx, inputs, output): pass
    >>> def bwd(ctx, g): return g * 2
    >>> Double = autograd_function("Double", impl, setup, bwd)
    >>> x = torch.ones(3, requires_grad=True)
    >>> Double.apply(x).sum().backward(); x.grad
    tensor([2., 2., 2.])
    """

    def forward(ctx, *inputs):
        output = implementation(*inputs)
        setup_context(ctx, inputs, output)
        return output

    def backward_(ctx, *grads):
        return backward(ctx, *grads)

    return type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward),
        "backward": staticmethod(backward_),
    })
