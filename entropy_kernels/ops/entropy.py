"""``entropy_kernels::entropy_fwd`` / ``entropy_bwd`` and the public :func:`entropy`.

This module is the template every op of the package copies (see ``ops/__init__.py``).
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch.library import triton_op

from .. import _backend, _validation
from . import _eager
from ..reference.entropy import entropy_backward_reference, entropy_forward_reference

if _backend.triton_available():
    from ..kernels import entropy as _kernels
else:  # pragma: no cover - Triton ships with torch's CUDA wheels
    _kernels = None


@triton_op("entropy_kernels::entropy_fwd", mutates_args=())
def entropy_fwd(
    logits: torch.Tensor, row_temperature: Optional[torch.Tensor], temperature: float
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(entropy, lse, stats) of softmax(logits / T) over the last dim; ``stats[..., 2]`` =
    (row max, log-normaliser) is saved for the backward. Internal: use :func:`entropy`."""
    if _backend.use_triton(logits):
        return _kernels.entropy_forward(logits, row_temperature, temperature)
    return entropy_forward_reference(logits, row_temperature, temperature)


@triton_op("entropy_kernels::entropy_bwd", mutates_args=())
def entropy_bwd(
    grad_entropy: torch.Tensor,
    grad_lse: torch.Tensor,
    logits: torch.Tensor,
    entropy: torch.Tensor,
    stats: torch.Tensor,
    row_temperature: Optional[torch.Tensor],
    temperature: float,
) -> torch.Tensor:
    """d(logits) of Σ g_H·H + g_lse·lse. Internal: the backward of :func:`entropy_fwd`."""
    if _backend.use_triton(logits):
        return _kernels.entropy_backward(grad_entropy, grad_lse, logits, entropy, stats, row_temperature, temperature)
    return entropy_backward_reference(grad_entropy, grad_lse, logits, entropy, stats, row_temperature, temperature)


def _setup_context(ctx, inputs, output):
    logits, row_temperature, temperature = inputs
    entropy, lse, stats = output
    ctx.mark_non_differentiable(stats)
    ctx.save_for_backward(logits, entropy, stats, row_temperature)
    ctx.temperature = temperature


def _backward(ctx, grad_entropy, grad_lse, _grad_stats):
    logits, entropy, stats, row_temperature = ctx.saved_tensors
    # An output that did not reach the loss gets no gradient: zeros (O(rows), cheap).
    if grad_entropy is None:
        grad_entropy = torch.zeros_like(entropy)
    if grad_lse is None:
        grad_lse = torch.zeros_like(entropy)
    bwd = _kernels.entropy_backward if _backend.launch_triton_directly(logits) else entropy_bwd
    grad_logits = bwd(grad_entropy, grad_lse, logits, entropy, stats, row_temperature, ctx.temperature)
    # The temperature is not differentiated (a per-row temperature is a sampling setting).
    return grad_logits, None, None


entropy_fwd.register_autograd(_backward, setup_context=_setup_context)


# Eager fast path (_backend.eager_direct): outside tracing, entropy() runs the same kernels
# through an autograd.Function twin of the op, skipping the dispatcher's host cost.


def _forward_implementation(logits, row_temperature, temperature):
    return _kernels.entropy_forward(logits, row_temperature, temperature)


_EntropyFunction = _eager.autograd_function("_EntropyFunction", _forward_implementation, _setup_context, _backward)


def entropy(
    logits: torch.Tensor,
    *,
    temperature: Union[float, torch.Tensor] = 1.0,
    return_lse: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Entropy of ``softmax(logits / temperature)`` over the last dimension, in one read.

    Parameters
    ----------
    logits : Tensor ``[..., V]``
        float32, bfloat16, float16 (or float64). Any strides; ``-inf`` entries are masked
        vocabulary and contribute nothing. Rows that are entirely ``-inf`` give ``nan`` entropy,
        ``-inf`` lse and zero gradient, as plain torch does.
    temperature : float or Tensor
        Divides the logits. A float must be finite and > 0. A tensor gives one temperature per
        row: a scalar or broadcastable to ``logits.shape[:-1]``, on the same device; its values
        are *not* checked (that would synchronise with the GPU), and it receives no gradient.
    return_lse : bool
        Also return ``logsumexp(logits / temperature)``.

    Returns
    -------
    Tensor ``[...]`` (float32; float64 for float64 input), or ``(entropy, lse)``.
    Differentiable w.r.t. ``logits``: ``∂H/∂z = -p·(log p + H)/T``, ``∂lse/∂z = p/T``.

    On CUDA this runs a Triton kernel that never materialises ``p`` or an fp32 copy of the
    logits; on CPU it runs the pure-torch reference.

    Example
    -------
    >>> import torch, entropy_kernels as ek
    >>> logits = torch.tensor([[0.0, 0.0], [0.0, float("-inf")]])
    >>> ek.entropy(logits)                       # log 2 and 0
    tensor([0.6931, 0.0000])
    >>> h, lse = ek.entropy(torch.randn(4, 8, 100), temperature=0.7, return_lse=True)
    >>> h.shape, lse.shape
    (torch.Size([4, 8]), torch.Size([4, 8]))
    """
    _validation.check_tensor("logits", logits)
    _validation.check_float_dtype("logits", logits)
    _validation.check_min_dim("logits", logits, 1, "(the last one is the vocabulary)")
    if logits.shape[-1] == 0:
        raise ValueError(f"logits must have a non-empty last (vocabulary) dimension, got shape {tuple(logits.shape)}")
    _validation.check_bool("return_lse", return_lse)
    row_temperature = None
    if isinstance(temperature, torch.Tensor):
        _validation.check_tensor("temperature", temperature)
        _validation.check_float_dtype("temperature", temperature)
        _validation.check_same_device("temperature", temperature, "logits", logits)
        row_temperature = _validation.broadcast_rows("temperature", temperature, logits.shape[:-1])
        scalar_temperature = 1.0
    else:
        scalar_temperature = _validation.check_positive_scalar("temperature", temperature)
    fwd = _EntropyFunction.apply if _backend.launch_triton_directly(logits) else entropy_fwd
    h, lse, _ = fwd(logits, row_temperature, scalar_temperature)
    return (h, lse) if return_lse else h
