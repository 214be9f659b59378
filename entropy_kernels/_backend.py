"""Which implementation an op runs on which device, decided in one place.

Every op follows the same routing rule:

- CUDA tensors run the GPU kernel (Triton, or a ``_C`` launcher);
- CPU tensors run the pure-torch reference in :mod:`entropy_kernels.reference`;
- under Triton's interpreter (``TRITON_INTERPRET=1`` set before Triton is imported) the Triton
  kernels can also run on CPU tensors; :func:`triton_on_cpu` switches the ops to do so, which is
  how the test-suite executes every kernel's indexing and masking on a machine without a GPU.

Nothing here synchronises with the device or touches the network.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from typing import Iterator, Optional

import torch
from torch._subclasses.fake_tensor import is_fake

from . import config

__all__ = [
    "triton_available",
    "interpreting",
    "triton_on_cpu",
    "use_triton",
    "eager_direct",
    "launch_triton_directly",
    "native",
    "native_error",
    "describe_backend",
]

_state = threading.local()


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when Triton can be imported (it ships with torch's CUDA wheels on Linux)."""
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on the installation
        return False
    return True


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@contextlib.contextmanager
def triton_on_cpu(enabled: bool = True) -> Iterator[None]:
    """Route ops on CPU tensors to their Triton kernels (needs ``TRITON_INTERPRET=1``).

    Example
    -------
    >>> import entropy_kernels as ek
    >>> with ek._backend.triton_on_cpu():          # doctest: +SKIP
    ...     h = ek.entropy(torch.randn(4, 100))     # runs the Triton kernel, interpreted
    """
    if enabled and not interpreting():
        raise RuntimeError(
            "triton_on_cpu() needs Triton's interpreter: set TRITON_INTERPRET=1 before "
            "triton is first imported"
        )
    previous = getattr(_state, "triton_on_cpu", False)
    _state.triton_on_cpu = enabled
    try:
        yield
    finally:
        _state.triton_on_cpu = previous


def use_triton(t: torch.Tensor) -> bool:
    """Whether an op given tensor ``t`` runs its Triton kernel (else the torch reference)."""
    if not triton_available():
        return False
    if t.device.type == "cuda":
        return True
    # Under tracing (fake tensors) the interpreter would execute the kernel on fake data, so
    # interpreted CPU kernels take the reference path there; shapes are identical.
    return t.device.type == "cpu" and getattr(_state, "triton_on_cpu", False) and not is_fake(t)


def eager_direct(t: torch.Tensor) -> bool:
    """Whether a public function may launch its kernels directly instead of calling its
    registered op: ``t`` is a plain tensor (not fake, functional or another subclass) and nothing
    is being traced by torch.compile. Eagerly a torch.library op costs ~50-80 µs of host time per
    call (dispatch, schema default filling, the autograd wrapper) -- more than the GPU work of a
    decode step or a policy loss on 65K tokens -- while the kernels are the same either way.
    ``EK_VIA_OPS=1`` (``config.CONFIG.via_ops``) routes every call through the ops (to compare, or to
    debug).

    Example
    -------
    >>> import torch
    >>> eager_direct(torch.ones(2)) in (True, False)
    True
    """
    return (
        type(t) is torch.Tensor
        and not torch.compiler.is_compiling()
        and not torch._C._are_functorch_transforms_active()  # vmap/grad wrap tensors as plain Tensors
        and not config.CONFIG.via_ops
    )


def launch_triton_directly(t: torch.Tensor) -> bool:
    """:func:`eager_direct` for an op whose kernel is Triton: also the Triton path is taken
    (:func:`use_triton`). The routing rule of the public functions' eager fast paths.

    Example
    -------
    >>> launch_triton_directly(torch.ones(2)) in (True, False)
    True
    """
    return eager_direct(t) and use_triton(t)


_native_error: Optional[str] = None


@functools.lru_cache(maxsize=None)
def native():
    """The compiled extension ``entropy_kernels._C``, or None if it failed to import."""
    global _native_error
    try:
        from entropy_kernels import _C
    except ImportError as exc:  # pragma: no cover - only on a broken install
        _native_error = str(exc)
        return None
    return _C


def native_error() -> Optional[str]:
    """Why :func:`native` returned None, if it did."""
    native()
    return _native_error


def describe_backend(device_type: str) -> str:
    """Human-readable name of what an op runs on ``device_type`` ("cpu" or "cuda")."""
    if device_type == "cuda":
        if not triton_available():
            return "torch reference (Triton missing: no fast path!)"
        return "triton"
    if getattr(_state, "triton_on_cpu", False):
        return "triton (interpreter)"
    return "torch reference"
