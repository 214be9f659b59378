"""LM-head weights given as ``torch.distributed.tensor.DTensor`` (tensor parallelism, or a module
that keeps its parameters as DTensors): the losses take the local tensor and, for a weight sharded
on the vocabulary dimension, run the vocabulary-parallel path over the mesh's process group.

- ``Replicate()``: every rank holds the whole ``[V, D]`` weight; the local tensor is used as it
  is, and the gradient flows back into the DTensor labelled replicated, like the weight -- the
  same on every rank when the hidden states are (tensor parallelism); with different data per
  rank it is each rank's local gradient, to be reduced as data parallelism does.
- ``Shard(0)``: rank ``r`` holds rows ``[o_r, o_r + V_r)`` (contiguous, in rank order, as
  ``torch.chunk`` splits them); the op becomes vocabulary-parallel, each rank gets its ``dW``
  shard (as a DTensor) and the full ``dh``. This needs the same hidden states on every rank (a
  tensor-parallel LM head), which nothing in the weight says: FSDP2 shards its parameters the
  same way, and a still-sharded FSDP2 weight run vocabulary-parallel would mix the ranks'
  tokens into one wrong loss. So the caller confirms it by passing the mesh's group,
  ``process_group=weight.device_mesh.get_group()``; without it a ``Shard(0)`` weight raises.

A bias must be placed like the weight (``Replicate()`` or ``Shard(0)``) or be a plain tensor of
the local rows. Other placements (``Shard(1)``, ``Partial``, meshes of more than one dimension)
raise ``ValueError``. Under FSDP2's ``fully_shard`` the forward sees the all-gathered weight as a
plain tensor, so nothing here is needed there.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch


def _dtensor_class():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch built without distributed
        return None
    return DTensor


def is_dtensor(t) -> bool:
    """Whether ``t`` is a ``DTensor``.

    Example
    -------
    >>> is_dtensor(torch.ones(2))
    False
    """
    cls = _dtensor_class()
    return cls is not None and isinstance(t, cls)


def _placement(t, name: str) -> str:
    """"replicate" or "shard0" for a DTensor on a 1-D mesh; ValueError naming ``name`` otherwise."""
    from torch.distributed.tensor import Replicate, Shard

    if t.device_mesh.ndim != 1:
        raise ValueError(f"{name}: a DTensor on a 1-D device mesh is supported, got a {t.device_mesh.ndim}-D mesh")
    placement = t.placements[0]
    if isinstance(placement, Replicate):
        return "replicate"
    if isinstance(placement, Shard) and placement.dim == 0:
        return "shard0"
    raise ValueError(f"{name}: a DTensor placed Replicate() or Shard(0) (vocabulary rows) is supported, got {placement}")


def unwrap_lm_head(
    weight: torch.Tensor, bias: Optional[torch.Tensor], process_group, vocab_offset: Optional[int],
    weight_name: str = "weight",
) -> Tuple[torch.Tensor, Optional[torch.Tensor], object, Optional[int]]:
    """``(weight, bias, process_group, vocab_offset)`` with DTensors replaced by their local
    tensors (differentiably: gradients come back as DTensors placed like the inputs) and, for a
    weight sharded on the vocabulary, the mesh's process group. Plain tensors pass through.

    Example
    -------
    >>> w = torch.randn(10, 4)
    >>> unwrap_lm_head(w, None, None, None)[0] is w
    True
    """
    if not is_dtensor(weight):
        if is_dtensor(bias):
            raise ValueError(f"bias: a DTensor needs a DTensor {weight_name} placed the same way")
        return weight, bias, process_group, vocab_offset
    how = _placement(weight, weight_name)
    if vocab_offset is not None:
        raise ValueError(f"vocab_offset: a DTensor {weight_name}'s rows are torch.chunk's; pass no offset")
    group = weight.device_mesh.get_group()
    if how == "replicate" and process_group is not None:
        raise ValueError(f"process_group: a Replicate() DTensor {weight_name} holds the whole vocabulary; pass no group")
    if how == "shard0":
        if process_group is None:
            raise ValueError(
                f"{weight_name}: a DTensor sharded on its rows (Shard(0)) runs vocabulary-parallel only when every rank "
                f"has the same hidden states (a tensor-parallel LM head): confirm it with "
                f"process_group={weight_name}.device_mesh.get_group(). An FSDP2-sharded weight must be all-gathered "
                f"first: call the module that owns it, or fully_shard its parent module instead")
        import torch.distributed as dist

        if dist.get_process_group_ranks(process_group) != dist.get_process_group_ranks(group):
            raise ValueError(f"process_group must be {weight_name}.device_mesh.get_group() (the ranks holding its shards)")
        # torch.chunk can leave the last ranks without rows (V < ranks, or V = 9 on 4): every rank
        # knows the global shape, so every rank raises here instead of some entering a collective
        world = weight.device_mesh.size()
        per_rank = -(-weight.shape[0] // world)
        if per_rank * (world - 1) >= weight.shape[0]:
            raise ValueError(f"{weight_name}: {weight.shape[0]} vocabulary rows over {world} ranks leave a rank with none")
    if bias is not None and is_dtensor(bias):
        if bias.device_mesh != weight.device_mesh or _placement(bias, "bias") != how:
            raise ValueError(f"bias: a DTensor must be on {weight_name}'s mesh and placed like it")
        bias = bias.to_local()
    local = weight.to_local()
    if how == "replicate":
        return local, bias, None, None
    # Shard(0): contiguous row blocks in rank order; the vocabulary-parallel path gathers the
    # shard sizes itself, so the (possibly uneven) split needs no offset here
    return local, bias, group, None
