"""EKDF for safetensors files and model directories (what ``entropy-kernels compress |
decompress | inspect`` run).

- :func:`compress_path` turns a safetensors file, or every ``*.safetensors`` file of a directory
  (other files are copied), into the same names with the bf16 tensors of at least
  ``min_numel`` values EKDF-coded; the original safetensors metadata is kept.
- :func:`decompress_path` restores plain safetensors files, bit-identical tensor by tensor.
- :func:`inspect_path` lists each tensor's size, bits per value and the exponent entropy bound.

Example
-------
>>> import os, tempfile, torch
>>> from safetensors.torch import save_file, load_file
>>> d = tempfile.mkdtemp()
>>> w = (torch.randn(512, 512) * 0.02).to(torch.bfloat16)
>>> save_file({"w": w, "b": torch.zeros(4)}, os.path.join(d, "m.safetensors"))
>>> stats = compress_path(os.path.join(d, "m.safetensors"), os.path.join(d, "c.safetensors"), progress=False)
>>> stats["tensors_compressed"], stats["ratio"] < 0.7
(1, True)
>>> _ = decompress_path(os.path.join(d, "c.safetensors"), os.path.join(d, "r.safetensors"), progress=False)
>>> torch.equal(load_file(os.path.join(d, "r.safetensors"))["w"], w)
True
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Dict, List

import torch

from .compressed_model import _progress
from .dfloat import DFloatTensor, load_file, read_metadata, save_file


def _files(src: str, dst: str) -> List[tuple]:
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
        pairs = []
        for name in sorted(os.listdir(src)):
            s, d = os.path.join(src, name), os.path.join(dst, name)
            if name.endswith(".safetensors"):
                pairs.append((s, d))
            elif os.path.isfile(s):
                shutil.copy2(s, d)
        if not pairs:
            raise FileNotFoundError(f"no *.safetensors file in {src}")
        return pairs
    if not os.path.isfile(src):
        raise FileNotFoundError(f"{src} is neither a file nor a directory")
    if os.path.dirname(dst):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
    return [(src, dst)]


def _plain_metadata(path: str) -> Dict[str, str]:
    return {k: v for k, v in read_metadata(path).items() if k not in ("ekdf", "format")}


def compress_path(src: str, dst: str, min_numel: int = 65536, threads: int = 0, progress: bool = True) -> dict:
    """Compress a safetensors file or a directory of them (see the module docstring).

    Returns totals: ``tensors``, ``tensors_compressed``, ``original_bytes`` / ``compressed_bytes``
    (all tensors), ``ratio``, ``bf16_bits_per_value`` and ``bound_bits_per_value`` (over the
    compressed tensors: achieved vs ``8 + H(exponent)``), ``seconds``.
    """
    start = time.perf_counter()
    totals = {"tensors": 0, "tensors_compressed": 0, "original_bytes": 0, "compressed_bytes": 0}
    coded_values = coded_bytes = bound_bits = 0.0
    for s, d in _files(src, dst):
        tensors = load_file(s)
        out: Dict[str, object] = {}
        for name, t in _progress(list(tensors.items()), len(tensors), os.path.basename(s), progress):
            totals["tensors"] += 1
            if isinstance(t, DFloatTensor):
                raise ValueError(f"{s}: {name} is already EKDF-compressed")
            size = t.numel() * t.element_size()
            totals["original_bytes"] += size
            if t.dtype == torch.bfloat16 and t.numel() >= min_numel:
                c = DFloatTensor.compress(t, threads=threads)
                out[name] = c
                totals["tensors_compressed"] += 1
                totals["compressed_bytes"] += c.nbytes
                coded_values += c.numel
                coded_bytes += c.nbytes
                bound_bits += c.entropy_bound_bits * c.numel
            else:
                out[name] = t
                totals["compressed_bytes"] += size
        save_file(out, d, metadata=_plain_metadata(s))
    totals["ratio"] = totals["compressed_bytes"] / max(1, totals["original_bytes"])
    totals["bf16_bits_per_value"] = 8 * coded_bytes / coded_values if coded_values else None
    totals["bound_bits_per_value"] = bound_bits / coded_values if coded_values else None
    totals["seconds"] = time.perf_counter() - start
    return totals


def decompress_path(src: str, dst: str, progress: bool = True) -> dict:
    """Restore plain safetensors file(s) from :func:`compress_path` output (bit-identical)."""
    start = time.perf_counter()
    count = 0
    for s, d in _files(src, dst):
        tensors = load_file(s)
        plain = {}
        for name, t in _progress(list(tensors.items()), len(tensors), os.path.basename(s), progress):
            plain[name] = t.decompress() if isinstance(t, DFloatTensor) else t
            count += 1
        from safetensors.torch import save_file as _save

        _save({k: v.contiguous() for k, v in plain.items()}, d, metadata=_plain_metadata(s) or None)
    return {"tensors": count, "seconds": time.perf_counter() - start}


def inspect_path(path: str) -> List[dict]:
    """One row per tensor: ``name, file, shape, dtype, ekdf, bytes, bits_per_value, bound_bits``."""
    rows = []
    files = [os.path.join(path, f) for f in sorted(os.listdir(path)) if f.endswith(".safetensors")] \
        if os.path.isdir(path) else [path]
    for f in files:
        for name, t in load_file(f).items():
            if isinstance(t, DFloatTensor):
                rows.append({"name": name, "file": os.path.basename(f), "shape": list(t.shape), "dtype": "bfloat16",
                             "ekdf": True, "bytes": t.nbytes, "bits_per_value": t.bits_per_value,
                             "bound_bits": t.entropy_bound_bits})
            else:
                rows.append({"name": name, "file": os.path.basename(f), "shape": list(t.shape),
                             "dtype": str(t.dtype).replace("torch.", ""), "ekdf": False,
                             "bytes": t.numel() * t.element_size(), "bits_per_value": 8.0 * t.element_size(),
                             "bound_bits": None})
    return rows
