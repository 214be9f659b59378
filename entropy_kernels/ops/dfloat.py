"""``entropy_kernels::dfloat_decompress``: decode an EKDF payload (entropy-coded BF16) to bf16.

Unlike the Triton ops, the kernels here are CUDA C++ / C++ in ``_C`` (``csrc/dfloat*``), so the
ops are opaque ``custom_op``s with a fake impl computed from ``numel`` alone: under
``torch.compile`` they are single graph nodes, and the CUDA one is CUDA-graph capturable (one
asynchronous launch on the current stream, no host sync). The payload layout is documented in
``csrc/dfloat.h`` and :mod:`entropy_kernels.reference.dfloat`; building one is the job of
:class:`entropy_kernels.decoding.DFloatTensor`, which most users want instead of these ops.

What the op checks on the host (no data read, so no host sync): the types, sizes, dtypes,
devices and alignment of the arrays and the integer arguments. Every decoder bounds every read
and write by the array sizes and writes every one of the ``numel`` output values. The CPU decoder
also checks the index against the stream as it decodes (``block_starts`` rising from 0 to
``numel``, the segment ``gaps``, ``total_bits``, the table) and raises :class:`DFloatError` when
they disagree; the CUDA decoder cannot raise without a sync, so a block whose index disagrees
with its codes writes NaN (bf16 ``0x7fc0``) there instead. Content checks (payload CRC, header
CRC, a verifying decode) belong to ``DFloatTensor.validate``, run once when a payload is loaded.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch

from .. import _backend
from ._registry import define_op

LUT_SIZE = 4096
SEGMENT_BITS = 256  # stream bits per GPU thread
BLOCK_BITS = 256 * SEGMENT_BITS  # stream bits per GPU block

_PAYLOAD = (("words", torch.int32), ("gaps", torch.uint8), ("block_starts", torch.int64), ("lut", torch.int16),
            ("raw", torch.uint8))
MAX_INT = 2**62  # bound of every size argument: products with the 12 bits of a code stay in int64
UNDECODABLE = 0x7FC0  # bits of what a decoder writes where it cannot decode (bf16 NaN; csrc/dfloat.h)


class DFloatError(ValueError):
    """A compressed payload or its header is malformed, corrupted or truncated.

    Example
    -------
    >>> issubclass(DFloatError, ValueError)
    True
    """


# csrc/dfloat.h DecodeStatus -> what the CPU decoder found
_STATUS = {
    1: "array sizes disagree with numel / total_bits, or out is too small",
    2: "block_starts must rise from 0 to numel",
    3: "a block holds more values than max_block_values",
    4: "lut is not the decode table of a prefix code",
    5: "the code stream does not match gaps / block_starts / total_bits",
}


def payload_sizes(numel: int, total_bits: int) -> dict:
    """Entries of each payload array for ``numel`` values coded in ``total_bits`` stream bits.

    Example
    -------
    >>> payload_sizes(100, 300)
    {'words': 11, 'gaps': 1, 'block_starts': 2, 'lut': 4096, 'raw': 100}
    """
    segments = -(-total_bits // SEGMENT_BITS)
    blocks = -(-total_bits // BLOCK_BITS)
    return {"words": -(-total_bits // 32) + 1, "gaps": -(-segments // 2), "block_starts": blocks + 1,
            "lut": LUT_SIZE, "raw": numel}


def _check_int(name: str, v, fake: bool) -> bool:
    """True when ``v`` is a plain int in [0, MAX_INT]; raise otherwise, except for a symbolic
    int while tracing (``fake``: returns False, the value is checked when the op runs)."""
    if isinstance(v, bool) or not isinstance(v, int):
        if fake and isinstance(v, torch.SymInt):
            return False
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if not 0 <= v <= MAX_INT:
        raise ValueError(f"{name} must be in [0, 2**62], got {v}")
    return True


def check_payload(words, gaps, block_starts, lut, raw, numel: int, total_bits: int, max_block_values: int,
                  out=None, *, fake: bool = False) -> None:
    """Raise ValueError/TypeError unless the arrays are a well-formed EKDF payload by shape.

    ``fake``: called from the ops' fake implementations -- payloads on the ``meta`` device (all of
    them) are accepted, and symbolic sizes are left for the real call to check.

    Example
    -------
    >>> import torch
    >>> from entropy_kernels.decoding import DFloatTensor
    >>> c = DFloatTensor.compress(torch.ones(100, dtype=torch.bfloat16))
    >>> check_payload(*c.payload(), *c.sizes())
    >>> words, gaps, block_starts, lut, raw = c.payload()
    >>> check_payload(words, gaps, block_starts, lut, raw[:-1], *c.sizes())
    Traceback (most recent call last):
    ValueError: raw must have 100 entries for numel=100, total_bits=100; got 99
    """
    concrete = all([_check_int(n, v, fake) for n, v in (("numel", numel), ("total_bits", total_bits),
                                                         ("max_block_values", max_block_values))])
    if concrete:
        if numel and not (numel <= total_bits <= 12 * numel):
            raise ValueError(f"total_bits must be in [numel, 12·numel] (codes are 1-12 bits), got {total_bits}")
        if not numel and total_bits:
            raise ValueError(f"total_bits must be 0 for numel=0, got {total_bits}")
        blocks = -(-total_bits // BLOCK_BITS)
        # some block holds at least the average number of values, and none more than its bits
        low, high = (-(-numel // blocks) if blocks else 0), min(numel, BLOCK_BITS)
        if not low <= max_block_values <= high:
            raise ValueError(f"max_block_values must be in [{low}, {high}] for numel={numel}, "
                             f"total_bits={total_bits}; got {max_block_values}")
    arrays = dict(zip([n for n, _ in _PAYLOAD], (words, gaps, block_starts, lut, raw)))
    device = words.device if isinstance(words, torch.Tensor) else None
    for name, dtype in _PAYLOAD:
        t = arrays[name]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != dtype:
            raise TypeError(f"{name} must have dtype {dtype}, got {t.dtype}")
        if t.layout != torch.strided or t.dim() != 1 or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous 1-D tensor, got shape {tuple(t.shape)}")
        if t.device != device:
            raise ValueError(f"all payload tensors must be on one device: words on {device}, {name} on {t.device}")
    if concrete:
        for name, size in payload_sizes(numel, total_bits).items():
            if arrays[name].numel() != size:
                raise ValueError(f"{name} must have {size} entries for numel={numel}, total_bits={total_bits}; "
                                 f"got {arrays[name].numel()}")
    if device.type not in ("cpu", "cuda") and not (fake and device.type == "meta"):
        raise ValueError(f"payload must be on cpu or cuda, got {device}")
    if device.type == "cuda" and not _is_fake(words):
        if lut.data_ptr() % 16 or raw.data_ptr() % 8 or words.data_ptr() % 4:
            raise ValueError("payload tensors must be aligned (lut 16 B, raw 8 B, words 4 B); pass freshly allocated tensors")
    if out is not None:
        check_out(out, numel, device)


def check_out(out, numel: int, device: torch.device) -> None:
    """Raise unless ``out`` can receive a decode of ``numel`` values on ``device``: bf16,
    contiguous, ``numel`` elements (any shape), on ``device``, 16-byte aligned on CUDA.

    Example
    -------
    >>> check_out(torch.empty(3, dtype=torch.float32), 3, torch.device("cpu"))
    Traceback (most recent call last):
    TypeError: out must be a bfloat16 tensor, got torch.float32
    """
    if not isinstance(out, torch.Tensor) or out.dtype != torch.bfloat16:
        raise TypeError(f"out must be a bfloat16 tensor, got {getattr(out, 'dtype', type(out).__name__)}")
    n_out = out.numel()  # symbolic while tracing: compared when the op runs
    if out.layout != torch.strided or not out.is_contiguous() or (type(n_out) is int and type(numel) is int
                                                                   and n_out != numel):
        raise ValueError(f"out must be contiguous with {numel} elements, got shape {tuple(out.shape)}")
    if out.device != device:
        raise ValueError(f"out must be on the payload's device {device}, got {out.device}")
    if device.type == "cuda" and not _is_fake(out) and out.data_ptr() % 16:
        raise ValueError("out must be 16-byte aligned (the decoder writes 16-byte vectors)")


def _is_fake(t: torch.Tensor) -> bool:
    return isinstance(t, torch._subclasses.fake_tensor.FakeTensor) or t.device.type == "meta"


def launch_args(words, gaps, block_starts, lut, raw, numel: int, total_bits: int, max_block_values: int) -> tuple:
    """The decoders' arguments but the output and the stream -- raw pointers and sizes of a
    payload that :func:`check_payload` accepted. A ``DFloatTensor`` computes them once: a call
    then costs the output's checks and the launch, not twenty tensor-attribute reads."""
    return (words.data_ptr(), words.numel(), block_starts.data_ptr(), block_starts.numel() - 1, gaps.data_ptr(),
            gaps.numel(), lut.data_ptr(), raw.data_ptr(), numel, total_bits, max_block_values)


