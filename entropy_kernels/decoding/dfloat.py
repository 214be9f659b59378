"""``DFloatTensor``: a losslessly compressed BF16 tensor (EKDF format), decoded on the GPU.

The exponent of each bf16 value is Huffman-coded, sign+mantissa are kept as one raw byte: about
10.6 bits per value for LLM weights (~66% of bf16), bit-identical after decoding. Encoding runs
in C++ on the CPU (multithreaded); decoding runs on the tensor's device through
``entropy_kernels::dfloat_decompress`` (CUDA kernel or C++ loop). Format: ``csrc/dfloat.h``.

Serialisation: :meth:`DFloatTensor.state_dict` gives plain integer tensors plus a JSON-able
header, which :func:`save_file` / :func:`load_file` store as a safetensors file (the header in
the safetensors metadata under ``"ekdf"``). A loaded payload is validated before it can reach a
decoder: CRC32 of the header and of the payload, the header's fields against each other, index
ranges, decode table; a header without its CRC (files of earlier versions) is checked by a
verifying decode against the stored checksum instead. ``docs/ekdf-integrity.md`` lists exactly
what is checked where and what ``validate=False`` skips.

Example
-------
>>> import torch
>>> from entropy_kernels.decoding import DFloatTensor
>>> w = (torch.randn(256, 256) * 0.02).to(torch.bfloat16)
>>> c = DFloatTensor.compress(w)
>>> torch.equal(c.decompress(), w), c.ratio < 0.75
(True, True)
"""

from __future__ import annotations

import json
import math
import zlib
from typing import Dict, Optional, Sequence, Tuple

import torch

from .. import _backend
from ..ops import dfloat as _ops
from ..ops import dfloat_linear as _linear
from ..reference import dfloat as _ref

FORMAT_MAGIC = "EKDF"
FORMAT_VERSION = 1
MAX_CODE_LEN = 12
MAX_THREADS = 1024  # encoder threads; more is a mistake (csrc/dfloat.h kMaxThreads)
PARTS = ("words", "gaps", "block_starts", "lut", "raw")
STORED_PARTS = ("words", "gaps", "block_starts", "raw")  # the decode table is rebuilt from the code lengths
# every field a version-1 header may have; "header_crc32" (CRC32 of the others) is written since
# it was added and is optional on reading, so files written before still load (and are verified
# by decoding them)
HEADER_FIELDS = ("magic", "version", "dtype", "shape", "total_bits", "max_block_values", "max_code_len",
                 "num_words", "checksum", "payload_crc32", "code_lengths", "exponent_hist", "header_crc32")


def _native():
    C = _backend.native()
    if C is None:
        raise RuntimeError(f"entropy_kernels._C failed to import: {_backend.native_error()}")
    return C


def _crc32(arrays: Sequence[torch.Tensor]) -> int:
    crc = 0
    for a in arrays:
        crc = zlib.crc32(a.detach().cpu().contiguous().view(torch.uint8).numpy(), crc)  # no byte copy
    return crc & 0xFFFFFFFF


DFloatError = _ops.DFloatError  # defined with the op, which raises it too


def header_crc32(header: dict) -> int:
    """CRC32 of an EKDF header's fields but ``header_crc32``, in a canonical JSON form (sorted
    keys, no spaces): what :meth:`DFloatTensor.header` stores as ``header_crc32``.

    Example
    -------
    >>> import torch
    >>> h = DFloatTensor.compress(torch.ones(4, dtype=torch.bfloat16)).header()
    >>> header_crc32(h) == h["header_crc32"]
    True
    """
    body = {k: v for k, v in header.items() if k != "header_crc32"}
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise DFloatError(f"header is not JSON data: {exc}") from exc
    return zlib.crc32(text.encode()) & 0xFFFFFFFF


def _short(v) -> str:
    try:
        text = repr(v)
    except ValueError:  # an int too long to print
        return f"<{type(v).__name__}>"
    return text if len(text) <= 40 else text[:37] + "..."


