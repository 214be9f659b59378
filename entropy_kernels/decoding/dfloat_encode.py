"""The EKDF encoder: a bf16 tensor to the payload arrays and header values of a ``DFloatTensor``.

Encoding runs in C++ on the CPU (``csrc/dfloat_cpu.cpp``, multithreaded): an exponent histogram,
length-limited code lengths (package-merge), the decode table, then the code stream with its
index. :meth:`DFloatTensor.compress <entropy_kernels.decoding.DFloatTensor.compress>` wraps
:func:`encode`.

Example
-------
>>> import torch
>>> fields = encode(torch.ones(3, dtype=torch.bfloat16))
>>> fields["shape"], fields["total_bits"], fields["raw"].tolist()
((3,), 3, [0, 0, 0])
"""

from __future__ import annotations

import torch

from ..ops import dfloat as _ops
from .dfloat_format import MAX_CODE_LEN, payload_crc32

MAX_THREADS = 1024  # encoder threads; more is a mistake (csrc/dfloat.h kMaxThreads)


def check_threads(threads) -> int:
    """``threads`` if it is an int in [0, :data:`MAX_THREADS`] (0 = all cores), else TypeError/ValueError.

    Example
    -------
    >>> check_threads(4)
    4
    >>> check_threads(-1)
    Traceback (most recent call last):
    ...
    ValueError: threads must be in [0, 1024] (0 = all cores), got -1
    """
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise TypeError(f"threads must be an int (0 = all cores), got {type(threads).__name__}")
    if not 0 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must be in [0, {MAX_THREADS}] (0 = all cores), got {threads}")
    return threads


def encode(tensor: torch.Tensor, threads: int = 0) -> dict:
    """The ``DFloatTensor`` keyword arguments of a bf16 tensor (any device), its payload on the
    CPU: encoding runs there with ``threads`` threads (0 = all cores).

    Example
    -------
    >>> import torch
    >>> fields = encode((torch.randn(1000) * 0.02).to(torch.bfloat16))
    >>> fields["words"].dtype, fields["raw"].numel(), sum(fields["exponent_hist"])
    (torch.int32, 1000, 1000)
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype != torch.bfloat16:
        raise TypeError(f"tensor must be bfloat16 (EKDF codes the 8-bit exponent of bf16), got {tensor.dtype}; "
                        "cast explicitly if that is lossless for your data")
    if tensor.layout != torch.strided:
        raise ValueError(f"tensor must be a dense tensor, got layout {tensor.layout}")
    if tensor.device.type == "meta":
        raise ValueError("tensor is on the meta device: it has no values to compress")
    threads = check_threads(threads)
    numel = tensor.numel()
    C = _ops.extension()
    x = tensor.detach().reshape(-1).to("cpu").contiguous().view(torch.int16)
    hist = torch.zeros(256, dtype=torch.int64)
    C.dfloat_histogram(x.data_ptr(), numel, hist.data_ptr(), threads)
    lengths = torch.zeros(256, dtype=torch.uint8)
    C.dfloat_code_lengths(hist.data_ptr(), MAX_CODE_LEN, lengths.data_ptr())
    lut = torch.empty(_ops.LUT_SIZE, dtype=torch.int16)
    C.dfloat_build_lut(lengths.data_ptr(), lut.data_ptr())
    total_bits = C.dfloat_stream_bits(x.data_ptr(), numel, lengths.data_ptr(), threads)
    sizes = _ops.payload_sizes(numel, total_bits)
    words = torch.zeros(sizes["words"], dtype=torch.int32)
    gaps = torch.zeros(sizes["gaps"], dtype=torch.uint8)
    block_starts = torch.zeros(sizes["block_starts"], dtype=torch.int64)
    raw = torch.empty(numel, dtype=torch.uint8)
    checksum, max_block_values = C.dfloat_encode(x.data_ptr(), numel, lengths.data_ptr(), total_bits,
                                                 words.data_ptr(), gaps.data_ptr(), block_starts.data_ptr(),
                                                 raw.data_ptr(), threads)
    return dict(words=words, gaps=gaps, block_starts=block_starts, lut=lut, raw=raw, shape=tuple(tensor.shape),
                total_bits=total_bits, max_block_values=max_block_values, checksum=checksum,
                code_lengths=lengths.tolist(), exponent_hist=hist.tolist(),
                payload_crc32=payload_crc32([words, gaps, block_starts, raw]))
