"""EKDF tensors in safetensors files: plain tensors and ``DFloatTensor`` s in one file.

A :class:`~entropy_kernels.decoding.DFloatTensor` named ``name`` is stored as its parts
``name.__ekdf__.<part>`` (plain integer tensors) plus its header, in the safetensors metadata key
``"ekdf"`` (``{"magic": "EKDF", "version": 1, "tensors": {name: header}}``); a reader that knows
nothing of EKDF still opens the file. Loading validates every payload before a decoder can see
it (:meth:`DFloatTensor.from_state_dict <entropy_kernels.decoding.DFloatTensor.from_state_dict>`).
Whole files and model directories are :mod:`entropy_kernels.decoding.dfloat_files`' job.

Example
-------
>>> import torch, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "t.safetensors")
>>> save_file({"w": DFloatTensor.compress(torch.ones(8, dtype=torch.bfloat16)), "b": torch.zeros(2)}, path)
>>> sorted(load_file(path)), read_metadata(path)["format"]
(['b', 'w'], 'pt')
"""

from __future__ import annotations

import json
from typing import Dict, Optional, Tuple

import torch

from .dfloat_format import FORMAT_MAGIC, FORMAT_VERSION, DFloatError, short
from .dfloat_tensor import DFloatTensor

SEP = ".__ekdf__."


def to_safetensors(tensors: Dict[str, object]) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """``(flat tensors, metadata)`` for ``safetensors.torch.save_file`` from a dict whose values
    are plain tensors or :class:`DFloatTensor` (stored as ``name.__ekdf__.<part>`` + a header in
    the metadata key ``"ekdf"``).

    Example
    -------
    >>> import torch
    >>> flat, meta = to_safetensors({"w": DFloatTensor.compress(torch.ones(3, dtype=torch.bfloat16))})
    >>> sorted(flat), sorted(meta)
    (['w.__ekdf__.block_starts', 'w.__ekdf__.gaps', 'w.__ekdf__.raw', 'w.__ekdf__.words'], ['ekdf', 'format'])
    """
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
            raise DFloatError(f"unsupported EKDF metadata version {short(info.get('version'))} "
                              f"(this build reads {FORMAT_VERSION})")
        headers = info.get("tensors")
        if not isinstance(headers, dict):
            raise DFloatError(f"malformed EKDF metadata: 'tensors' must be an object, got {short(headers)}")
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
    """The safetensors metadata of ``path`` (the EKDF headers are under ``"ekdf"``).

    Example
    -------
    >>> import torch, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "t.safetensors")
    >>> save_file({"b": torch.zeros(2)}, path, metadata={"origin": "test"})
    >>> read_metadata(path)["origin"]
    'test'
    """
    return dict(_read_safetensors(path, tensors=False)[0] or {})
