"""Readable reference of the EKDF format (entropy-coded BF16): sizes, entropy bound, decoder.

The compiled encoder/decoders (``csrc/dfloat*.{h,cpp,cu}``) are the fast path; this module is
the format written out in Python so the tests can check the compiled encoder against the
documented layout independently of the compiled decoders. Layout (see ``csrc/dfloat.h``):

- ``raw[i]`` = sign bit << 7 | 7 mantissa bits of value ``i``; the 8 exponent bits are coded
  with a canonical prefix code of lengths <= 12, decoded by ``lut[next 12 bits]`` =
  ``len << 8 | exponent``.
- all codes form one bit stream (value order, MSB-first in 32-bit words); segment ``k`` is
  stream bits ``[256k, 256k + 256)``, ``gaps`` holds (4 bits each) where its first code starts,
  ``block_starts[b]`` the index of the first value coded in segments ``[256b, 256b + 256)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

MAX_CODE_LEN = 12
SEGMENT_BITS = 256
BLOCK_SEGMENTS = 256


def split_bf16(t: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(exponent, raw)`` uint8 arrays of a bf16 tensor: its 8 exponent bits and sign|mantissa.

    Example
    -------
    >>> e, r = split_bf16(torch.tensor([1.0, -2.0], dtype=torch.bfloat16))
    >>> e.tolist(), r.tolist()
    ([127, 128], [0, 128])
    """
    bits = t.detach().reshape(-1).cpu().contiguous().view(torch.int16).numpy().view(np.uint16)
    exponent = ((bits >> 7) & 0xFF).astype(np.uint8)
    raw = (((bits >> 8) & 0x80) | (bits & 0x7F)).astype(np.uint8)
    return exponent, raw


def exponent_histogram(t: torch.Tensor) -> np.ndarray:
    """int64[256] counts of the exponent values of a bf16 tensor.

    Example
    -------
    >>> int(exponent_histogram(torch.ones(5, dtype=torch.bfloat16))[127])
    5
    """
    return np.bincount(split_bf16(t)[0], minlength=256).astype(np.int64)


def exponent_entropy_bits(hist) -> float:
    """Shannon entropy (bits per value) of the exponent distribution ``hist`` (256 counts).

    Example
    -------
    >>> exponent_entropy_bits([1, 1, 1, 1] + [0] * 252)
    2.0
    """
    counts = np.asarray(hist, dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum()) + 0.0


def entropy_bound_bytes(hist) -> float:
    """Fewest bytes any exponent coder can reach for these values: ``n·(8 + H(exponent)) / 8``
    (the raw sign|mantissa byte plus the Shannon bound of the exponent).

    Example
    -------
    >>> entropy_bound_bytes([4, 4] + [0] * 254)  # 8 values, 1 bit of exponent entropy each
    9.0
    """
    n = float(np.asarray(hist).sum())
    return n * (8.0 + exponent_entropy_bits(hist)) / 8.0


def kraft_sum(lengths) -> float:
    """``Σ 2^-len`` over used symbols: 1 for a complete prefix code, <= 1 for any prefix code.

    Example
    -------
    >>> kraft_sum([1, 2, 2] + [0] * 253)
    1.0
    """
    return float(sum(math.ldexp(1.0, -int(n)) for n in lengths if n > 0))


def decode_reference(words, gaps, block_starts, lut, raw, numel: int, total_bits: int) -> torch.Tensor:
    """Decode an EKDF payload the way the GPU does, segment by segment from each segment's gap,
    and check the index on the way (slow; for tests on small inputs).

    Arguments are the payload arrays (CPU); returns bf16 ``[numel]``. Raises AssertionError if the
    segment counts disagree with ``block_starts``.

    Example
    -------
    >>> from entropy_kernels.decoding import DFloatTensor
    >>> x = torch.randn(300).to(torch.bfloat16)
    >>> c = DFloatTensor.compress(x)
    >>> y = decode_reference(c.words, c.gaps, c.block_starts, c.lut, c.raw, c.numel, c.total_bits)
    >>> torch.equal(y.view(torch.int16), x.view(torch.int16))
    True
    """
    w = [int(v) & 0xFFFFFFFF for v in np.asarray(words).reshape(-1).tolist()]
    g = [int(v) for v in np.asarray(gaps).reshape(-1).tolist()]
    starts = [int(v) for v in np.asarray(block_starts).reshape(-1).tolist()]
    table = [int(v) & 0xFFFF for v in np.asarray(lut).reshape(-1).tolist()]
    raw_b = np.asarray(raw).reshape(-1).astype(np.uint16)
    exponents = []

    def bits_at(pos: int, count: int) -> int:  # `count` stream bits from bit `pos`, MSB first
        out = 0
        for q in range(pos, pos + count):
            word = w[q >> 5] if (q >> 5) < len(w) else 0
            out = (out << 1) | ((word >> (31 - (q & 31))) & 1)
        return out

    segments = -(-total_bits // SEGMENT_BITS)
    for k in range(segments):
        if k % BLOCK_SEGMENTS == 0:
            assert len(exponents) == starts[k // BLOCK_SEGMENTS], "block_starts disagrees with the stream"
        gap = (g[k // 2] >> (4 * (k % 2))) & 15
        pos, limit = k * SEGMENT_BITS + gap, min((k + 1) * SEGMENT_BITS, total_bits)
        while pos < limit:
            entry = table[bits_at(pos, MAX_CODE_LEN)]
            exponents.append(entry & 0xFF)
            pos += (entry >> 8) & 15
    assert len(exponents) == numel == starts[-1], "stream holds a different number of values"
    e = np.asarray(exponents, dtype=np.uint16)
    out = ((raw_b & 0x80) << 8) | (e << 7) | (raw_b & 0x7F)
    return torch.from_numpy(out.astype(np.uint16).view(np.int16).copy()).view(torch.bfloat16)
