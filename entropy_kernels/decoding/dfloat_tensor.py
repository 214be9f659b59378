"""``DFloatTensor``: a losslessly compressed BF16 tensor (EKDF format), decoded on its device.

The class holds the five payload arrays the decoders read and the header values that size them;
it decodes through :mod:`entropy_kernels.ops.dfloat` (``decompress``) and
:mod:`entropy_kernels.ops.dfloat_linear` (``linear``). Encoding is
:mod:`~entropy_kernels.decoding.dfloat_encode`, the header and its checks
:mod:`~entropy_kernels.decoding.dfloat_format`, files
:mod:`~entropy_kernels.decoding.dfloat_safetensors`.

Example
-------
>>> import torch
>>> w = (torch.randn(64, 64) * 0.02).to(torch.bfloat16)
>>> c = DFloatTensor.compress(w)
>>> torch.equal(c.decompress(), w), c.shape
(True, (64, 64))
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch

from .. import _backend
from ..ops import dfloat as _ops
from ..ops import dfloat_linear as _linear
from ..reference import dfloat as _ref
from . import dfloat_format as _format
from .dfloat_encode import encode
from .dfloat_format import FORMAT_MAGIC, FORMAT_VERSION, MAX_CODE_LEN, PARTS, STORED_PARTS, DFloatError, short


class DFloatTensor:
    """A bf16 tensor stored entropy-coded (EKDF; the format: :mod:`entropy_kernels.decoding.dfloat`).

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
            raise ValueError(f"shape must hold non-negative ints, got {short(list(shape))}")
        self._shape = tuple(int(d) for d in shape)
        numel = math.prod(self._shape)
        # (numel, total_bits, max_block_values): one tuple, so the decode path can tell by
        # identity that nothing was replaced since the payload was checked against it
        self._sizes = (numel, total_bits, max_block_values)
        for name, v in (("checksum", checksum), ("payload_crc32", payload_crc32)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 0xFFFFFFFF:
                raise ValueError(f"{name} must be a 32-bit unsigned int, got {short(v)}")
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
        out = cls(**encode(tensor, threads))
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
        if _ops.direct(src.words, out):
            # the ops' eager path, with the payload's arguments computed once: a compressed model
            # decodes every weight before every forward, and each µs of host time here is paid
            # per weight per step (_launch_args checks shape against numel when either changed)
            out = _ops.decode_direct(src._launch_args(), src._shape, src.device, out)
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
        _format.check_shape(self._shape, self._sizes[0])

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
                  "code_lengths": _format.sparse(self._code_lengths),
                  "exponent_hist": _format.sparse(self._exponent_hist)}
        header["header_crc32"] = _format.header_crc32(header)
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
        kwargs = _format.payload_arguments(tensors, header, check_crc=validate)
        try:
            obj = cls(**kwargs)
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
        from .dfloat_safetensors import save_file

        save_file({"tensor": self}, path)

    @classmethod
    def load(cls, path: str, device="cpu", validate: bool = True) -> "DFloatTensor":
        """Read a file written by :meth:`save` (validated as :func:`load_file` does, then moved to ``device``)."""
        from .dfloat_safetensors import load_file

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
        _format.check_content(self)
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
