"""Launch-configuration helpers shared by the kernel modules."""

import functools

import torch
from torch.library import wrap_triton

from .. import config


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``; 4 under the interpreter (CPU), a small "GPU" so
    that multi-program paths (row splits, vocabulary splits) are exercised there too."""
    if device.type == "cuda":
        return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 4


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


# Plain-Python twins of ``triton.cdiv`` / ``triton.next_power_of_2``: in recent Triton those are
# ``ConstexprFunction`` objects costing ~3 µs per host call, which adds up on launch paths that
# are otherwise a few µs. Both also work on torch SymInts (no int() specialisation).


def cdiv(a, b):
    """Ceiling division. ``cdiv(10, 4) == 3``."""
    return (a + b - 1) // b


def next_pow2(n):
    """Smallest power of two ≥ ``n`` (1 for ``n ≤ 1``). ``next_pow2(1000) == 1024``."""
    n = n - 1
    n = n | (n >> 1)
    n = n | (n >> 2)
    n = n | (n >> 4)
    n = n | (n >> 8)
    n = n | (n >> 16)
    n = n | (n >> 32)
    return max(n + 1, 1)


def launcher(kernel, probe: torch.Tensor):
    """The Triton kernel to launch: the plain kernel in eager mode (``wrap_triton`` adds host
    cost to every launch), ``wrap_triton(kernel)`` while torch.compile traces (fake/functional
    tensors are subclasses of Tensor) so that the graph sees the kernel. ``EK_WRAP_TRITON=1``
    forces ``wrap_triton`` everywhere (to compare).

    Example
    -------
    >>> launcher("k", torch.ones(1))      # a plain tensor, not tracing: the kernel itself
    'k'
    """
    if type(probe) is torch.Tensor and not config.CONFIG.wrap_triton and not torch.compiler.is_compiling():
        return kernel
    return wrap_triton(kernel)
