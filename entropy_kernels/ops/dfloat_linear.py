"""``entropy_kernels::dfloat_linear``: ``y = x @ W.T + bias`` straight from the EKDF payload of W.

For a small batch (at most :data:`MAX_FUSED_ROWS` rows of ``x``) on CUDA, one kernel decodes each
EKDF block of W in shared memory and multiplies it with ``x`` at once, so the decoded weight is
never written to or read back from global memory: a batch-1 linear layer only streams its
weight, and this one streams ~66.5% of the bf16 bytes. The algorithm (and its CPU emulation,
which the tests run) is described in ``csrc/dfloat_linear.h``: fp32 accumulation, partial sums
of rows cut by block boundaries added in a fixed order (deterministic, no atomics), bf16 output.
Larger batches decode W into a fresh buffer (``dfloat_decompress``) and use ``F.linear``
(cuBLAS), where the matmul dominates. On the CPU the op decodes with the C++ decoder and calls
``F.linear``: the result equals ``F.linear`` on the decompressed weight exactly.

Gradients flow to ``x`` and ``bias`` (the backward decodes W into a temporary buffer for
``dy @ W``); W itself is constant. The op is opaque to ``torch.compile`` (a fake impl from the
shapes), CUDA-graph capturable (two launches and a 4-byte memset on the current stream, scratch
from torch's allocator) and never synchronises with the host. The payload is checked as ``dfloat_decompress`` checks it; a payload
whose index disagrees with its code stream gives a ``y`` of NaN on CUDA (no host sync to raise
from) and a :class:`~entropy_kernels.ops.dfloat.DFloatError` on the CPU.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from . import dfloat as _dfloat
from ._registry import define_op

MAX_FUSED_ROWS = 16  # rows of x the fused CUDA kernel takes (csrc/dfloat_linear.h kMaxRows)


def check_inputs(x, bias, rows: int, cols: int, numel: int, device: torch.device, *, fake: bool = False) -> None:
    """Raise TypeError/ValueError naming the argument unless ``x`` ([M, cols] bf16 on ``device``),
    ``bias`` (None or [rows] bf16 on ``device``) and ``rows`` x ``cols`` = ``numel`` fit together.

    Example
    -------
    >>> check_inputs(torch.ones(2, 3, dtype=torch.bfloat16), None, 4, 3, 12, torch.device("cpu"))
    >>> check_inputs(torch.ones(2, 3), None, 4, 3, 12, torch.device("cpu"))
    Traceback (most recent call last):
    TypeError: x must be a bfloat16 tensor, got torch.float32
    """
    concrete = all([_dfloat._check_int(n, v, fake) for n, v in (("rows", rows), ("cols", cols))])
    if concrete and type(numel) is int and rows * cols != numel:
        raise ValueError(f"rows * cols must equal numel: {rows} * {cols} != {numel}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.bfloat16:
        raise TypeError(f"x must be a bfloat16 tensor, got {x.dtype}")
    if x.layout != torch.strided or x.dim() != 2:
        raise ValueError(f"x must be a dense 2-D tensor [M, K], got shape {tuple(x.shape)}")
    if type(x.shape[1]) is int and type(cols) is int and x.shape[1] != cols:
        raise ValueError(f"x must have K = cols = {cols} columns, got shape {tuple(x.shape)}")
    if x.device != device:
        raise ValueError(f"x must be on the payload's device {device}, got {x.device}")
    if bias is None:
        return
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
    if bias.dtype != torch.bfloat16:
        raise TypeError(f"bias must be a bfloat16 tensor, got {bias.dtype}")
    if bias.layout != torch.strided or bias.dim() != 1 or (type(bias.shape[0]) is int and type(rows) is int
                                                            and bias.shape[0] != rows):
        raise ValueError(f"bias must have shape ({rows},), got {tuple(bias.shape)}")
    if bias.device != device:
        raise ValueError(f"bias must be on the payload's device {device}, got {bias.device}")


def _decoded_weight(args: tuple, rows: int, cols: int, device: torch.device) -> torch.Tensor:
    w = torch.empty((rows, cols), dtype=torch.bfloat16, device=device)
    _dfloat.launch(w, args)
    return w


def _cpu(x, bias, rows: int, cols: int, args: tuple) -> torch.Tensor:
    """The CPU path: the C++ decoder (which checks the index against the stream), then F.linear."""
    return F.linear(x, _decoded_weight(args, rows, cols, x.device), bias)


def _cuda_fused(x, bias, rows: int, cols: int, args: tuple) -> torch.Tensor:
    C = _dfloat.extension("dfloat_linear_cuda")
    x = x.contiguous()
    bias = None if bias is None else bias.contiguous()
    m = x.shape[0]
    y = torch.empty((m, rows), dtype=torch.bfloat16, device=x.device)
    blocks = args[3]
    # fp32 partial sums of the rows cut by block boundaries, then the error flag (csrc/dfloat_linear.h)
    scratch = torch.empty(2 * blocks * m + 1, dtype=torch.float32, device=x.device)
    with _dfloat.on_device(x.device):
        C.dfloat_linear_cuda(*args, x.data_ptr(), m, rows, cols, 0 if bias is None else bias.data_ptr(),
                             y.data_ptr(), scratch.data_ptr(), _dfloat._stream_handle(x.device))
    return y


def run(x, bias, rows: int, cols: int, args: tuple) -> torch.Tensor:
    """``x @ W.T + bias`` for checked inputs (:func:`check_inputs`) and the
    :func:`~entropy_kernels.ops.dfloat.launch_args` of W's checked payload: a fresh [M, rows] tensor."""
    m, numel = x.shape[0], args[8]
    if m == 0 or numel == 0:  # nothing to decode: F.linear's result for an empty W or x
        y = torch.zeros((m, rows), dtype=torch.bfloat16, device=x.device)
        return y.add_(bias) if bias is not None else y
    if x.device.type == "cuda":
        if m <= MAX_FUSED_ROWS:
            return _cuda_fused(x, bias, rows, cols, args)
        return F.linear(x, _decoded_weight(args, rows, cols, x.device), bias)  # cuBLAS
    return _cpu(x, bias, rows, cols, args)


