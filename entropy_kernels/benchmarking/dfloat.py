"""Benchmark cases for EKDF decoding (:meth:`DFloatTensor.decompress`; 16.8M bf16
values from N(0, 0.02), plus a small tensor and a 1 GiB one).

Baseline: dfloat11's shipped decode kernel (when ``dfloat11`` and ``cupy`` import; its Python
encoder is slow, so only on the 16.8M tensor). Floor: a device copy of the bf16 tensor (reads
and writes 2 bytes per value; the decoder reads ~1.33 and writes 2).
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import List

import torch

from ..decoding.dfloat import DFloatTensor
from .cases import Case, Provider

ANCHOR = 16_777_216
FULL = [ANCHOR, 262_144, 536_870_912]
QUICK = {"cpu": [65_536], "cuda": [ANCHOR]}


def weights(n: int, device, seed: int = 0) -> torch.Tensor:
    """``n`` bf16 values from N(0, 0.02), like LLM weights (the test tensor of the size tables).

    Example
    -------
    >>> weights(4, "cpu").dtype
    torch.bfloat16
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.randn(n, generator=g) * 0.02).to(torch.bfloat16).to(device)


def _ours(case: Case):
    c = DFloatTensor.compress(weights(case.shape["N"], "cpu")).to(case.device)
    out = torch.empty(c.numel, dtype=torch.bfloat16, device=case.device)
    return (lambda: c.decompress(out=out)), []


def dfloat11_available() -> bool:
    try:
        import cupy  # noqa: F401
        import dfloat11  # noqa: F401
    except Exception:
        return False
    return True


def dfloat11_encode(x: torch.Tensor, device):
    """dfloat11's own encoder + decode launcher for one bf16 tensor: ``(decode_fn, compressed_bytes)``."""
    import cupy as cp
    from dfloat11 import dfloat11 as df
    from dfloat11.dfloat11_utils import (
        encode_weights,
        get_32bit_codec,
        get_codec,
        get_luts,
    )

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        _, counter = get_codec(x)
        codec, _, table = get_32bit_codec(counter)
        luts = get_luts(table)
        encoded, other, positions, gaps, _ = encode_weights([x.reshape(-1)], codec, df.bytes_per_thread,
                                                            df.threads_per_block[0])
    size = sum(t.numel() * t.element_size() for t in (encoded, other, positions, gaps, luts))
    luts, encoded, other, gaps = (t.to(device) for t in (luts, encoded, other, gaps))
    pos_np = positions.numpy()
    shared = df.threads_per_block[0] * 4 + 4 + int((pos_np[1:] - pos_np[:-1]).max()) * 2
    positions = positions.view(torch.uint8).to(device)
    n, n_bytes, n_luts = x.numel(), encoded.numel(), luts.shape[0]
    out = torch.empty(n, dtype=torch.bfloat16, device=device)
    grid = (int(math.ceil(n_bytes / (df.threads_per_block[0] * df.bytes_per_thread))),)

    def decode():
        with cp.cuda.Device(out.device.index), cp.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
            df._decode(grid=grid, block=df.threads_per_block, shared_mem=shared,
                       args=[luts.data_ptr(), encoded.data_ptr(), other.data_ptr(), positions.data_ptr(),
                             gaps.data_ptr(), out.data_ptr(), n_luts, n_bytes, n])
        return out

    return decode, size


def _dfloat11(case: Case):
    decode, _ = dfloat11_encode(weights(case.shape["N"], "cpu"), case.device)
    return decode, []


def _copy_floor(case: Case):
    x = weights(case.shape["N"], case.device)
    dst = torch.empty_like(x)
    return (lambda: dst.copy_(x)), []


def _providers(n: int, device: torch.device) -> List[Provider]:
    out = [Provider("entropy_kernels", "ours", _ours)]
    if device.type == "cuda" and n == ANCHOR:
        out.append(Provider("dfloat11", "baseline", _dfloat11, available=lambda case: dfloat11_available()))
    out.append(Provider("floor: copy", "floor", _copy_floor))
    return out


def dfloat_cases(size: str, device: torch.device) -> List[Case]:
    sizes = FULL if size == "full" else QUICK["cuda" if device.type == "cuda" else "cpu"]
    cases = []
    for n in sizes:
        case = Case("dfloat_decompress", "fwd", {"N": n}, torch.bfloat16, device)
        case.providers = [p for p in _providers(n, device) if p.available(case)]
        cases.append(case)
    return cases
