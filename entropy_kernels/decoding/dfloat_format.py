"""The EKDF header and its checks: fields, CRC32s, parsing, and the content validation of a payload.

A stored EKDF tensor is four integer arrays (:data:`STORED_PARTS`) plus a JSON header
(:data:`HEADER_FIELDS`); the decode table (``lut``) is rebuilt from the header's code lengths.
This module turns a header into checked constructor arguments (:func:`parse_header`,
:func:`payload_arguments`), writes the sparse fields (:func:`sparse`), computes the CRC32s
(:func:`header_crc32`, :func:`payload_crc32`) and checks a payload's content against its header
(:func:`check_content`). Everything raises :class:`DFloatError`, naming the field.
``docs/ekdf-integrity.md`` lists what is checked where.

Example
-------
>>> import torch
>>> from entropy_kernels.decoding import DFloatTensor
>>> parts, header = DFloatTensor.compress(torch.ones(6, dtype=torch.bfloat16)).state_dict()
>>> parse_header(header, check_crc=True)["shape"], payload_crc32(parts.values()) == header["payload_crc32"]
([6], True)
"""

from __future__ import annotations

import json
import math
import zlib
from typing import Dict, Iterable, Sequence

import torch

from ..ops import dfloat as _ops
from ..reference import dfloat as _ref

DFloatError = _ops.DFloatError  # defined with the op, which raises it too

FORMAT_MAGIC = "EKDF"
FORMAT_VERSION = 1
MAX_CODE_LEN = 12
PARTS = ("words", "gaps", "block_starts", "lut", "raw")
STORED_PARTS = ("words", "gaps", "block_starts", "raw")  # the decode table is rebuilt from the code lengths
# every field a version-1 header may have; "header_crc32" (CRC32 of the others) is written since
# it was added and is optional on reading, so files written before still load (and are verified
# by decoding them)
HEADER_FIELDS = ("magic", "version", "dtype", "shape", "total_bits", "max_block_values", "max_code_len",
                 "num_words", "checksum", "payload_crc32", "code_lengths", "exponent_hist", "header_crc32")


def payload_crc32(arrays: Iterable[torch.Tensor]) -> int:
    """CRC32 of the bytes of ``arrays`` in order (the stored parts: words, gaps, block_starts, raw).

    Example
    -------
    >>> payload_crc32([torch.zeros(4, dtype=torch.uint8)])
    558161692
    """
    crc = 0
    for a in arrays:
        crc = zlib.crc32(a.detach().cpu().contiguous().view(torch.uint8).numpy(), crc)  # no byte copy
    return crc & 0xFFFFFFFF


def header_crc32(header: dict) -> int:
    """CRC32 of an EKDF header's fields but ``header_crc32``, in a canonical JSON form (sorted
    keys, no spaces): what :meth:`DFloatTensor.header` stores as ``header_crc32``.

    Example
    -------
    >>> import torch
    >>> from entropy_kernels.decoding import DFloatTensor
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


def short(v) -> str:
    """``repr(v)`` cut to 40 characters, for error messages about untrusted header values.

    Example
    -------
    >>> short("x" * 100)
    "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx..."
    """
    try:
        text = repr(v)
    except ValueError:  # an int too long to print
        return f"<{type(v).__name__}>"
    return text if len(text) <= 40 else text[:37] + "..."


def _int(v, field: str, lo: int = 0, hi: int = _ops.MAX_INT) -> int:
    """A JSON integer in [lo, hi] (not a float, bool, string or null), else DFloatError naming ``field``."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise DFloatError(f"header field {field!r} must be an integer, got {short(v)}")
    if not lo <= v <= hi:
        raise DFloatError(f"header field {field!r} must be in [{lo}, {hi}], got {short(v)}")
    return v


def sparse(values: Sequence[int]) -> Dict[str, int]:
    """The ``{"symbol": value}`` header form of 256 per-exponent values (zeros left out).

    Example
    -------
    >>> sparse([0] * 127 + [3] + [0] * 128)
    {'127': 3}
    """
    return {str(i): int(v) for i, v in enumerate(values) if v}


def _dense(mapping, field: str, hi: int) -> list:
    """The 256 values of a sparse ``{"symbol": value}`` header field."""
    if not isinstance(mapping, dict):
        raise DFloatError(f"header field {field!r} must be an object, got {short(mapping)}")
    out = [0] * 256
    for k, v in mapping.items():
        if not (isinstance(k, str) and k.isascii() and k.isdigit() and k == str(int(k)) and int(k) < 256):
            raise DFloatError(f"header field {field!r}: symbol {short(k)} out of range")
        out[int(k)] = _int(v, f"{field}[{k}]", 0, hi)
    return out


def parse_header(header, check_crc: bool) -> dict:
    """``DFloatTensor`` keyword arguments (plus ``num_words``) from a header, every field checked
    for presence, JSON type and range; with ``check_crc``, ``header_crc32`` too when present.

    Example
    -------
    >>> parse_header({"magic": "EKDF", "version": 2}, check_crc=True)
    Traceback (most recent call last):
    ...
    entropy_kernels.ops.dfloat.DFloatError: unsupported EKDF version 2 (this build reads 1)
    """
    if not isinstance(header, dict) or header.get("magic") != FORMAT_MAGIC:
        raise DFloatError(f"not an EKDF header (magic {short(header.get('magic')) if isinstance(header, dict) else None})")
    version = header.get("version")
    if type(version) is not int or version != FORMAT_VERSION:  # not 1.0 or true either
        raise DFloatError(f"unsupported EKDF version {short(version)} (this build reads {FORMAT_VERSION})")
    unknown = sorted(str(k) for k in header if k not in HEADER_FIELDS)
    if unknown:
        raise DFloatError(f"unknown header fields {unknown[:5]}")
    missing = [k for k in HEADER_FIELDS if k not in header and k != "header_crc32"]
    if missing:
        raise DFloatError(f"header fields missing: {missing}")
    if header["dtype"] != "bfloat16" or type(header["max_code_len"]) is not int \
            or header["max_code_len"] != MAX_CODE_LEN:
        raise DFloatError(f"unsupported dtype/code length in header: {short(header['dtype'])}, "
                          f"{short(header['max_code_len'])}")
    shape = header["shape"]
    if not isinstance(shape, list) or len(shape) > 64:
        raise DFloatError(f"header field 'shape' must be a list of at most 64 integers, got {short(shape)}")
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