def _dfloat_linear(x: torch.Tensor, words: torch.Tensor, gaps: torch.Tensor, block_starts: torch.Tensor,
                  lut: torch.Tensor, raw: torch.Tensor, numel: int, total_bits: int, max_block_values: int, rows: int,
                  cols: int, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x @ W.T + bias`` ([M, rows] bf16) for ``x`` [M, cols] bf16 and the EKDF payload of W
    [rows, cols]; fp32 accumulation. Most users want :meth:`DFloatTensor.linear` instead.

    Example
    -------
    >>> import torch
    >>> from entropy_kernels.decoding import DFloatTensor
    >>> w = (torch.randn(8, 32) * 0.02).to(torch.bfloat16)
    >>> x = torch.randn(3, 32).to(torch.bfloat16)
    >>> c = DFloatTensor.compress(w)
    >>> y = torch.ops.entropy_kernels.dfloat_linear(x, *c.payload(), *c.sizes(), 8, 32)
    >>> torch.equal(y, torch.nn.functional.linear(x, w))
    True
    """
    _dfloat.check_payload(words, gaps, block_starts, lut, raw, numel, total_bits, max_block_values)
    check_inputs(x, bias, rows, cols, numel, words.device)
    return run(x, bias, rows, cols, _dfloat.launch_args(words, gaps, block_starts, lut, raw, numel, total_bits,
                                                        max_block_values))


def _dfloat_linear_fake(x, words, gaps, block_starts, lut, raw, numel, total_bits, max_block_values, rows, cols,
                        bias=None):
    _dfloat.check_payload(words, gaps, block_starts, lut, raw, numel, total_bits, max_block_values, fake=True)
    check_inputs(x, bias, rows, cols, numel, words.device, fake=True)
    return x.new_empty((x.shape[0], rows))


def _setup_context(ctx, inputs, output):
    # bias may be left out of ``inputs`` (its schema default) when the call did not pass it
    x, words, gaps, block_starts, lut, raw, numel, total_bits, max_block_values, rows, cols = inputs[:11]
    ctx.save_for_backward(words, gaps, block_starts, lut, raw)
    ctx.sizes = (numel, total_bits, max_block_values, rows, cols)


def _backward(ctx, dy):
    # dx = dy @ W needs W itself: decoded into a temporary buffer, as the large-batch path does
    numel, total_bits, max_block_values, rows, cols = ctx.sizes
    dx = db = None
    if ctx.needs_input_grad[0]:
        w = _dfloat.decompress(*ctx.saved_tensors, numel, total_bits, max_block_values).view(rows, cols)
        dx = dy @ w
    n_inputs = len(ctx.needs_input_grad)  # 11 when the call left bias to its default
    if n_inputs > 11 and ctx.needs_input_grad[11]:
        db = dy.sum(0)
    return (dx, None, None, None, None, None, None, None, None, None, None, db)[:n_inputs]


def _samples():
    from ..decoding import DFloatTensor

    for m, bias, label in ((1, False, "M=1"), (3, True, "M=3, bias"), (20, False, "M=20")):
        c = DFloatTensor.compress((torch.randn(8, 32) * 0.02).to(torch.bfloat16))
        b = torch.randn(8).to(torch.bfloat16) if bias else None
        yield (torch.randn(m, 32).to(torch.bfloat16), *c.payload(), *c.sizes(), 8, 32, b), label


LINEAR = define_op(
    "dfloat_linear", _dfloat_linear, public="DFloatTensor.linear", kernel=_dfloat_linear, fake=_dfloat_linear_fake,
    backward=_backward, setup_context=_setup_context, eager=False, samples=_samples,
    backends=("C++ decode + F.linear", "CUDA C++ (_C), > 16 rows: decode + cuBLAS"),
)
dfloat_linear = LINEAR.op  # the torch.library op


def emulated(x, words, gaps, block_starts, lut, raw, numel: int, total_bits: int, max_block_values: int, rows: int,
             cols: int, bias=None) -> torch.Tensor:
    """The CUDA kernel's algorithm run thread by thread on the CPU (``csrc/dfloat_linear_cpu.cpp``):
    the same fp32 operations in the same order, so the same bits as the kernel. For tests: it is
    a slow, exact model of the GPU result, taking 1 to 16 rows of ``x``, CPU tensors only.

    Example
    -------
    >>> from entropy_kernels.decoding import DFloatTensor
    >>> c = DFloatTensor.compress(torch.eye(4, 32).to(torch.bfloat16))  # y = the first 4 columns of x
    >>> x = torch.arange(64.0).view(2, 32).to(torch.bfloat16)
    >>> emulated(x, *c.payload(), *c.sizes(), 4, 32).tolist()
    [[0.0, 1.0, 2.0, 3.0], [32.0, 33.0, 34.0, 35.0]]
    """
    _dfloat.check_payload(words, gaps, block_starts, lut, raw, numel, total_bits, max_block_values)
    check_inputs(x, bias, rows, cols, numel, words.device)
    if words.device.type != "cpu":
        raise ValueError(f"the emulation runs on CPU tensors, got {words.device}")
    m = x.shape[0]
    if not 1 <= m <= MAX_FUSED_ROWS or numel == 0:
        raise ValueError(f"x must have 1 to {MAX_FUSED_ROWS} rows and W values, got x {tuple(x.shape)}, numel={numel}")
    x = x.contiguous()
    bias = None if bias is None else bias.contiguous()
    args = _dfloat.launch_args(words, gaps, block_starts, lut, raw, numel, total_bits, max_block_values)
    y = torch.empty((m, rows), dtype=torch.bfloat16)
    scratch = torch.empty(2 * args[3] * m + 1, dtype=torch.float32)
    status = _dfloat.extension().dfloat_linear_emulated(*args, x.data_ptr(), m, rows, cols,
                                                        0 if bias is None else bias.data_ptr(), y.data_ptr(),
                                                        scratch.data_ptr())
    if status:
        raise ValueError(f"the emulation refused its arguments (status {status})")
    return y
