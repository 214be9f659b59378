"""Python side of the small utilities in the compiled extension ``entropy_kernels._C``.

The launch convention of every ``_C`` kernel is shown here: validate in Python, pass raw
``data_ptr()`` addresses, sizes and ``torch.cuda.current_stream().cuda_stream``; the C++ side
never sees a torch object.
"""

from __future__ import annotations

import torch

from . import _backend

__all__ = ["build_info", "cuda_compiled", "read_checksum"]


def build_info() -> dict:
    """How ``_C`` was built: ``{"compiler", "with_cuda", "cuda_archs", "cuda_runtime_version"}``.

    Example
    -------
    >>> import entropy_kernels.native as native
    >>> sorted(native.build_info())
    ['compiler', 'cuda_archs', 'cuda_runtime_version', 'with_cuda']
    """
    C = _backend.native()
    if C is None:
        raise ImportError(f"entropy_kernels._C failed to import: {_backend.native_error()}")
    return dict(C.build_info())


def cuda_compiled() -> bool:
    """True when ``_C`` contains CUDA kernels (built where nvcc was found)."""
    C = _backend.native()
    return bool(C is not None and C.build_info()["with_cuda"])


def read_checksum(t: torch.Tensor) -> torch.Tensor:
    """XOR of ``t``'s bytes as little-endian 32-bit words (last word zero-padded), read once.

    Runs the ``_C`` CUDA kernel on torch's current stream for CUDA tensors (asynchronously:
    the result is a 0-dim int32 tensor on the same device) and the C++ loop for CPU tensors.
    The benchmarks use it as the read-only memory floor.

    Example
    -------
    >>> import torch, entropy_kernels.native as native
    >>> int(native.read_checksum(torch.tensor([1, 2, 4], dtype=torch.int32)))
    7
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_contiguous() or t.data_ptr() % 4:
        t = t.contiguous().clone() if t.data_ptr() % 4 else t.contiguous()
    nbytes = t.numel() * t.element_size()
    C = _backend.native()
    if t.device.type == "cuda":
        if not cuda_compiled():
            raise RuntimeError("entropy_kernels._C was built without CUDA; reinstall where nvcc is available")
        out = torch.empty((), dtype=torch.int32, device=t.device)
        with torch.cuda.device(t.device):
            C.read_checksum_cuda(t.data_ptr(), nbytes, out.data_ptr(), torch.cuda.current_stream().cuda_stream)
        return out
    if t.device.type != "cpu":
        raise ValueError(f"t must be on cpu or cuda, got {t.device}")
    value = C.read_checksum_cpu(t.data_ptr(), nbytes)
    # reinterpret the uint32 as int32 (torch has no uint32 arithmetic everywhere)
    return torch.tensor(value - (1 << 32) if value >= 1 << 31 else value, dtype=torch.int32)
