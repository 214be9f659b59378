"""Models with entropy-coded (EKDF) weights: compress in place, save, load, run bit-identically.

:func:`compress_model` replaces the ``weight`` of every ``nn.Linear`` / ``nn.Embedding`` in bf16
(above a size threshold) with a :class:`~entropy_kernels.decoding.DFloatTensor` kept on the
weight's device, and installs forward pre-hooks that decode just in time:

- ``group_by="block"`` (default): the weights of one transformer block (an element of the
  model's largest ``nn.ModuleList`` of modules holding such weights) are decoded together, before
  the block runs, into one buffer shared by all blocks; modules outside the blocks (embeddings,
  LM head) decode into the same buffer before they run.
- ``group_by="module"``: each module decodes its own weight before it runs, into the buffer.

With ``fused_linear=True`` (opt-in until a GPU run of the probe has measured and checked the
fused kernel), plain ``nn.Linear`` modules become :class:`EKDFLinear`: they
are left out of the group decode and decode in their own forward, and only when the input has
more than 16 rows -- a smaller input is multiplied straight from the coded weight
(:meth:`DFloatTensor.linear`; on CUDA one fused kernel, the weight never decoded to memory).

Between forwards a module's ``weight`` is a view of that shared buffer (right shape, dtype and
device; its values are only meaningful while the module runs). This is for inference
(``torch.no_grad()``): autograd would keep references to a buffer that the next block overwrites.
Outputs are bit-identical to the uncompressed model, since the decoded weights are.

:func:`save_compressed` writes ``config.json`` (transformers models) and one safetensors file
with the compressed weights, every other parameter and every buffer; :func:`load_compressed`
rebuilds the model on the ``meta`` device and fills it from that file, never materialising the
uncompressed weights.

Example
-------
>>> import torch
>>> from entropy_kernels.decoding import compress_model
>>> net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).to(torch.bfloat16)
>>> x = torch.randn(3, 64, dtype=torch.bfloat16)
>>> before = net(x)
>>> stats = compress_model(net, min_numel=0, progress=False)
>>> torch.equal(net(x), before), stats["modules"]
(True, 2)
"""

from __future__ import annotations

import json
import os
import time
from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.dfloat_linear import MAX_FUSED_ROWS
from .dfloat_safetensors import load_file, save_file
from .dfloat_tensor import DFloatTensor

WEIGHTS_FILE = "model.ekdf.safetensors"
META_KEY = "ekdf_model"
_ALIGN = 8  # elements (16 bytes of bf16): each decoded weight starts 16-byte aligned in the buffer


def _progress(items, total: int, desc: str, enabled: bool):
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with transformers
        return items
    return tqdm(items, total=total, desc=desc, unit="tensor")


def _targets(model: nn.Module, min_numel: int) -> List[Tuple[str, nn.Module]]:
    out = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)) and "weight" in module._parameters:
            w = module._parameters["weight"]
            if w is not None and w.dtype == torch.bfloat16 and w.numel() >= min_numel and w.device.type != "meta":
                out.append((name, module))
    return out


def _blocks(model: nn.Module, targets: Iterable[nn.Module]) -> List[nn.Module]:
    """Elements of the ModuleList holding the most target weights (the transformer blocks)."""
    target_ids = {id(m) for m in targets}
    best, best_numel = [], 0
    for module in model.modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        numel = sum(m._ekdf_weight.numel for block in module for m in block.modules() if id(m) in target_ids)
        if numel > best_numel:
            best, best_numel = list(module), numel
    return best


class _DecodeBuffers:
    """One bf16 buffer per device, grown to the largest group; shared by every group."""

    def __init__(self):
        self.buffers: Dict[torch.device, torch.Tensor] = {}

    def reserve(self, device: torch.device, numel: int) -> None:
        have = self.buffers.get(device)
        if have is None or have.numel() < numel:
            self.buffers[device] = torch.empty(numel, dtype=torch.bfloat16, device=device)

    def get(self, device: torch.device) -> torch.Tensor:
        return self.buffers[device]