# the current stream's handle without building a torch.cuda.Stream object (µs per call)
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def _stream_handle(device: torch.device) -> int:
    if _raw_stream is not None:
        return _raw_stream(device.index)
    return torch.cuda.current_stream(device).cuda_stream


def extension(cuda_launcher: Optional[str] = None):
    """The compiled extension ``entropy_kernels._C``; RuntimeError when it failed to import or,
    with ``cuda_launcher``, was built without that CUDA function (no nvcc at build time).

    Example
    -------
    >>> hasattr(extension(), "dfloat_decode_cpu")
    True
    """
    C = _backend.native()
    if C is None:
        raise RuntimeError(f"entropy_kernels._C failed to import: {_backend.native_error()}")
    if cuda_launcher is not None and not hasattr(C, cuda_launcher):
        raise RuntimeError("entropy_kernels._C was built without CUDA; reinstall where nvcc is available")
    return C


def on_device(device: torch.device):
    """A context that makes ``device`` (CUDA) current for a raw launch, or a no-op when it
    already is: switching costs µs on every call.

    Example
    -------
    >>> with on_device(torch.device("cpu")):
    ...     pass
    """
    if device.type != "cuda" or device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def launch(out: torch.Tensor, args: tuple) -> None:
    """Decode into ``out`` (checked by :func:`check_out`) with the :func:`launch_args` of its
    payload: the C++ decoder on CPU, the CUDA kernel on torch's current stream of ``out``'s device."""
    if args[8] == 0:  # numel
        return
    # the decoders get out's own size too: whatever the arguments, they never write past it
    if out.device.type == "cuda":
        C = extension("dfloat_decode_cuda")
        with on_device(out.device):
            C.dfloat_decode_cuda(*args, out.data_ptr(), out.numel(), _stream_handle(out.device))
    else:
        status = extension().dfloat_decode_cpu(*args, out.data_ptr(), out.numel())
        if status:
            raise DFloatError(f"cannot decode: {_STATUS.get(status, f'decoder status {status}')}")


