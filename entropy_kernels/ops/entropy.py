"""``entropy_kernels::entropy_fwd`` / ``entropy_bwd`` and the public :func:`entropy`.

This module is the template every op of the package copies (see ``docs/contributing.md``):
the op's typed signature, its backward, sample calls for the shared tests, one
:func:`~entropy_kernels.ops._registry.define_op` per op, then the public function.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from .. import _backend, _validation
from ._registry import define_op
from ..reference.entropy import entropy_backward_reference, entropy_forward_reference

if _backend.triton_available():
    from ..kernels import entropy as _kernels
else:  # pragma: no cover - Triton ships with torch's CUDA wheels
    _kernels = None


def _entropy_fwd_signature(
    logits: torch.Tensor, row_temperature: Optional[torch.Tensor], temperature: float
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(entropy, lse, stats) of softmax(logits / T) over the last dim; ``stats[..., 2]`` =
    (row max, log-normaliser) is saved for the backward. Internal: use :func:`entropy`."""


def _entropy_bwd_signature(
    grad_entropy: torch.Tensor,
    grad_lse: torch.Tensor,
    logits: torch.Tensor,
    entropy: torch.Tensor,
    stats: torch.Tensor,
    row_temperature: Optional[torch.Tensor],
    temperature: float,
) -> torch.Tensor:
    """d(logits) of Σ g_H·H + g_lse·lse. Internal: the backward of ``entropy_fwd``."""


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
    grad_logits = ENTROPY_BWD(grad_entropy, grad_lse, logits, entropy, stats, row_temperature, ctx.temperature)
    # The temperature is not differentiated (a per-row temperature is a sampling setting).
    return grad_logits, None, None


def _fwd_samples():
    yield (torch.randn(3, 50) * 3, None, 1.0), "rows"
    yield (torch.randn(2, 3, 40), torch.rand(2, 3) + 0.5, 1.0), "row temperature"
    yield (torch.randn(4, 30).to(torch.float16), None, 0.7), "fp16, T=0.7"


def _bwd_samples():
    for (logits, row_t, t), label in _fwd_samples():
        h, _, stats = entropy_forward_reference(logits, row_t, t)
        yield (torch.randn_like(h), torch.randn_like(h), logits, h, stats, row_t, t), label


ENTROPY_FWD = define_op(
    "entropy_fwd", _entropy_fwd_signature, public="entropy",
    kernel=_kernels.entropy_forward if _kernels else None, reference=entropy_forward_reference,
    backward=_backward, setup_context=_setup_context, samples=_fwd_samples,
)
ENTROPY_BWD = define_op(
    "entropy_bwd", _entropy_bwd_signature, public="entropy",
    kernel=_kernels.entropy_backward if _kernels else None, reference=entropy_backward_reference,
    samples=_bwd_samples,
)
# the torch.library ops themselves (what torch.compile sees)
entropy_fwd, entropy_bwd = ENTROPY_FWD.op, ENTROPY_BWD.op


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
    h, lse, _ = ENTROPY_FWD(logits, row_temperature, scalar_temperature)
    return (h, lse) if return_lse else h
