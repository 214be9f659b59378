"""One declaration per op: :func:`define_op` turns a typed signature plus its implementations
into everything the package needs of an op.

From one call it builds

- the ``torch.library`` op (``triton_op`` for Triton kernels, so ``torch.compile`` sees and
  inlines them; ``custom_op`` with a fake impl for kernels in the compiled extension ``_C``);
- its routing: the kernel launcher where :func:`_backend.use_triton` says so (CUDA, or CPU under
  the interpreter), the pure-torch reference elsewhere; for Triton ops the same body is the fake
  impl, so shapes are computed in exactly one place;
- the autograd formula (``register_autograd``) when a backward is given;
- the eager fast path: outside tracing, :meth:`RegisteredOp.__call__` launches the kernel
  directly (through a :class:`torch.autograd.Function` twin when the op is differentiable),
  because eagerly the dispatcher costs more host time than the GPU work of a cheap op;
- the row of ``entropy-kernels info`` and the opcheck / eager-vs-op cases of the test suite
  (``tests/test_registry.py`` runs them for every op in :data:`REGISTRY`).

Why the eager fast path stays: registering with ``torch.library.Library.define``/``impl``
directly (no ``triton_op``/``custom_op`` wrapper) removes the wrapper's cost, but not the
dispatcher's nor ``register_autograd``'s. ``scripts/host_overhead.py --registration`` on the
2-core CPU machine, a trivial copy op, µs per call without / with a gradient: ``triton_op``
79 / 148, ``custom_op`` 47 / 110, ``Library.define``/``impl`` 30 / 74, the plain
``autograd.Function`` twin 31 / 39, the bare implementation 8 / 9. So a direct registration
would save the no-grad wrapper cost, yet a differentiable call still costs ~2x the twin, and a
non-differentiable kernel launched directly costs a quarter of the cheapest registered op.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch.library import custom_op, triton_op

from .. import _backend
from . import _eager

# One sample call of an op: (positional arguments, a short label) -- built fresh per call.
Sample = Tuple[tuple, str]

REGISTRY: Dict[str, "RegisteredOp"] = {}


def _route_tensor(args: tuple) -> torch.Tensor:
    """The first tensor argument: the one whose device decides the implementation."""
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    raise TypeError("an op needs at least one tensor argument to route on")


def _plain_tensors(args: tuple) -> bool:
    """True when every tensor argument is a plain ``torch.Tensor`` (no subclass, no fake)."""
    return all(type(a) is torch.Tensor for a in args if isinstance(a, torch.Tensor))


@dataclass
class RegisteredOp:
    """An op of the ``entropy_kernels::`` namespace and what the package knows about it.

    Calling it runs the op: the kernel directly when eager (see :func:`_backend.eager_direct`),
    the registered ``torch.library`` op otherwise (tracing, fake tensors, ``EK_VIA_OPS=1``).

    Example
    -------
    >>> import torch
    >>> from entropy_kernels.ops._registry import REGISTRY
    >>> op = REGISTRY["entropy_kernels::entropy_fwd"]
    >>> h, lse, stats = op(torch.zeros(2, 4), None, 1.0)
    >>> [round(v, 4) for v in h.tolist()], op.public
    ([1.3863, 1.3863], 'entropy')
    """

    name: str
    public: str
    op: Callable
    kernel: Optional[Callable]
    native: bool = False
    differentiable: bool = False
    samples: Optional[Callable[[], Iterable[Sample]]] = None
    twin: Optional[type] = None
    mutates_args: Tuple[str, ...] = ()
    backends: Tuple[str, str] = ("", "")

    def direct(self, args: tuple) -> bool:
        """Whether a call with ``args`` launches the kernel directly (the eager fast path): the
        routing tensor decides for a Triton op; a native op also needs every tensor plain (its
        ``out`` buffer may be the only subclass). Cheap: it runs on every decoding step."""
        if self.kernel is None:
            return False
        t = _route_tensor(args)
        if self.native:
            return _backend.eager_direct(t) and _plain_tensors(args)
        return _backend.launch_triton_directly(t)

    def __call__(self, *args):
        if self.direct(args):
            return self.twin.apply(*args) if self.twin is not None else self.kernel(*args)
        return self.op(*args)

    def info_row(self) -> Tuple[str, str, str]:
        """``(op name, CPU implementation, CUDA implementation)`` for ``entropy-kernels info``."""
        cpu, cuda = self.backends
        return (self.name, cpu or _backend.describe_backend("cpu"), cuda or _backend.describe_backend("cuda"))


def define_op(
    name: str,
    signature: Optional[Callable] = None,
    *,
    public: str,
    kernel: Optional[Callable] = None,
    reference: Optional[Callable] = None,
    implementation: Optional[Callable] = None,
    eager_kernel: Optional[Callable] = None,
    fake: Optional[Callable] = None,
    backward: Optional[Callable] = None,
    setup_context: Optional[Callable] = None,
    eager: bool = True,
    mutates_args: Sequence[str] = (),
    samples: Optional[Callable[[], Iterable[Sample]]] = None,
    backends: Tuple[str, str] = ("", ""),
) -> RegisteredOp:
    """Register ``entropy_kernels::<name>`` and return its :class:`RegisteredOp`.

    ``signature`` is a function whose annotated parameters and return type are the op's schema
    (its body is never run; its docstring documents the op); a composite op's annotated
    ``implementation`` serves as its own. The kinds of op:

    - Triton (``fake`` is None): ``kernel(*args)`` where :func:`_backend.use_triton` holds,
      else ``reference(*args)``; the reference doubles as the fake impl.
    - native (``fake`` given): ``kernel(*args)`` on every device (the ``_C`` extension has CPU
      and CUDA code), ``fake(*args)`` under tracing.
    - composite (``implementation`` given): ``implementation(*args)`` routes by itself (GEMMs
      with Triton row kernels, the same code on every device); it doubles as the fake impl.

    ``backward``/``setup_context`` have ``register_autograd``'s meaning. ``eager_kernel`` is what
    the eager fast path launches when it differs from ``kernel`` (e.g. one cooperative launch
    that ``torch.compile`` cannot take); ``eager=False`` keeps every call on the registered op. ``samples()`` yields ``(args, label)`` calls for the shared
    opcheck and eager-vs-op tests. ``backends`` overrides the ``info`` description per device.

    Example
    -------
    >>> import torch
    >>> def double(x: torch.Tensor) -> torch.Tensor:
    ...     "2x."
    >>> op = define_op("doc_double", double, public="doc_double",
    ...                kernel=lambda x: x * 2, reference=lambda x: x * 2)
    >>> op(torch.ones(2))
    tensor([2., 2.])
    >>> del REGISTRY["entropy_kernels::doc_double"]
    """
    qualname = f"entropy_kernels::{name}"
    signature = signature or implementation
    if qualname in REGISTRY:
        raise ValueError(f"op {qualname} is already registered")
    native = fake is not None
    if native:
        @functools.wraps(signature)
        def body(*args):
            return kernel(*args)

        op = custom_op(qualname, body, mutates_args=tuple(mutates_args), device_types=("cpu", "cuda"))
        op.register_fake(fake)
    elif implementation is not None:
        body = functools.wraps(signature)(lambda *args: implementation(*args))
        op = triton_op(qualname, body, mutates_args=tuple(mutates_args))
    else:
        if reference is None:
            raise ValueError(f"{qualname}: a Triton op needs a reference (it is also the fake impl)")

        @functools.wraps(signature)
        def body(*args):
            if kernel is not None and _backend.use_triton(_route_tensor(args)):
                return kernel(*args)
            return reference(*args)

        op = triton_op(qualname, body, mutates_args=tuple(mutates_args))
    twin = None
    if backward is not None:
        op.register_autograd(backward, setup_context=setup_context)
        if eager and (eager_kernel or kernel) is not None:
            twin = _eager.autograd_function(f"_{name}_eager", eager_kernel or kernel, setup_context, backward)
    record = RegisteredOp(
        name=qualname, public=public, op=op, kernel=(eager_kernel or kernel) if eager else None, native=native,
        differentiable=backward is not None, samples=samples, twin=twin,
        mutates_args=tuple(mutates_args), backends=backends,
    )
    REGISTRY[qualname] = record
    return record


@dataclass
class PublicRow:
    """One row of ``entropy-kernels info``: a public function and the ops behind it."""

    public: str
    ops: List[str] = field(default_factory=list)
    cpu: str = ""
    cuda: str = ""


def info_rows() -> List[PublicRow]:
    """The registered ops grouped by the public function they serve, in registration order.

    Example
    -------
    >>> import entropy_kernels  # registers the ops
    >>> rows = info_rows()
    >>> rows[0].public, rows[0].ops
    ('entropy', ['entropy_kernels::entropy_fwd', 'entropy_kernels::entropy_bwd'])
    """
    rows: Dict[str, PublicRow] = {}
    for rec in REGISTRY.values():
        _, cpu, cuda = rec.info_row()
        row = rows.setdefault(rec.public, PublicRow(rec.public, cpu=cpu, cuda=cuda))
        row.ops.append(rec.name)
    return list(rows.values())