def _int(v, field: str, lo: int = 0, hi: int = _ops.MAX_INT) -> int:
    """A JSON integer in [lo, hi] (not a float, bool, string or null), else DFloatError naming ``field``."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise DFloatError(f"header field {field!r} must be an integer, got {_short(v)}")
    if not lo <= v <= hi:
        raise DFloatError(f"header field {field!r} must be in [{lo}, {hi}], got {_short(v)}")
    return v


def _check_threads(threads) -> int:
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise TypeError(f"threads must be an int (0 = all cores), got {type(threads).__name__}")
    if not 0 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must be in [0, {MAX_THREADS}] (0 = all cores), got {threads}")
    return threads


class DFloatTensor:
    """A bf16 tensor stored entropy-coded (EKDF); see the module docstring.

    Build with :meth:`compress` (or :meth:`from_state_dict` / :func:`load_file`); get the values
    back with :meth:`decompress`. ``payload()`` are the 5 arrays the decoder reads; they live on
    ``device``. The header values (``shape``, ``numel``, ``total_bits``, ...) are read-only:
    the decoders size their work from them. The constructor checks the arrays' shapes against
    them only; :meth:`from_state_dict` is the way in for arrays from elsewhere (it validates).

    Example
    -------
    >>> import torch
    >>> c = DFloatTensor.compress(torch.zeros(10, dtype=torch.bfloat16))
    >>> c.shape, c.numel, c.decompress().abs().sum().item()
    ((10,), 10, 0.0)
    """

    def __init__(self, *, words: torch.Tensor, gaps: torch.Tensor, block_starts: torch.Tensor, lut: torch.Tensor,
                 raw: torch.Tensor, shape: Sequence[int], total_bits: int, max_block_values: int, checksum: int,
                 code_lengths: Sequence[int], exponent_hist: Sequence[int], payload_crc32: int):
        self.words, self.gaps, self.block_starts, self.lut, self.raw = words, gaps, block_starts, lut, raw
        if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
            raise TypeError(f"shape must be a sequence of ints, got {type(shape).__name__}")
        if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
            raise ValueError(f"shape must hold non-negative ints, got {_short(list(shape))}")
        self._shape = tuple(int(d) for d in shape)
        numel = math.prod(self._shape)
        # (numel, total_bits, max_block_values): one tuple, so the decode path can tell by
        # identity that nothing was replaced since the payload was checked against it
        self._sizes = (numel, total_bits, max_block_values)
        for name, v in (("checksum", checksum), ("payload_crc32", payload_crc32)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 0xFFFFFFFF:
                raise ValueError(f"{name} must be a 32-bit unsigned int, got {_short(v)}")
        self._checksum, self._payload_crc32 = checksum, payload_crc32
        self._code_lengths = tuple(int(v) for v in code_lengths)
        self._exponent_hist = tuple(int(v) for v in exponent_hist)
        _ops.check_payload(*self.payload(), *self._sizes)

    # read-only header values
    shape = property(lambda self: self._shape, doc="Shape of the original tensor.")
    numel = property(lambda self: self._sizes[0], doc="Number of values.")
    total_bits = property(lambda self: self._sizes[1], doc="Bits of the exponent code stream.")
    max_block_values = property(lambda self: self._sizes[2], doc="Most values coded in one 65536-bit block.")
    checksum = property(lambda self: self._checksum, doc="XOR checksum of the original values (read_checksum).")
    payload_crc32 = property(lambda self: self._payload_crc32, doc="CRC32 of the stored payload arrays.")
    code_lengths = property(lambda self: self._code_lengths, doc="Code length of each of the 256 exponents.")
    exponent_hist = property(lambda self: self._exponent_hist, doc="Count of each of the 256 exponents.")

    # ----------------------------------------------------------------------------- building ---

    @classmethod
    def compress(cls, tensor: torch.Tensor, threads: int = 0) -> "DFloatTensor":
        """Encode a bf16 tensor (any device; encoding runs on the CPU with ``threads`` threads,
        0 = all cores). The payload is placed on the tensor's device.

        Example
        -------
        >>> import torch
        >>> x = (torch.randn(4096) * 0.02).to(torch.bfloat16)
        >>> c = DFloatTensor.compress(x)
        >>> torch.equal(c.decompress(), x) and c.device == x.device
        True
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
        threads = _check_threads(threads)
        numel = tensor.numel()
        C = _native()
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
        out = cls(words=words, gaps=gaps, block_starts=block_starts, lut=lut, raw=raw, shape=tensor.shape,
                  total_bits=total_bits, max_block_values=max_block_values, checksum=checksum,
                  code_lengths=lengths.tolist(), exponent_hist=hist.tolist(),
                  payload_crc32=_crc32([words, gaps, block_starts, raw]))
        return out.to(tensor.device) if tensor.device.type != "cpu" else out

    # ----------------------------------------------------------------------------- decoding ---

    def payload(self) -> Tuple[torch.Tensor, ...]:
        """The decoder's arrays ``(words, gaps, block_starts, lut, raw)``."""
        return self.words, self.gaps, self.block_starts, self.lut, self.raw

    def sizes(self) -> Tuple[int, int, int]:
        """The decoder's integer arguments ``(numel, total_bits, max_block_values)``."""
        return self._sizes

    @property
    def device(self) -> torch.device:
        return self.words.device

    def to(self, device) -> "DFloatTensor":
        """The same payload on ``device`` (a copy, or ``self`` if already there).

        Example
        -------
        >>> import torch
        >>> DFloatTensor.compress(torch.ones(3, dtype=torch.bfloat16)).to("cpu").device
        device(type='cpu')
        """
        device = torch.device(device)
        if device == self.device:
            return self
        moved = [t.to(device) for t in self.payload()]
        return DFloatTensor(**dict(zip(PARTS, moved)), **self._header_args())

    def decompress(self, device=None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The original bf16 tensor, decoded on ``device`` (default: where the payload is).

        ``out`` (bf16, ``numel`` contiguous elements, any shape) receives the values instead of a
        fresh tensor; the result is then ``out`` viewed with this tensor's shape.

        Example
        -------
        >>> import torch
        >>> x = torch.randn(2, 3).to(torch.bfloat16)
        >>> c = DFloatTensor.compress(x)
        >>> torch.equal(c.decompress(), x)
        True
        >>> buf = torch.empty(6, dtype=torch.bfloat16)
        >>> torch.equal(c.decompress(out=buf), x) and torch.equal(buf.view(2, 3), x)
        True
        """
        src = self if device is None else self.to(device)
        if out is not None and not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
        if _backend.eager_direct(src.words) and (out is None or type(out) is torch.Tensor):
            # eagerly straight to the decoder with the payload's arguments computed once: a
            # compressed model decodes every weight before every forward, and each µs of host
            # time here is paid per weight per step
            args = src._launch_args()  # checks shape against numel when either changed
            if out is None:
                out = torch.empty(src._shape, dtype=torch.bfloat16, device=src.device)
            else:
                _ops.check_out(out, src._sizes[0], src.device)
            _ops.launch(out, args)
            return out if out.shape == src._shape else out.view(src._shape)
        src._check_shape()
        if out is None:
            return _ops.decompress(*src.payload(), *src._sizes).view(src._shape)
        flat = out.view(-1) if out.is_contiguous() else out
        _ops.decompress(*src.payload(), *src._sizes, out=flat)
        return out.view(src._shape)

    def linear(self, x: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x @ W.T + bias`` for this 2-D weight W [N, K] and ``x`` [..., K] (bf16; ``bias`` None
        or [N] bf16), as ``F.linear`` with fp32 accumulation, without keeping W decoded.

        On CUDA, up to 16 rows of ``x`` (all dimensions but the last flattened) go to a fused
        kernel that decodes W block by block in shared memory and multiplies as it goes
        (``entropy_kernels::dfloat_linear``, ``csrc/dfloat_linear.h``); more rows decode W into a
        temporary buffer and call ``F.linear``. On the CPU W is decoded, then ``F.linear`` runs:
        the result equals ``F.linear(x, self.decompress(), bias)`` exactly. Gradients flow to
        ``x`` and ``bias`` (the backward decodes W for ``dy @ W``).

        Example
        -------
        >>> import torch
        >>> w = (torch.randn(16, 64) * 0.02).to(torch.bfloat16)
        >>> b = torch.randn(16).to(torch.bfloat16)
        >>> x = torch.randn(2, 3, 64).to(torch.bfloat16)
        >>> y = DFloatTensor.compress(w).linear(x, b)
        >>> y.shape, torch.equal(y, torch.nn.functional.linear(x, w, b))
        (torch.Size([2, 3, 16]), True)
        """
        if len(self._shape) != 2:
            raise ValueError(f"linear needs a 2-D weight [out_features, in_features], this tensor has shape "
                             f"{self._shape}")
        rows, cols = self._shape
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 1:
            raise ValueError(f"x must have shape [..., {cols}], got a 0-d tensor")
        if bias is not None and not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
        lead = x.shape[:-1]
        x2 = x.reshape(math.prod(lead), x.shape[-1])
        grad = torch.is_grad_enabled() and (x2.requires_grad or (bias is not None and bias.requires_grad))
        if not grad and _backend.eager_direct(x2) and _backend.eager_direct(self.words) and (
                bias is None or type(bias) is torch.Tensor):
            # eagerly straight to the kernels, the payload's arguments computed once (see
            # decompress): a compressed model calls this per linear layer per decoded token
            args = self._launch_args()
            _linear.check_inputs(x2, bias, rows, cols, self._sizes[0], self.device)
            y = _linear.run(x2, bias, rows, cols, args)
        else:
            self._check_shape()
            y = _linear.dfloat_linear(x2, *self.payload(), *self._sizes, rows, cols, bias)
        return y.view(*lead, rows)

    def _check_shape(self) -> None:
        if math.prod(self._shape) != self._sizes[0]:
            raise DFloatError(f"shape {self._shape} does not hold numel={self._sizes[0]} values")

    def _launch_args(self) -> tuple:
        """``ops.dfloat.launch_args`` of the payload, computed (and the payload checked) again
        only when one of the five arrays has been replaced or moved to other memory since the
        last call (its identity or its data pointer changed: a copy of this object, a ``.data``
        swap, ``share_memory_()``)."""
        payload = self.payload()
        pointers = tuple(t.data_ptr() for t in payload)
        cached = self.__dict__.get("_launch_cache")
        if (cached is None or cached[1] != pointers or cached[2] is not self._sizes or cached[3] is not self._shape
                or any(a is not b for a, b in zip(cached[0], payload))):
            self._check_shape()
            _ops.check_payload(*payload, *self._sizes)
            cached = (payload, pointers, self._sizes, self._shape, _ops.launch_args(*payload, *self._sizes))
            self._launch_cache = cached
        return cached[4]

    def __getstate__(self) -> dict:
        # pickle / deepcopy / torch.save: the cached raw pointers belong to this object's memory
        state = dict(self.__dict__)
        state.pop("_launch_cache", None)
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        if "shape" in state:  # pickled when the header values were plain attributes
            state["_shape"] = tuple(state.pop("shape"))
            state["_sizes"] = (state.pop("numel"), state.pop("total_bits"), state.pop("max_block_values"))
            for key in ("checksum", "payload_crc32", "code_lengths", "exponent_hist"):
                value = state.pop(key)
                state["_" + key] = tuple(value) if isinstance(value, list) else value
        self.__dict__.update(state)

    def verify(self, decoded: torch.Tensor) -> bool:
        """True when ``decoded`` has the XOR checksum of the original bytes (a host sync).

        Example
        -------
        >>> import torch
        >>> c = DFloatTensor.compress(torch.randn(100).to(torch.bfloat16))
        >>> c.verify(c.decompress())
        True
        """
        from ..native import read_checksum

        if decoded.dtype != torch.bfloat16 or decoded.numel() != self.numel:
            return False
        return (int(read_checksum(decoded.contiguous())) & 0xFFFFFFFF) == self.checksum

    # ------------------------------------------------------------------------------- sizes ---

    @property
    def nbytes(self) -> int:
        """Bytes of the compressed payload (all five arrays)."""
        return sum(t.numel() * t.element_size() for t in self.payload())

    @property
    def original_nbytes(self) -> int:
        return 2 * self.numel

    @property
    def ratio(self) -> float:
        """Compressed size / bf16 size (e.g. 0.66)."""
        return self.nbytes / max(1, self.original_nbytes)

    @property
    def bits_per_value(self) -> float:
        return 8.0 * self.nbytes / max(1, self.numel)

    @property
    def entropy_bound_bits(self) -> float:
        """``8 + H(exponent)``: bits per value of an ideal exponent coder with a raw sign|mantissa byte."""
        return 8.0 + _ref.exponent_entropy_bits(self.exponent_hist)

    def __repr__(self) -> str:
        return (f"DFloatTensor(shape={self.shape}, device={self.device}, ratio={self.ratio:.4f}, "
                f"bits/value={self.bits_per_value:.3f}, bound={self.entropy_bound_bits:.3f})")

    # ----------------------------------------------------------------------- serialisation ---

    def _header_args(self) -> dict:
        return dict(shape=self._shape, total_bits=self.total_bits, max_block_values=self.max_block_values,
                    checksum=self._checksum, code_lengths=self._code_lengths, exponent_hist=self._exponent_hist,
                    payload_crc32=self._payload_crc32)

    def header(self) -> dict:
        """JSON-able header: magic, version, dtype, shape, code table, sizes and checksums, and
        ``header_crc32``, the CRC32 of all the others (:func:`header_crc32`).

        Example
        -------
        >>> import torch
        >>> h = DFloatTensor.compress(torch.ones(2, 3, dtype=torch.bfloat16)).header()
        >>> h["shape"], h["total_bits"], h["code_lengths"]
        ([2, 3], 6, {'127': 1})
        """
        header = {"magic": FORMAT_MAGIC, "version": FORMAT_VERSION, "dtype": "bfloat16", "shape": list(self._shape),
                  "total_bits": self.total_bits, "max_block_values": self.max_block_values,
                  "max_code_len": MAX_CODE_LEN, "num_words": self.words.numel(),
                  "checksum": self._checksum, "payload_crc32": self._payload_crc32,
                  "code_lengths": _sparse(self._code_lengths), "exponent_hist": _sparse(self._exponent_hist)}
        header["header_crc32"] = header_crc32(header)
        return header

    def state_dict(self) -> Tuple[Dict[str, torch.Tensor], dict]:
        """``({part: tensor}, header)`` -- what :func:`save_file` writes for one tensor (the 8 KB
        decode table is not stored: it is rebuilt from the code lengths in the header)."""
        parts = dict(zip(PARTS, self.payload()))
        return {p: parts[p] for p in STORED_PARTS}, self.header()

    @classmethod
    def from_state_dict(cls, tensors: Dict[str, torch.Tensor], header: dict, validate: bool = True) -> "DFloatTensor":
        """Rebuild from :meth:`state_dict` output. Raises :class:`DFloatError` for anything
        malformed, naming the field.

        The header must be well-formed in any case: every field present with its JSON type and
        range, and the arrays sized as it says. ``validate=True`` (default) then checks the
        content: the header's CRC32 when it has one (a header without it is from an earlier
        version: the payload is then decoded once on the CPU and compared with the header's
        checksum), and everything :meth:`validate` checks. ``validate=False`` skips those content
        checks -- for inspecting a damaged file; the decoders stay memory-safe and the CPU decoder
        still refuses an index that disagrees with its stream, but wrong values are possible.

        Example
        -------
        >>> import torch
        >>> x = torch.randn(50).to(torch.bfloat16)
        >>> parts, header = DFloatTensor.compress(x).state_dict()
        >>> torch.equal(DFloatTensor.from_state_dict(parts, header).decompress(), x)
        True
        >>> header["shape"] = [5, 10]
        >>> DFloatTensor.from_state_dict(parts, header)
        Traceback (most recent call last):
        ...
        entropy_kernels.ops.dfloat.DFloatError: header CRC32 mismatch (corrupted or edited header)
        """
        if not isinstance(validate, bool):
            raise TypeError(f"validate must be a bool, got {type(validate).__name__}")
        fields = _parse_header(header, check_crc=validate)
        if not isinstance(tensors, dict):
            raise DFloatError(f"payload must be a dict of tensors, got {type(tensors).__name__}")
        missing = [p for p in STORED_PARTS if p not in tensors]
        if missing:
            raise DFloatError(f"payload is missing {missing}")
        unknown = sorted(str(k) for k in tensors if k not in PARTS)
        if unknown:
            raise DFloatError(f"payload has unknown parts {unknown[:5]}")
        for p, t in tensors.items():
            if not isinstance(t, torch.Tensor):
                raise DFloatError(f"payload part {p!r} must be a tensor, got {type(t).__name__}")
        tensors = dict(tensors)
        if "lut" not in tensors:
            tensors["lut"] = _build_lut(fields["code_lengths"]).to(tensors["words"].device)
        if fields["num_words"] != tensors["words"].numel():
            raise DFloatError(f"words has {tensors['words'].numel()} entries, header field 'num_words' says "
                              f"{fields['num_words']}")
        del fields["num_words"]
        try:
            obj = cls(**{p: tensors[p] for p in PARTS}, **fields)
        except (TypeError, ValueError) as exc:
            raise DFloatError(f"payload does not match its header: {exc}") from exc
        if validate:
            obj.validate(decode="header_crc32" not in header)
        return obj

    def save(self, path: str) -> None:
        """Write this tensor alone to a safetensors file (key ``"tensor"``; see :func:`save_file`).

        Example
        -------
        >>> import torch, tempfile, os
        >>> x = torch.randn(100).to(torch.bfloat16)
        >>> path = os.path.join(tempfile.mkdtemp(), "x.safetensors")
        >>> DFloatTensor.compress(x).save(path)
        >>> torch.equal(DFloatTensor.load(path).decompress(), x)
        True
        """
        save_file({"tensor": self}, path)

    @classmethod
    def load(cls, path: str, device="cpu", validate: bool = True) -> "DFloatTensor":
        """Read a file written by :meth:`save` (validated as :func:`load_file` does, then moved to ``device``)."""
        value = load_file(path, device=device, validate=validate).get("tensor")
        if not isinstance(value, DFloatTensor):
            raise DFloatError(f"{path} holds no EKDF tensor under the key 'tensor'")
        return value

    def validate(self, decode: bool = False) -> None:
        """Check the payload against its header: CRC32 of the payload; code lengths (a complete
        prefix code of <= 12 bits over exactly the exponents that occur), exponent histogram
        (adds up to ``numel``), ``total_bits`` (equals the histogram's coded length), decode
        table, ``block_starts`` (rising from 0 to ``numel``, the largest step equal to
        ``max_block_values``) and segment gaps. ``decode=True`` also decodes the payload once
        on the CPU, which checks the index against the code stream, and compares the values
        with the stored checksum. Raises :class:`DFloatError`. Reads the payload on the host
        (a sync for GPU payloads).

        Example
        -------
        >>> import torch
        >>> c = DFloatTensor.compress(torch.randn(100).to(torch.bfloat16))
        >>> c.validate(decode=True)
        >>> c.raw[3] ^= 1
        >>> c.validate()
        Traceback (most recent call last):
        ...
        entropy_kernels.ops.dfloat.DFloatError: payload CRC32 mismatch (corrupted or truncated data)
        """
        if _crc32([self.words, self.gaps, self.block_starts, self.raw]) != self._payload_crc32:
            raise DFloatError("payload CRC32 mismatch (corrupted or truncated data)")
        self._check_shape()
        lengths, hist, numel = self._code_lengths, self._exponent_hist, self.numel
        if len(lengths) != 256 or any(not (0 <= v <= MAX_CODE_LEN) for v in lengths):
            raise DFloatError("code lengths must be 256 values in [0, 12]")
        if len(hist) != 256 or any(h < 0 for h in hist) or sum(hist) != numel:
            raise DFloatError("exponent histogram does not add up to numel")
        if any((h > 0) != (n > 0) for h, n in zip(hist, lengths)):
            raise DFloatError("code lengths must be given for exactly the exponents that occur")
        # the encoder's codes are complete (Kraft sum 1), but a lone symbol gets one bit
        used = [n for n in lengths if n]
        kraft = sum(1 << (MAX_CODE_LEN - n) for n in used)
        if used and kraft != 1 << MAX_CODE_LEN and not (len(used) == 1 and used[0] == 1):
            raise DFloatError("code lengths do not form a complete prefix code")
        if self.total_bits != sum(h * n for h, n in zip(hist, lengths)):
            raise DFloatError(f"total_bits is {self.total_bits}, the code lengths and histogram give "
                              f"{sum(h * n for h, n in zip(hist, lengths))}")
        if not torch.equal(_build_lut(lengths), self.lut.cpu()):
            raise DFloatError("decode table does not match the code lengths")
        starts = self.block_starts.cpu()
        if int(starts[0]) != 0 or int(starts[-1]) != numel or bool((starts[1:] < starts[:-1]).any()):
            raise DFloatError("block starts are not a non-decreasing range from 0 to numel")
        most = int((starts[1:] - starts[:-1]).max()) if starts.numel() > 1 else 0
        if most != self.max_block_values:
            raise DFloatError(f"max_block_values is {self.max_block_values}, the largest block holds {most}")
        g = self.gaps.cpu()
        nibbles = torch.stack([g & 15, g >> 4], 1).reshape(-1)
        if bool(((nibbles >= _ref.MAX_CODE_LEN) & (nibbles != 15)).any()):
            raise DFloatError("segment gaps out of range")
        if decode:
            self._verify_decode()

    def _verify_decode(self) -> None:
        """Decode once on the CPU (its decoder checks the index against the stream, so the GPU
        decoder gives the same values) and compare with the stored checksum."""
        host = self.to("cpu")
        out = torch.empty(self.numel, dtype=torch.bfloat16)
        host.decompress(out=out)  # DFloatError if the index disagrees with the stream
        if not host.verify(out):
            raise DFloatError("decoded values do not match the header's checksum (corrupted payload or header)")


def _dense(mapping, field: str, hi: int) -> list:
    """The 256 values of a sparse ``{"symbol": value}`` header field."""
    if not isinstance(mapping, dict):
        raise DFloatError(f"header field {field!r} must be an object, got {_short(mapping)}")
    out = [0] * 256
    for k, v in mapping.items():
        if not (isinstance(k, str) and k.isascii() and k.isdigit() and k == str(int(k)) and int(k) < 256):
            raise DFloatError(f"header field {field!r}: symbol {_short(k)} out of range")
        out[int(k)] = _int(v, f"{field}[{k}]", 0, hi)
    return out


def _parse_header(header, check_crc: bool) -> dict:
    """``DFloatTensor`` keyword arguments (plus ``num_words``) from a header, every field checked
    for presence, JSON type and range; with ``check_crc``, ``header_crc32`` too when present."""
    if not isinstance(header, dict) or header.get("magic") != FORMAT_MAGIC:
        raise DFloatError(f"not an EKDF header (magic {_short(header.get('magic')) if isinstance(header, dict) else None})")
    version = header.get("version")
    if type(version) is not int or version != FORMAT_VERSION:  # not 1.0 or true either
        raise DFloatError(f"unsupported EKDF version {_short(version)} (this build reads {FORMAT_VERSION})")
    unknown = sorted(str(k) for k in header if k not in HEADER_FIELDS)
    if unknown:
        raise DFloatError(f"unknown header fields {unknown[:5]}")
    missing = [k for k in HEADER_FIELDS if k not in header and k != "header_crc32"]
    if missing:
        raise DFloatError(f"header fields missing: {missing}")
    if header["dtype"] != "bfloat16" or type(header["max_code_len"]) is not int \
            or header["max_code_len"] != MAX_CODE_LEN:
        raise DFloatError(f"unsupported dtype/code length in header: {_short(header['dtype'])}, "
                          f"{_short(header['max_code_len'])}")
    shape = header["shape"]
    if not isinstance(shape, list) or len(shape) > 64:
        raise DFloatError(f"header field 'shape' must be a list of at most 64 integers, got {_short(shape)}")
    dims = [_int(d, "shape") for d in shape]
    if math.prod(dims) > _ops.MAX_INT:
        raise DFloatError(f"header field 'shape' holds too many values: {dims}")
    fields = dict(shape=dims, total_bits=_int(header["total_bits"], "total_bits"),
                  max_block_values=_int(header["max_block_values"], "max_block_values"),
                  num_words=_int(header["num_words"], "num_words"),
                  checksum=_int(header["checksum"], "checksum", 0, 0xFFFFFFFF),
                  payload_crc32=_int(header["payload_crc32"], "payload_crc32", 0, 0xFFFFFFFF),
                  code_lengths=_dense(header["code_lengths"], "code_lengths", MAX_CODE_LEN),
                  exponent_hist=_dense(header["exponent_hist"], "exponent_hist", _ops.MAX_INT))
    # after the field checks, so that a field of the wrong type is named rather than reported
    # as a CRC mismatch
    if "header_crc32" in header:
        stored = _int(header["header_crc32"], "header_crc32", 0, 0xFFFFFFFF)
        if check_crc and stored != header_crc32(header):
            raise DFloatError("header CRC32 mismatch (corrupted or edited header)")
    return fields


def _build_lut(lengths: Sequence[int]) -> torch.Tensor:
    if len(lengths) != 256 or any(not (0 <= int(v) <= MAX_CODE_LEN) for v in lengths):
        raise DFloatError("code lengths must be 256 values in [0, 12]")
    if _ref.kraft_sum(lengths) > 1.0:
        raise DFloatError("code lengths do not form a prefix code")
    lut = torch.empty(_ops.LUT_SIZE, dtype=torch.int16)
    lengths_t = torch.tensor([int(v) for v in lengths], dtype=torch.uint8)  # kept alive across the call
    _native().dfloat_build_lut(lengths_t.data_ptr(), lut.data_ptr())
    return lut


def _sparse(values: Sequence[int]) -> Dict[str, int]:
    return {str(i): int(v) for i, v in enumerate(values) if v}




# ---------------------------------------------------------------------------- safetensors I/O ---

SEP = ".__ekdf__."


def to_safetensors(tensors: Dict[str, object]) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """``(flat tensors, metadata)`` for ``safetensors.torch.save_file`` from a dict whose values
    are plain tensors or :class:`DFloatTensor` (stored as ``name.__ekdf__.<part>`` + a header in
    the metadata key ``"ekdf"``)."""
    flat: Dict[str, torch.Tensor] = {}
    headers = {}
    for name, value in tensors.items():
        if isinstance(value, DFloatTensor):
            parts, header = value.state_dict()
            for part, t in parts.items():
                flat[f"{name}{SEP}{part}"] = t.detach().cpu().contiguous()
            headers[name] = header
        elif isinstance(value, torch.Tensor):
            flat[name] = value.detach().cpu().contiguous()
        else:
            raise TypeError(f"{name}: expected a tensor or DFloatTensor, got {type(value).__name__}")
    return flat, {"format": "pt", "ekdf": json.dumps({"magic": FORMAT_MAGIC, "version": FORMAT_VERSION,
                                                     "tensors": headers})}


def from_safetensors(flat: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]], validate: bool = True,
                     ) -> Dict[str, object]:
    """Inverse of :func:`to_safetensors`: plain tensors and validated :class:`DFloatTensor` s
    (``validate``: see :meth:`DFloatTensor.from_state_dict`). Raises :class:`DFloatError`,
    naming the tensor, for malformed EKDF metadata or payloads.

    Example
    -------
    >>> import torch
    >>> flat, meta = to_safetensors({"w": DFloatTensor.compress(torch.ones(3, dtype=torch.bfloat16))})
    >>> from_safetensors(flat, meta)["w"].shape
    (3,)
    >>> from_safetensors(flat, {"ekdf": "[]"})
    Traceback (most recent call last):
    ...
    entropy_kernels.ops.dfloat.DFloatError: malformed EKDF metadata: not an object with magic 'EKDF'
    """
    headers = {}
    if metadata and "ekdf" in metadata:
        try:
            info = json.loads(metadata["ekdf"])
        except (ValueError, TypeError, RecursionError) as exc:
            raise DFloatError(f"malformed EKDF metadata: {exc}") from exc
        if not isinstance(info, dict) or info.get("magic") != FORMAT_MAGIC:
            raise DFloatError("malformed EKDF metadata: not an object with magic 'EKDF'")
        if type(info.get("version")) is not int or info["version"] != FORMAT_VERSION:
            raise DFloatError(f"unsupported EKDF metadata version {_short(info.get('version'))} "
                              f"(this build reads {FORMAT_VERSION})")
        headers = info.get("tensors")
        if not isinstance(headers, dict):
            raise DFloatError(f"malformed EKDF metadata: 'tensors' must be an object, got {_short(headers)}")
    out: Dict[str, object] = {}
    grouped: Dict[str, Dict[str, torch.Tensor]] = {}
    for key, t in flat.items():
        if SEP in key:
            name, part = key.split(SEP, 1)
            grouped.setdefault(name, {})[part] = t
        else:
            out[key] = t
    for name in sorted(set(grouped) | set(headers)):
        if name not in headers:
            raise DFloatError(f"{name}: compressed payload without a header")
        if name in out:
            raise DFloatError(f"{name}: both a plain tensor and a compressed payload")
        try:
            out[name] = DFloatTensor.from_state_dict(grouped.get(name, {}), headers[name], validate=validate)
        except DFloatError as exc:
            raise DFloatError(f"{name}: {exc}") from exc
    return out