def _group_layout(members: List[nn.Module]) -> Tuple[List[int], int]:
    offsets, total = [], 0
    for m in members:
        offsets.append(total)
        total += -(-m._ekdf_weight.numel // _ALIGN) * _ALIGN
    return offsets, total


class EKDFLinear(nn.Linear):
    """An ``nn.Linear`` whose weight is EKDF-coded (what :func:`compress_model` turns a plain
    ``nn.Linear`` into with ``fused_linear=True``). An input of at most
    :data:`~entropy_kernels.ops.dfloat_linear.MAX_FUSED_ROWS` rows (all dimensions but the last
    flattened, counted per call) goes to :meth:`DFloatTensor.linear` -- on CUDA a kernel that
    decodes and multiplies at once, the weight never decoded to memory; a larger one, or one that
    needs gradients or is not bf16, decodes the weight into its slice of the shared buffer first
    and calls ``F.linear``, as the other compressed modules do.

    Example
    -------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 64, dtype=torch.bfloat16))
    >>> x = torch.randn(3, 64, dtype=torch.bfloat16)
    >>> before = net(x)
    >>> _ = compress_model(net, min_numel=0, progress=False, fused_linear=True)
    >>> type(net[0]).__name__, torch.equal(net(x), before)
    ('EKDFLinear', True)
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        c: DFloatTensor = self._ekdf_weight
        rows = 1
        for d in input.shape[:-1]:
            rows = rows * d
        if input.dtype == torch.bfloat16 and rows <= MAX_FUSED_ROWS and not (
                input.requires_grad and torch.is_grad_enabled()):
            return c.linear(input, self.bias)
        weight = self.weight  # this weight's slice of the shared buffer (_install)
        c.decompress(out=weight)
        return F.linear(input, weight, self.bias)


def _fusable(module: nn.Module) -> bool:
    # exactly nn.Linear: a subclass may compute something else from its weight
    return type(module) is nn.Linear or type(module) is EKDFLinear


def _make_hook(members: List[nn.Module], buffers: _DecodeBuffers):
    offsets, _ = _group_layout(members)
    views: Dict[int, torch.Tensor] = {}  # id(member) -> its weight-shaped slice of the buffer

    def decode_group(module, args):
        for m, off in zip(members, offsets):
            if type(m) is EKDFLinear:  # decodes in its own forward, when and if it needs to
                continue
            c: DFloatTensor = m._ekdf_weight
            view = views.get(id(m))
            if view is None or view.device != c.device or view.shape != c.shape:
                view = views[id(m)] = buffers.get(c.device)[off:off + c.numel].view(c.shape)
            c.decompress(out=view)
            # the slice and the attribute are set once (nn.Module.__setattr__ costs µs per
            # weight per step); every forward decodes into the same memory again
            if m.__dict__.get("weight") is not view:
                m.weight = view
        return None

    return decode_group


def _install(model: nn.Module, compressed: Dict[str, DFloatTensor], group_by: str, fused_linear: bool = False) -> None:
    """Attach compressed weights (by parameter name) to their modules and install the hooks;
    with ``fused_linear``, plain ``nn.Linear`` modules become :class:`EKDFLinear`."""
    if group_by not in ("block", "module"):
        raise ValueError(f"group_by must be 'block' or 'module', got {group_by!r}")
    if not isinstance(fused_linear, bool):
        raise TypeError(f"fused_linear must be a bool, got {type(fused_linear).__name__}")
    modules = dict(model.named_modules())
    owners: List[nn.Module] = []
    for name, c in compressed.items():
        mod_name = name.rsplit(".", 1)[0] if "." in name else ""
        module = modules.get(mod_name)
        if module is None or not name.endswith("weight"):
            raise ValueError(f"{name}: no module {mod_name!r} with a weight in this model")
        module._parameters.pop("weight", None)
        module._ekdf_weight = c
        if fused_linear and _fusable(module) and len(c.shape) == 2:
            module.__class__ = EKDFLinear
        owners.append(module)
    model._ekdf_buffers = buffers = _DecodeBuffers()
    grouped = set()
    groups: List[Tuple[nn.Module, List[nn.Module]]] = []
    if group_by == "block":
        for block in _blocks(model, owners):
            members = [m for m in block.modules() if hasattr(m, "_ekdf_weight")]
            if members:
                groups.append((block, members))
                grouped.update(id(m) for m in members)
    groups += [(m, [m]) for m in owners if id(m) not in grouped]
    for anchor, members in groups:
        _, total = _group_layout(members)
        for device in {m._ekdf_weight.device for m in members}:
            buffers.reserve(device, total)
    for anchor, members in groups:
        anchor.register_forward_pre_hook(_make_hook(members, buffers))
        # a view of the buffer until the first forward: right shape/dtype/device for callers
        for m, off in zip(members, _group_layout(members)[0]):
            c = m._ekdf_weight
            m.weight = buffers.get(c.device)[off:off + c.numel].view(c.shape)


def compress_model(model: nn.Module, *, group_by: str = "block", min_numel: int = 65536, threads: int = 0,
                   progress: bool = True, fused_linear: bool = False) -> dict:
    """Replace bf16 Linear/Embedding weights of ``model`` by EKDF-compressed ones, in place.

    Returns ``{"modules", "original_bytes", "compressed_bytes", "ratio", "seconds"}``. Tied
    weights (e.g. embeddings and LM head) are compressed once. Weights smaller than
    ``min_numel`` stay as they are (each compressed weight carries an 8 KB decode table in
    memory, 6% of a 65536-value weight). ``fused_linear=True``: plain ``nn.Linear`` modules
    become :class:`EKDFLinear`, which multiplies inputs of at most 16 rows straight from the
    coded weight (:meth:`DFloatTensor.linear`) instead of decoding it first — off by default
    until the GPU probe (step ``dfloat_linear``) has measured and checked the CUDA kernel.

    Example
    -------
    >>> import torch
    >>> lin = torch.nn.Linear(512, 512, dtype=torch.bfloat16)
    >>> wrapper = torch.nn.Sequential(lin)
    >>> s = compress_model(wrapper, progress=False)
    >>> s["modules"], 0.5 < s["ratio"] < 1.0, "weight" in dict(lin.named_parameters())
    (1, True, False)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if getattr(model, "_ekdf_buffers", None) is not None:
        raise ValueError("model is already compressed")
    start = time.perf_counter()
    targets = _targets(model, min_numel)
    by_param: Dict[int, DFloatTensor] = {}
    compressed: Dict[str, DFloatTensor] = {}
    original = 0
    for name, module in _progress(targets, len(targets), "compressing", progress):
        w = module._parameters["weight"]
        if id(w) not in by_param:
            by_param[id(w)] = DFloatTensor.compress(w.detach(), threads=threads)
            original += w.numel() * 2
        compressed[f"{name}.weight" if name else "weight"] = by_param[id(w)]
    _install(model, compressed, group_by, fused_linear)
    model._ekdf_group_by = group_by
    packed = sum(c.nbytes for c in by_param.values())
    return {"modules": len(targets), "original_bytes": original, "compressed_bytes": packed,
            "ratio": packed / max(1, original), "seconds": time.perf_counter() - start}


def _compressed_by_name(model: nn.Module) -> Tuple[Dict[str, DFloatTensor], Dict[str, str]]:
    """``({canonical name: DFloatTensor}, {alias name: canonical name})`` of a compressed model."""
    seen: Dict[int, str] = {}
    canonical, aliases = {}, {}
    for name, module in model.named_modules(remove_duplicate=False):
        c = getattr(module, "_ekdf_weight", None)
        if c is None:
            continue
        full = f"{name}.weight" if name else "weight"
        if id(c) in seen:
            if seen[id(c)] != full:
                aliases[full] = seen[id(c)]
        else:
            seen[id(c)] = full
            canonical[full] = c
    return canonical, aliases


def save_compressed(model: nn.Module, path: str, progress: bool = True) -> str:
    """Write a compressed model to the directory ``path``: ``config.json`` (when the model has a
    transformers config) and ``model.ekdf.safetensors``. Returns the weights file's path.

    Example
    -------
    >>> import torch, tempfile
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 64, dtype=torch.bfloat16))
    >>> _ = compress_model(net, min_numel=0, progress=False)
    >>> save_compressed(net, tempfile.mkdtemp(), progress=False).endswith("model.ekdf.safetensors")
    True
    """
    if getattr(model, "_ekdf_buffers", None) is None:
        raise ValueError("model is not compressed: call compress_model(model) first")
    os.makedirs(path, exist_ok=True)
    canonical, aliases = _compressed_by_name(model)
    tensors: Dict[str, object] = dict(canonical)
    seen: Dict[int, str] = {}
    param_aliases = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:  # tied parameters are stored once
            param_aliases[name] = seen[id(p)]
        else:
            seen[id(p)] = name
            tensors[name] = p.detach()
    non_persistent = []
    for mod_name, module in model.named_modules():
        for b_name, b in module._buffers.items():
            if b is None:
                continue
            full = f"{mod_name}.{b_name}" if mod_name else b_name
            tensors[full] = b
            if b_name in module._non_persistent_buffers_set:
                non_persistent.append(full)
    info = {"compressed": sorted(canonical), "aliases": aliases, "param_aliases": param_aliases,
            "non_persistent_buffers": non_persistent,
            "group_by": getattr(model, "_ekdf_group_by", "block")}
    if hasattr(model, "config") and hasattr(model.config, "save_pretrained"):
        model.config.save_pretrained(path)
    out = os.path.join(path, WEIGHTS_FILE)
    if progress:
        print(f"writing {len(tensors)} tensors to {out}")
    save_file(tensors, out, metadata={META_KEY: json.dumps(info)})
    return out


def load_compressed(path: str, device="cpu", model_class=None, group_by: Optional[str] = None,
                    progress: bool = True, fused_linear: bool = False) -> nn.Module:
    """Load a model written by :func:`save_compressed` (transformers models: ``model_class``
    defaults to ``AutoModelForCausalLM``). The model is built on the meta device and filled
    from the file, so the uncompressed weights never exist; returns it in eval mode.

    ``fused_linear``: as in :func:`compress_model`.

    A checkpoint directory written by ``entropy-kernels compress`` (its shards, ``config.json``)
    loads too: the model is then built from its config on the CPU first (so buffers that
    checkpoints do not store, like rotary frequencies, are computed as usual), the plain tensors
    are loaded into it and the coded weights attached.

    Example
    -------
    >>> # model = load_compressed("my-model-ekdf", device="cuda")
    >>> # model.generate(input_ids, max_new_tokens=20)
    """
    from safetensors import safe_open

    weights = os.path.join(path, WEIGHTS_FILE)
    if not os.path.exists(weights):
        if os.path.isdir(path) and any(f.endswith(".safetensors") for f in os.listdir(path)):
            return _load_compressed_checkpoint(path, device, model_class, group_by or "block", progress,
                                               fused_linear)
        raise FileNotFoundError(f"{weights} not found (write it with save_compressed or entropy-kernels compress)")
    with safe_open(weights, framework="pt") as f:
        meta = f.metadata() or {}
    if META_KEY not in meta:
        raise ValueError(f"{weights} has no {META_KEY!r} metadata: not written by save_compressed")
    info = _model_info(weights, meta[META_KEY])
    if model_class is None:
        from transformers import AutoModelForCausalLM as model_class
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = model_class.from_config(config)
    model = model.to(torch.bfloat16).to_empty(device=device)
    tensors = load_file(weights, device=device)
    modules = dict(model.named_modules())
    for name, value in _progress(list(tensors.items()), len(tensors), "loading", progress):
        if isinstance(value, DFloatTensor):
            continue
        mod_name, attr = name.rsplit(".", 1) if "." in name else ("", name)
        module = modules[mod_name]
        if attr in module._parameters:
            module._parameters[attr] = nn.Parameter(value, requires_grad=False)
        else:
            module.register_buffer(attr, value, persistent=name not in info["non_persistent_buffers"])
    for alias, target in info.get("param_aliases", {}).items():
        mod_name, attr = alias.rsplit(".", 1) if "." in alias else ("", alias)
        t_mod, t_attr = target.rsplit(".", 1) if "." in target else ("", target)
        modules[mod_name]._parameters[attr] = modules[t_mod]._parameters[t_attr]
    absent = [n for n in info["compressed"] if not isinstance(tensors.get(n), DFloatTensor)]
    absent += [t for t in info["aliases"].values() if t not in info["compressed"]]
    if absent:
        raise ValueError(f"{weights}: compressed weights listed in the metadata are not in the file: {absent[:5]}")
    compressed = {n: tensors[n] for n in info["compressed"]}
    for alias, target in info["aliases"].items():
        compressed[alias] = compressed[target]
    _install(model, compressed, group_by or info.get("group_by", "block"), fused_linear)
    model._ekdf_group_by = group_by or info.get("group_by", "block")
    return model.eval()


def _model_info(path: str, text: str) -> dict:
    """The ``ekdf_model`` metadata of a file written by :func:`save_compressed`, checked for
    shape (a damaged file raises ValueError naming the field, not a KeyError mid-load)."""
    try:
        info = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{path}: malformed {META_KEY!r} metadata: {exc}") from exc
    kinds = {"compressed": list, "aliases": dict, "param_aliases": dict, "non_persistent_buffers": list}
    if not isinstance(info, dict):
        raise ValueError(f"{path}: {META_KEY!r} metadata must be an object")
    for key, kind in kinds.items():
        value = info.setdefault(key, kind())
        if not isinstance(value, kind) or not all(isinstance(v, str) for v in value) or (
                kind is dict and not all(isinstance(v, str) for v in value.values())):
            raise ValueError(f"{path}: {META_KEY!r} field {key!r} must be a {kind.__name__} of names")
    if info.get("group_by", "block") not in ("block", "module"):
        raise ValueError(f"{path}: {META_KEY!r} field 'group_by' must be 'block' or 'module'")
    return info


def _load_compressed_checkpoint(path: str, device, model_class, group_by: str, progress: bool,
                                fused_linear: bool = False) -> nn.Module:
    if model_class is None:
        from transformers import AutoModelForCausalLM as model_class
    from transformers import AutoConfig

    model = model_class.from_config(AutoConfig.from_pretrained(path)).to(torch.bfloat16)
    plain: Dict[str, torch.Tensor] = {}
    compressed: Dict[str, DFloatTensor] = {}
    shards = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    for shard in _progress(shards, len(shards), "loading", progress):
        for name, value in load_file(os.path.join(path, shard)).items():
            (compressed if isinstance(value, DFloatTensor) else plain)[name] = value
    _, unexpected = model.load_state_dict(plain, strict=False)
    params = dict(model.named_parameters(remove_duplicate=False))
    unknown = list(unexpected) + [n for n in compressed if n not in params]
    if unknown:
        raise ValueError(f"tensors not in the model: {unknown[:5]}")
    by_id: Dict[int, List[str]] = {}
    for name, p in params.items():
        by_id.setdefault(id(p), []).append(name)
    # a parameter is loaded if it, or a parameter tied to it, is in the checkpoint
    absent = [n for n in params if not any(t in plain or t in compressed for t in by_id[id(params[n])])]
    if absent:
        raise ValueError(f"parameters missing from the checkpoint: {absent[:5]}")
    for name in list(compressed):  # tied parameters (e.g. an LM head tied to the embeddings)
        for other in by_id[id(params[name])]:
            compressed.setdefault(other, compressed[name])
    model = model.to(device)
    _install(model, {n: c.to(device) for n, c in compressed.items()}, group_by, fused_linear)
    model._ekdf_group_by = group_by
    return model.eval()
