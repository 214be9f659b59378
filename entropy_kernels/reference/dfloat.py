"""Readable reference of the EKDF format (entropy-coded BF16): sizes, entropy bound, decoder.

The compiled encoder/decoders (``csrc/dfloat*.{h,cpp,cu}``) are the fast path; this module is
the format written out in Python so the tests can check the compiled encoder against the
documented layout independently of the compiled decoders. Layout (see ``csrc/dfloat.h``):

- ``raw[i]`` = sign bit << 7 | 7 mantissa bits of value ``i``; the 8 exponent bits are coded
  with a canonical prefix code of lengths <= 12, decoded by ``lut[next 12 bits]`` =
  ``len << 8 | exponent``.
- chunk ``c`` (32·S values), lane ``l``: values ``c·32·S + k·256 + l·8 + j``; values with
  ``j < 4`` are coded in a stream read forward from the lane's first word, ``j >= 4`` in a
  stream read backward from its last word; bits are MSB-first inside 32-bit words.
"""

from __future__ import annotations

import math

import numpy as np
import torch

MAX_CODE_LEN = 12
LANES = 32
GROUP = 8


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


def decode_reference(words, chunk_offsets, lane_offsets, lut, raw, numel: int, stream_values: int) -> torch.Tensor:
    """Decode an EKDF payload value by value, exactly as ``csrc/dfloat.h`` specifies (slow).

    Arguments are the payload arrays (any integer dtype, CPU); returns bf16 ``[numel]``.

    Example
    -------
    >>> from entropy_kernels.decoding import DFloatTensor
    >>> x = torch.randn(300).to(torch.bfloat16)
    >>> c = DFloatTensor.compress(x)
    >>> y = decode_reference(c.words, c.chunk_offsets, c.lane_offsets, c.lut, c.raw, c.numel, c.stream_values)
    >>> torch.equal(y.view(torch.int16), x.view(torch.int16))
    True
    """
    w = [int(v) & 0xFFFFFFFF for v in np.asarray(words).reshape(-1).tolist()]
    chunk_off = [int(v) for v in np.asarray(chunk_offsets).reshape(-1).tolist()]
    lane_off = [int(v) & 0xFFFF for v in np.asarray(lane_offsets).reshape(-1).tolist()]
    table = [int(v) & 0xFFFF for v in np.asarray(lut).reshape(-1).tolist()]
    raw_b = np.asarray(raw).reshape(-1).astype(np.uint16)
    out = np.zeros(numel, dtype=np.uint16)
    s = stream_values

    def word(i: int) -> int:
        return w[min(max(i, 0), len(w) - 1)]

    for c in range(len(chunk_off) - 1):
        for lane in range(LANES):
            begin = chunk_off[c] + lane_off[c * LANES + lane]
            end = chunk_off[c] + lane_off[c * LANES + lane + 1] if lane + 1 < LANES else chunk_off[c + 1]
            streams = []  # [buffer, valid bits, next word position, step] for forward/backward
            for first, step in ((begin, 1), (end - 1, -1)):
                streams.append([(word(first) << 32) | word(first + step), 64, first + 2 * step, step])
            for k in range(s // GROUP):
                for j in range(GROUP):
                    i = c * LANES * s + k * LANES * GROUP + lane * GROUP + j
                    if i >= numel:
                        break
                    st = streams[j // 4]
                    entry = table[st[0] >> (64 - MAX_CODE_LEN)]
                    length, exponent = (entry >> 8) & 15, entry & 0xFF
                    st[0] = (st[0] << length) & 0xFFFFFFFFFFFFFFFF
                    st[1] -= length
                    if st[1] < 32:
                        st[0] |= word(st[2]) << (32 - st[1])
                        st[2] += st[3]
                        st[1] += 32
                    r = int(raw_b[i])
                    out[i] = ((r & 0x80) << 8) | (exponent << 7) | (r & 0x7F)
    return torch.from_numpy(out.view(np.int16).copy()).view(torch.bfloat16)
