"""``DFloatTensor``: a losslessly compressed BF16 tensor (EKDF format), decoded on the GPU.

The exponent of each bf16 value is Huffman-coded, sign+mantissa are kept as one raw byte: about
10.6 bits per value for LLM weights (~66% of bf16), bit-identical after decoding. Encoding runs
in C++ on the CPU (multithreaded); decoding runs on the tensor's device through
``entropy_kernels::dfloat_decompress`` (CUDA kernel or C++ loop). Format: ``csrc/dfloat.h``.

Serialisation: :meth:`DFloatTensor.state_dict` gives plain integer tensors plus a JSON-able
header, which :func:`save_file` / :func:`load_file` store as a safetensors file (the header in
the safetensors metadata under ``"ekdf"``). A loaded payload is validated (CRC32 of the payload,
index ranges, decode table) before it can reach a decoder.

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
from ..reference import dfloat as _ref

FORMAT_MAGIC = "EKDF"
FORMAT_VERSION = 1
MAX_CODE_LEN = 12
PARTS = ("words", "gaps", "block_starts", "lut", "raw")
STORED_PARTS = ("words", "gaps", "block_starts", "raw")  # the decode table is rebuilt from the code lengths


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


class DFloatError(ValueError):
    """A compressed payload or its header is malformed, corrupted or truncated."""


class DFloatTensor:
    """A bf16 tensor stored entropy-coded (EKDF); see the module docstring.

    Build with :meth:`compress` (or :meth:`from_state_dict` / :func:`load_file`); get the values
    back with :meth:`decompress`. ``payload()`` are the 5 arrays the decoder reads; they live on
    ``device``.

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
        self.shape = tuple(int(s) for s in shape)
        self.numel = math.prod(self.shape)
        self.total_bits = int(total_bits)
        self.max_block_values = int(max_block_values)
        self.checksum = int(checksum) & 0xFFFFFFFF
        self.code_lengths = [int(v) for v in code_lengths]
        self.exponent_hist = [int(v) for v in exponent_hist]
        self.payload_crc32 = int(payload_crc32) & 0xFFFFFFFF
        _ops.check_payload(*self.payload(), *self.sizes())

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
        numel = tensor.numel()
        if not isinstance(threads, int) or threads < 0:
            raise ValueError(f"threads must be an int >= 0, got {threads!r}")
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
        return self.numel, self.total_bits, self.max_block_values

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
            if out is None:
                out = torch.empty(self.shape, dtype=torch.bfloat16, device=src.device)
            else:
                _ops.check_out(out, self.numel, src.device)
            _ops.launch(out, src._launch_args())
            return out if out.shape == self.shape else out.view(self.shape)
        if out is None:
            return _ops.decompress(*src.payload(), *src.sizes()).view(self.shape)
        flat = out.view(-1) if out.is_contiguous() else out
        _ops.decompress(*src.payload(), *src.sizes(), out=flat)
        return out.view(self.shape)

    def _launch_args(self) -> tuple:
        """``ops.dfloat.launch_args`` of the payload, computed (and the payload checked) again
        only when one of the five arrays has been replaced or moved to other memory since the
        last call (its identity or its data pointer changed: a copy of this object, a ``.data``
        swap, ``share_memory_()``)."""
        payload = self.payload()
        pointers = tuple(t.data_ptr() for t in payload)
        cached = self.__dict__.get("_launch_cache")
        if cached is None or cached[1] != pointers or any(a is not b for a, b in zip(cached[0], payload)):
            _ops.check_payload(*payload, *self.sizes())
            cached = (payload, pointers, _ops.launch_args(*payload, *self.sizes()))
            self._launch_cache = cached
        return cached[2]

    def __getstate__(self) -> dict:
        # pickle / deepcopy / torch.save: the cached raw pointers belong to this object's memory
        state = dict(self.__dict__)
        state.pop("_launch_cache", None)
        return state

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
        return dict(shape=self.shape, total_bits=self.total_bits, max_block_values=self.max_block_values,
                    checksum=self.checksum,
                    code_lengths=self.code_lengths, exponent_hist=self.exponent_hist,
                    payload_crc32=self.payload_crc32)

    def header(self) -> dict:
        """JSON-able header: magic, version, dtype, shape, code table, sizes and checksums."""
        return {"magic": FORMAT_MAGIC, "version": FORMAT_VERSION, "dtype": "bfloat16", "shape": list(self.shape),
                "total_bits": self.total_bits, "max_block_values": self.max_block_values,
                "max_code_len": MAX_CODE_LEN, "num_words": self.words.numel(),
                "checksum": self.checksum, "payload_crc32": self.payload_crc32,
                "code_lengths": _sparse(self.code_lengths), "exponent_hist": _sparse(self.exponent_hist)}

    def state_dict(self) -> Tuple[Dict[str, torch.Tensor], dict]:
        """``({part: tensor}, header)`` -- what :func:`save_file` writes for one tensor (the 8 KB
        decode table is not stored: it is rebuilt from the code lengths in the header)."""
        parts = dict(zip(PARTS, self.payload()))
        return {p: parts[p] for p in STORED_PARTS}, self.header()

    @classmethod
    def from_state_dict(cls, tensors: Dict[str, torch.Tensor], header: dict, validate: bool = True) -> "DFloatTensor":
        """Rebuild from :meth:`state_dict` output; ``validate`` checks everything first (see :meth:`validate`).

        Example
        -------
        >>> import torch
        >>> x = torch.randn(50).to(torch.bfloat16)
        >>> parts, header = DFloatTensor.compress(x).state_dict()
        >>> torch.equal(DFloatTensor.from_state_dict(parts, header).decompress(), x)
        True
        """
        if not isinstance(header, dict) or header.get("magic") != FORMAT_MAGIC:
            raise DFloatError(f"not an EKDF header (magic {header.get('magic') if isinstance(header, dict) else None!r})")
        if header.get("version") != FORMAT_VERSION:
            raise DFloatError(f"unsupported EKDF version {header.get('version')!r} (this build reads {FORMAT_VERSION})")
        if header.get("dtype") != "bfloat16" or header.get("max_code_len") != MAX_CODE_LEN:
            raise DFloatError(f"unsupported dtype/code length in header: {header.get('dtype')!r}, "
                              f"{header.get('max_code_len')!r}")
        missing = [p for p in STORED_PARTS if p not in tensors]
        if missing:
            raise DFloatError(f"payload is missing {missing}")
        try:
            tensors = dict(tensors)
            if "lut" not in tensors:
                tensors["lut"] = _build_lut(_dense(header["code_lengths"])).to(tensors["words"].device)
            shape = [int(s) for s in header["shape"]]
            if any(s < 0 for s in shape):
                raise ValueError("negative dimension")
            obj = cls(**{p: tensors[p] for p in PARTS}, shape=shape, total_bits=int(header["total_bits"]),
                      max_block_values=int(header["max_block_values"]),
                      checksum=int(header["checksum"]), code_lengths=_dense(header["code_lengths"]),
                      exponent_hist=_dense(header["exponent_hist"]), payload_crc32=int(header["payload_crc32"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DFloatError(f"malformed EKDF payload or header: {exc}") from exc
        if int(header.get("num_words", -1)) != obj.words.numel():
            raise DFloatError(f"words has {obj.words.numel()} entries, header says {header.get('num_words')}")
        if validate:
            obj.validate()
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
    def load(cls, path: str, device="cpu") -> "DFloatTensor":
        """Read a file written by :meth:`save` (validated, then moved to ``device``)."""
        value = load_file(path, device=device).get("tensor")
        if not isinstance(value, DFloatTensor):
            raise DFloatError(f"{path} holds no EKDF tensor under the key 'tensor'")
        return value

    def validate(self) -> None:
        """Check the payload against its header: CRC32, index ranges, code lengths and decode
        table. Raises :class:`DFloatError`. Reads the payload on the host (a sync for GPU payloads).

        Example
        -------
        >>> import torch
        >>> c = DFloatTensor.compress(torch.randn(100).to(torch.bfloat16))
        >>> c.validate()
        >>> c.raw[3] ^= 1
        >>> c.validate()
        Traceback (most recent call last):
        ...
        entropy_kernels.decoding.dfloat.DFloatError: payload CRC32 mismatch (corrupted or truncated data)
        """
        if _crc32([self.words, self.gaps, self.block_starts, self.raw]) != self.payload_crc32:
            raise DFloatError("payload CRC32 mismatch (corrupted or truncated data)")
        lengths = self.code_lengths
        if len(lengths) != 256 or any(not (0 <= v <= MAX_CODE_LEN) for v in lengths):
            raise DFloatError("code lengths must be 256 values in [0, 12]")
        if len(self.exponent_hist) != 256 or sum(self.exponent_hist) != self.numel:
            raise DFloatError("exponent histogram does not add up to numel")
        if _ref.kraft_sum(lengths) > 1.0:
            raise DFloatError("code lengths do not form a prefix code")
        if any(h > 0 and n == 0 for h, n in zip(self.exponent_hist, lengths)):
            raise DFloatError("an exponent that occurs has no code")
        if not torch.equal(_build_lut(lengths), self.lut.cpu()):
            raise DFloatError("decode table does not match the code lengths")
        starts = self.block_starts.cpu()
        if int(starts[0]) != 0 or int(starts[-1]) != self.numel or bool((starts[1:] < starts[:-1]).any()):
            raise DFloatError("block starts are not a non-decreasing range from 0 to numel")
        if starts.numel() > 1 and int((starts[1:] - starts[:-1]).max()) > self.max_block_values:
            raise DFloatError("a block holds more values than max_block_values")
        g = self.gaps.cpu()
        nibbles = torch.stack([g & 15, g >> 4], 1).reshape(-1)
        if bool(((nibbles >= _ref.MAX_CODE_LEN) & (nibbles != 15)).any()):
            raise DFloatError("segment gaps out of range")


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


def _dense(mapping) -> list:
    out = [0] * 256
    for k, v in dict(mapping).items():
        i = int(k)
        if not 0 <= i < 256:
            raise ValueError(f"symbol {i} out of range")
        out[i] = int(v)
    return out


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
    """Inverse of :func:`to_safetensors`: plain tensors and validated :class:`DFloatTensor` s."""
    headers = {}
    if metadata and "ekdf" in metadata:
        try:
            info = json.loads(metadata["ekdf"])
            headers = info["tensors"]
        except (ValueError, KeyError, TypeError) as exc:
            raise DFloatError(f"malformed EKDF metadata: {exc}") from exc
    out: Dict[str, object] = {}
    grouped: Dict[str, Dict[str, torch.Tensor]] = {}
    for key, t in flat.items():
        if SEP in key:
            name, part = key.split(SEP, 1)
            grouped.setdefault(name, {})[part] = t
        else:
            out[key] = t
    for name in set(grouped) | set(headers):
        if name not in headers:
            raise DFloatError(f"{name}: compressed payload without a header")
        out[name] = DFloatTensor.from_state_dict(grouped.get(name, {}), headers[name], validate=validate)
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


def load_file(path: str, device="cpu", validate: bool = True) -> Dict[str, object]:
    """Read a file written by :func:`save_file` (also a plain safetensors file); payloads are
    validated on the CPU, then moved to ``device``."""
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as f:
        metadata = f.metadata()
        flat = {k: f.get_tensor(k) for k in f.keys()}
    loaded = from_safetensors(flat, metadata, validate=validate)
    device = torch.device(device)
    return {k: (v.to(device) if isinstance(v, (DFloatTensor, torch.Tensor)) else v) for k, v in loaded.items()}


def read_metadata(path: str) -> Dict[str, str]:
    """The safetensors metadata of ``path`` (the EKDF headers are under ``"ekdf"``)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as f:
        return dict(f.metadata() or {})