def direct(words: torch.Tensor, out: Optional[torch.Tensor] = None) -> bool:
    """Whether a decode of this payload may skip the dispatcher and call :func:`decode_direct`
    (:func:`entropy_kernels._backend.eager_direct`, and ``out`` None or a plain tensor).

    Example
    -------
    >>> direct(torch.zeros(2, dtype=torch.int32)) in (True, False)
    True
    """
    return _backend.eager_direct(words) and (out is None or type(out) is torch.Tensor)


def decode_direct(args: tuple, shape, device: torch.device, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The one decode path under both ops and the eager calls: decode the payload of
    :func:`launch_args` ``args`` (a payload :func:`check_payload` accepted) into ``out``
    (checked here) or a fresh bf16 tensor of ``shape`` on ``device``; returns it.

    Example
    -------
    >>> from entropy_kernels.decoding import DFloatTensor
    >>> c = DFloatTensor.compress(torch.full((2, 4), 3.0, dtype=torch.bfloat16))
    >>> decode_direct(launch_args(*c.payload(), *c.sizes()), (2, 4), c.device).sum().item()
    24.0
    """
    if out is None:
        out = torch.empty(shape, dtype=torch.bfloat16, device=device)
    else:
        check_out(out, args[8], device)
    launch(out, args)
    return out


def _decode(words, gaps, block_starts, lut, raw, numel: int, total_bits: int, max_block_values: int,
            out=None) -> torch.Tensor:
    """Check the payload, then :func:`decode_direct`; returns ``out`` (fresh ``[numel]`` if None)."""
    check_payload(words, gaps, block_starts, lut, raw, numel, total_bits, max_block_values)
    return decode_direct(launch_args(words, gaps, block_starts, lut, raw, numel, total_bits, max_block_values),
                         (numel,), words.device, out)


def _dfloat_decompress_signature(words: torch.Tensor, gaps: torch.Tensor, block_starts: torch.Tensor,
                                 lut: torch.Tensor, raw: torch.Tensor, numel: int, total_bits: int,
                                 max_block_values: int) -> torch.Tensor:
    """Decode an EKDF payload into a fresh bf16 tensor ``[numel]`` on the payload's device.

    Example
    -------
    >>> import torch
    >>> from entropy_kernels.decoding import DFloatTensor
    >>> x = torch.randn(1000).to(torch.bfloat16)
    >>> c = DFloatTensor.compress(x)
    >>> y = torch.ops.entropy_kernels.dfloat_decompress(*c.payload(), *c.sizes())
    >>> torch.equal(y.view(torch.int16), x.view(torch.int16))
    True
    """


def _dfloat_decompress_fake(words, gaps, block_starts, lut, raw, numel, total_bits, max_block_values):
    # also what runs when one argument is a meta tensor: the dispatcher picks the meta kernel for
    # the whole call, and an unchecked one would return an empty tensor on the others' device
    check_payload(words, gaps, block_starts, lut, raw, numel, total_bits, max_block_values, fake=True)
    return words.new_empty((numel,), dtype=torch.bfloat16)


def _dfloat_decompress_into_signature(out: torch.Tensor, words: torch.Tensor, gaps: torch.Tensor,
                                      block_starts: torch.Tensor, lut: torch.Tensor, raw: torch.Tensor, numel: int,
                                      total_bits: int, max_block_values: int) -> None:
    """Decode an EKDF payload into the existing bf16 buffer ``out`` (``numel`` contiguous elements,
    16-byte aligned on CUDA) -- for decoding many weights into one reused buffer.

    Example
    -------
    >>> from entropy_kernels.decoding import DFloatTensor
    >>> ones, twos = (DFloatTensor.compress(torch.full((64,), v, dtype=torch.bfloat16)) for v in (1.0, 2.0))
    >>> buf = torch.empty(64, dtype=torch.bfloat16)
    >>> torch.ops.entropy_kernels.dfloat_decompress_into(buf, *ones.payload(), *ones.sizes())
    >>> torch.ops.entropy_kernels.dfloat_decompress_into(buf, *twos.payload(), *twos.sizes())
    >>> buf.unique().tolist()
    [2.0]
    """


def _decode_into(out, words, gaps, block_starts, lut, raw, numel, total_bits, max_block_values) -> None:
    _decode(words, gaps, block_starts, lut, raw, numel, total_bits, max_block_values, out=out)


def _dfloat_decompress_into_fake(out, words, gaps, block_starts, lut, raw, numel, total_bits, max_block_values):
    check_payload(words, gaps, block_starts, lut, raw, numel, total_bits, max_block_values, out=out, fake=True)
    return None


def _payload_samples():
    from ..decoding import DFloatTensor

    for n, label in ((1000, "1000 values"), (7, "7 values"), (0, "empty")):
        c = DFloatTensor.compress((torch.randn(n) * 0.02).to(torch.bfloat16))
        yield (*c.payload(), *c.sizes()), label


def _into_samples():
    for args, label in _payload_samples():
        yield (torch.empty(args[5], dtype=torch.bfloat16), *args), label


_NATIVE = ("C++ (_C)", "CUDA C++ (_C)")
DECOMPRESS = define_op(
    "dfloat_decompress", _dfloat_decompress_signature, public="DFloatTensor.decompress", kernel=_decode,
    fake=_dfloat_decompress_fake, samples=_payload_samples, backends=_NATIVE,
)
DECOMPRESS_INTO = define_op(
    "dfloat_decompress_into", _dfloat_decompress_into_signature, public="DFloatTensor.decompress",
    kernel=_decode_into, fake=_dfloat_decompress_into_fake, mutates_args=("out",), samples=_into_samples,
    backends=_NATIVE,
)
dfloat_decompress, dfloat_decompress_into = DECOMPRESS.op, DECOMPRESS_INTO.op


def decompress(words, gaps, block_starts, lut, raw, numel: int, total_bits: int, max_block_values: int,
               out=None) -> torch.Tensor:
    """:func:`dfloat_decompress` (``out=None``) or :func:`dfloat_decompress_into` (returns ``out``):
    the same checks and the same launch, called directly in eager mode, through the ops otherwise.

    Example
    -------
    >>> from entropy_kernels.decoding import DFloatTensor
    >>> c = DFloatTensor.compress(torch.linspace(-1, 1, 300).to(torch.bfloat16))
    >>> buf = torch.empty(300, dtype=torch.bfloat16)
    >>> decompress(*c.payload(), *c.sizes(), out=buf) is buf, buf[-1].item()
    (True, 1.0)
    """
    if out is None:
        return DECOMPRESS(words, gaps, block_starts, lut, raw, numel, total_bits, max_block_values)
    DECOMPRESS_INTO(out, words, gaps, block_starts, lut, raw, numel, total_bits, max_block_values)
    return out


from . import dfloat_linear  # noqa: E402,F401  (entropy_kernels::dfloat_linear, built on the above)
