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

This module gathers the public names; each piece has its own module:
:mod:`~entropy_kernels.decoding.dfloat_tensor` (the class),
:mod:`~entropy_kernels.decoding.dfloat_encode` (the encoder),
:mod:`~entropy_kernels.decoding.dfloat_format` (header fields, CRC32s, validation),
:mod:`~entropy_kernels.decoding.dfloat_safetensors` (safetensors files) and
:mod:`~entropy_kernels.decoding.dfloat_files` (whole files and model directories, the CLI).

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

# The pieces, one module each; every name stays importable from here, where users import it.
from .dfloat_encode import MAX_THREADS, encode
from .dfloat_format import (
    FORMAT_MAGIC,
    FORMAT_VERSION,
    HEADER_FIELDS,
    MAX_CODE_LEN,
    PARTS,
    STORED_PARTS,
    DFloatError,
    header_crc32,
)
from .dfloat_format import payload_crc32 as _crc32  # its name before the split (tests use it)
from .dfloat_safetensors import SEP, from_safetensors, load_file, read_metadata, save_file, to_safetensors
from .dfloat_tensor import DFloatTensor

__all__ = ["DFloatError", "DFloatTensor", "FORMAT_MAGIC", "FORMAT_VERSION", "HEADER_FIELDS", "MAX_CODE_LEN",
           "MAX_THREADS", "PARTS", "SEP", "STORED_PARTS", "encode", "from_safetensors", "header_crc32", "load_file",
           "read_metadata", "save_file", "to_safetensors"]
