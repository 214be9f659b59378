"""The "80/20 rule" token mask (Beyond the 80/20 Rule: high-entropy minority tokens drive RL
for reasoning): only the highest-entropy ``top_fraction`` of the valid tokens of a batch get
policy gradient. Computed on the device without host synchronisation (CUDA-graph capturable):
the op ``entropy_kernels::high_entropy_mask`` and the public :func:`high_entropy_mask`.

On CUDA it is the radix select of the Clip-Cov / KL-Cov kernels (``kernels/radix_select.py``,
mode ``TOP_VALUES``; launchers in ``kernels/cov_launch.py``) keyed by the entropies themselves:
one cooperative launch eagerly, four launches under torch.compile; on the CPU,
:mod:`entropy_kernels.reference.high_entropy` (a device sort).
"""

from __future__ import annotations

import torch

from .. import _backend, _validation
from ..reference.high_entropy import high_entropy_mask_reference
from ..selection_keys import float_key, high_entropy_count
from ._registry import define_op
from .distributed_select import global_select_top

if _backend.triton_available():
    from ..kernels import cov_launch as _kernels
else:  # pragma: no cover - Triton ships with torch's CUDA wheels
    _kernels = None


def _signature(entropy: torch.Tensor, mask: torch.Tensor, top_fraction: float) -> torch.Tensor:
    """Bool mask of the top ``top_fraction`` valid tokens by entropy (contiguous inputs of one
    shape, at least one element). Internal: use :func:`high_entropy_mask`."""


def _eager(entropy: torch.Tensor, mask: torch.Tensor, top_fraction: float) -> torch.Tensor:
    """The eager fast path: one cooperative launch where the device allows it, else the four."""
    return _kernels.one_launch_or_phases(entropy.device, lambda: _kernels.top_values_fused(entropy, mask, top_fraction),
                                         lambda: _kernels.top_values(entropy, mask, top_fraction), "high_entropy_mask")


def _samples():
    for shape, fraction, label in (((4, 50), 0.2, "4 x 50"), ((300,), 0.5, "300, half")):
        yield (torch.randn(shape), _validation.kernel_mask("mask", torch.rand(shape) > 0.3), fraction), label


HIGH_ENTROPY_MASK = define_op(
    "high_entropy_mask", _signature, public="high_entropy_mask",
    kernel=_kernels.top_values if _kernels else None, eager_kernel=_eager if _kernels else None,
    reference=high_entropy_mask_reference, samples=_samples,
)
high_entropy_mask_op = HIGH_ENTROPY_MASK.op  # the torch.library op (what torch.compile sees)


def _distributed(group) -> bool:
    """Whether ``group`` spans more than one process (``None`` or a group of one: local)."""
    if group is None:
        return False
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("process_group was given but torch.distributed is not initialised")
    return dist.get_world_size(group) > 1


def _global_mask(entropy: torch.Tensor, mask: torch.Tensor, top_fraction: float, group) -> torch.Tensor:
    """The mask over every rank's tokens: global count, then the shared radix select."""
    import torch.distributed as dist

    valid = mask != 0
    n_valid = valid.sum().reshape(1)
    dist.all_reduce(n_valid, op=dist.ReduceOp.SUM, group=group)
    key = torch.where(valid, float_key(entropy), 0)
    return global_select_top(key, high_entropy_count(n_valid.reshape(()), top_fraction), group)


def high_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, top_fraction: float = 0.2,
                      process_group=None) -> torch.Tensor:
    """Bool mask of the ``k = ceil(top_fraction · n_valid)`` valid tokens with the highest entropy.

    Parameters
    ----------
    entropy : Tensor ``[...]`` floating (e.g. from :func:`linear_logprob_entropy`; detached here).
    mask : Tensor ``[...]`` bool (or 0/1) of valid tokens (nonzero = valid), same shape and device.
    top_fraction : float in (0, 1]
    process_group : torch.distributed group, optional
        Select over every rank's tokens together: ``n_valid`` and the threshold are global, and
        each rank gets its part of the mask that one process would compute on the ranks'
        tensors concatenated (rank order; sizes may differ). Constant-size collectives
        (``ops.distributed_select``), no gather of the entropies, no host synchronisation; runs
        eagerly (not under ``torch.compile``).

    Returns
    -------
    Bool tensor of ``entropy``'s shape: ``True`` on exactly ``k`` valid tokens (``k = 0`` when no
    token is valid; ``k >= 1`` otherwise, however small the batch; ``q·n`` within 1e-9 of an
    integer is not rounded up). Entropies are ranked as float32; ties at the threshold are broken
    by position (the earlier flattened index wins), so the count is always exactly ``k``.
    ``nan`` entropies rank lowest. Selection is over the whole tensor (all sequences of the
    micro-batch), as in the paper. No host synchronisation.

    Example
    -------
    >>> import torch, entropy_kernels as ek
    >>> ent = torch.tensor([[0.1, 2.0, 0.5, 3.0], [1.0, 0.2, 9.0, 0.0]])
    >>> valid = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    >>> ek.high_entropy_mask(ent, valid, top_fraction=0.3)     # ceil(0.3 · 6) = 2 tokens
    tensor([[False,  True, False,  True],
            [False, False, False, False]])
    """
    _validation.check_tensor("entropy", entropy)
    _validation.check_float_dtype("entropy", entropy)
    _validation.check_tensor("mask", mask)
    _validation.check_same_device("mask", mask, "entropy", entropy)
    if tuple(mask.shape) != tuple(entropy.shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal entropy's {tuple(entropy.shape)}")
    mask = _validation.kernel_mask("mask", mask)
    if isinstance(top_fraction, bool) or not isinstance(top_fraction, (int, float)) or not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction!r}")
    if entropy.numel() >= 2**31:
        raise ValueError(f"at most 2**31 - 1 tokens per call, got {entropy.numel()}")
    if entropy.numel() == 0 and not _distributed(process_group):
        return torch.zeros(entropy.shape, dtype=torch.bool, device=entropy.device)
    entropy, mask, top_fraction = entropy.detach().contiguous(), mask.contiguous(), float(top_fraction)
    if _distributed(process_group):
        return _global_mask(entropy, mask, top_fraction, process_group)
    return HIGH_ENTROPY_MASK(entropy, mask, top_fraction)