def payload_arguments(tensors, header, check_crc: bool) -> dict:
    """Every ``DFloatTensor`` keyword argument from stored parts and their header: the header
    parsed (:func:`parse_header`), the parts checked by name and type, the decode table rebuilt
    from the code lengths when it is not given, ``words`` sized as the header's ``num_words``.

    Example
    -------
    >>> import torch
    >>> from entropy_kernels.decoding import DFloatTensor
    >>> parts, header = DFloatTensor.compress(torch.ones(6, dtype=torch.bfloat16)).state_dict()
    >>> sorted(payload_arguments(parts, header, check_crc=True))[:4]
    ['block_starts', 'checksum', 'code_lengths', 'exponent_hist']
    >>> payload_arguments({"words": parts["words"]}, header, check_crc=True)
    Traceback (most recent call last):
    ...
    entropy_kernels.ops.dfloat.DFloatError: payload is missing ['gaps', 'block_starts', 'raw']
    """
    fields = parse_header(header, check_crc=check_crc)
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
        tensors["lut"] = build_lut(fields["code_lengths"]).to(tensors["words"].device)
    if fields["num_words"] != tensors["words"].numel():
        raise DFloatError(f"words has {tensors['words'].numel()} entries, header field 'num_words' says "
                          f"{fields['num_words']}")
    del fields["num_words"]
    return {**{p: tensors[p] for p in PARTS}, **fields}


def build_lut(lengths: Sequence[int]) -> torch.Tensor:
    """The int16[4096] decode table of a canonical prefix code with these 256 code lengths.

    Example
    -------
    >>> lut = build_lut([0] * 127 + [1] + [0] * 128)  # one symbol, a 1-bit code
    >>> lut.shape, int(lut[0]) == (1 << 8 | 127)
    (torch.Size([4096]), True)
    """
    if len(lengths) != 256 or any(not (0 <= int(v) <= MAX_CODE_LEN) for v in lengths):
        raise DFloatError("code lengths must be 256 values in [0, 12]")
    if _ref.kraft_sum(lengths) > 1.0:
        raise DFloatError("code lengths do not form a prefix code")
    lut = torch.empty(_ops.LUT_SIZE, dtype=torch.int16)
    lengths_t = torch.tensor([int(v) for v in lengths], dtype=torch.uint8)  # kept alive across the call
    _ops.extension().dfloat_build_lut(lengths_t.data_ptr(), lut.data_ptr())
    return lut


def check_shape(shape: Sequence[int], numel: int) -> None:
    """Raise :class:`DFloatError` unless ``shape`` holds exactly ``numel`` values.

    Example
    -------
    >>> check_shape((2, 3), 5)
    Traceback (most recent call last):
    ...
    entropy_kernels.ops.dfloat.DFloatError: shape (2, 3) does not hold numel=5 values
    """
    if math.prod(shape) != numel:
        raise DFloatError(f"shape {shape} does not hold numel={numel} values")


def check_content(t) -> None:
    """Check the payload of a ``DFloatTensor`` against its header without decoding it: what
    :meth:`DFloatTensor.validate` checks (see there), the verifying decode aside.

    Example
    -------
    >>> import torch
    >>> from entropy_kernels.decoding import DFloatTensor
    >>> c = DFloatTensor.compress(torch.randn(100).to(torch.bfloat16))
    >>> check_content(c)
    >>> c.gaps[0] = 0xCC
    >>> check_content(c)
    Traceback (most recent call last):
    ...
    entropy_kernels.ops.dfloat.DFloatError: payload CRC32 mismatch (corrupted or truncated data)
    """
    if payload_crc32([t.words, t.gaps, t.block_starts, t.raw]) != t.payload_crc32:
        raise DFloatError("payload CRC32 mismatch (corrupted or truncated data)")
    check_shape(t.shape, t.numel)
    lengths, hist, numel = t.code_lengths, t.exponent_hist, t.numel
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
    coded_bits = sum(h * n for h, n in zip(hist, lengths))
    if t.total_bits != coded_bits:
        raise DFloatError(f"total_bits is {t.total_bits}, the code lengths and histogram give {coded_bits}")
    if not torch.equal(build_lut(lengths), t.lut.cpu()):
        raise DFloatError("decode table does not match the code lengths")
    starts = t.block_starts.cpu()
    if int(starts[0]) != 0 or int(starts[-1]) != numel or bool((starts[1:] < starts[:-1]).any()):
        raise DFloatError("block starts are not a non-decreasing range from 0 to numel")
    most = int((starts[1:] - starts[:-1]).max()) if starts.numel() > 1 else 0
    if most != t.max_block_values:
        raise DFloatError(f"max_block_values is {t.max_block_values}, the largest block holds {most}")
    g = t.gaps.cpu()
    nibbles = torch.stack([g & 15, g >> 4], 1).reshape(-1)
    if bool(((nibbles >= _ref.MAX_CODE_LEN) & (nibbles != 15)).any()):
        raise DFloatError("segment gaps out of range")