def save_file(tensors: Dict[str, object], path: str, metadata: Optional[Dict[str, str]] = None) -> None:
    """Write plain tensors and :class:`DFloatTensor` s to one safetensors file.

    Example
    -------
    >>> import torch, tempfile, os
    >>> x = torch.randn(10).to(torch.bfloat16)
    >>> path = os.path.join(tempfile.mkdtemp(), "t.safetensors")
    >>> save_file({"w": DFloatTensor.compress(x), "b": torch.ones(2)}, path)
    >>> loaded = load_file(path)
    >>> torch.equal(loaded["w"].decompress(), x), loaded["b"].tolist()
    (True, [1.0, 1.0])
    """
    from safetensors.torch import save_file as _save

    flat, meta = to_safetensors(tensors)
    if metadata:
        meta = {**metadata, **meta}
    _save(flat, path, metadata=meta)


def _read_safetensors(path: str, tensors: bool):
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return f.metadata(), ({k: f.get_tensor(k) for k in f.keys()} if tensors else None)
    except SafetensorError as exc:  # truncated, or a corrupted safetensors header
        raise DFloatError(f"{path}: not a readable safetensors file ({exc})") from exc


def load_file(path: str, device="cpu", validate: bool = True) -> Dict[str, object]:
    """Read a file written by :func:`save_file` (also a plain safetensors file); payloads are
    validated on the CPU (``validate``: see :meth:`DFloatTensor.from_state_dict`), then moved to
    ``device``. A damaged file raises :class:`DFloatError` naming the tensor and what is wrong.

    Example
    -------
    >>> import torch, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "t.safetensors")
    >>> save_file({"w": DFloatTensor.compress(torch.ones(8, dtype=torch.bfloat16))}, path)
    >>> load_file(path)["w"].numel
    8
    """
    metadata, flat = _read_safetensors(path, tensors=True)
    loaded = from_safetensors(flat, metadata, validate=validate)
    device = torch.device(device)
    return {k: (v.to(device) if isinstance(v, (DFloatTensor, torch.Tensor)) else v) for k, v in loaded.items()}


def read_metadata(path: str) -> Dict[str, str]:
    """The safetensors metadata of ``path`` (the EKDF headers are under ``"ekdf"``)."""
    return dict(_read_safetensors(path, tensors=False)[0] or {})
