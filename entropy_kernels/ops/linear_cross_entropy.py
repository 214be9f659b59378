"""Cut cross-entropy: :func:`linear_cross_entropy` from hidden states and the LM-head weight,
without ``[tokens, vocab]`` logits. Three implementations behind one function:

- ``"fused"``: the differentiable ``entropy_kernels::linear_softmax_stats`` op (Triton GEMM
  tiles + online softmax statistics; logits recomputed tile by tile in the backward, O(N)
  extra memory, optional gradient filtering). Any reduction, differentiable ``lse``.
- ``"chunked"``: ``entropy_kernels::linear_cross_entropy_chunked`` computes the gradient during
  the forward, one chunk of tokens at a time (cuBLAS GEMM → Triton row kernels that compute the
  chunk's statistics and turn its logits into their gradient in place → two cuBLAS GEMMs). 3 GEMMs instead of 4, one
  chunk of logits in memory. Scalar reductions only; the returned ``lse`` is detached.
- ``"reference"``: plain torch autograd through full fp32 logits.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple, Union

import torch

from .. import _backend, _validation
from ..reference.cross_entropy import (
    cross_entropy_grad_stats,
    linear_cross_entropy_reference,
    reduce_losses,
    token_losses_from_stats,
)
from ..reference.linear_softmax import logits_grad_coefficients
from .dtensor_weights import unwrap_lm_head
from .linear_head_args import (  # check_options is imported from here by the loss module and the transformers patch
    LinearSoftmaxOptions,
    check_class_weight,
    check_options,
    flatten_head,
    shift_amount,
)
from ._registry import define_op
from .linear_softmax import head_samples, linear_softmax_stats
from .logits_chunks import accumulate_chunk_grads, chunk_logits, rows_grad, rows_stats, stats_dtype
from .vocab_parallel import vocab_parallel_stats

DEFAULT_FILTER_EPS = 2.0**-12  # below bf16 resolution relative to the row's gradient scale
DEFAULT_CHUNK_BYTES = 512 * 2**20  # logits of one chunk in the chunked impl


def default_chunk_size(n_tokens: int, vocab: int, itemsize: int, budget_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Tokens per chunk so that one chunk of logits fits ``budget_bytes`` (multiple of 128).

    Example
    -------
    >>> default_chunk_size(8192, 256000, 2)
    1024
    """
    chunk = max(128, (budget_bytes // max(1, vocab * itemsize)) // 128 * 128)
    return int(min(chunk, max(n_tokens, 1)))


def _chunked(
    h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor, token_weight: torch.Tensor,
    ignore_index: int, label_smoothing: float, z_loss: float, softcap: float, chunk_size: int, accum_fp32: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Σ_i w_i·loss_i, stats [N, 4], dh, dW, db)``: the loss and its gradients, chunk by chunk.

    The gradients are those of the returned scalar; autograd scales them by the upstream
    gradient. ``db`` is empty without bias.
    """
    vocab = weight.shape[0]
    stats = torch.empty((h.shape[0], 4), dtype=stats_dtype(h.dtype), device=h.device)
    triton_path = _backend.use_triton(h)

    def chunk_grad(rows: slice) -> torch.Tensor:
        y_c = targets[rows]
        logits = chunk_logits(h[rows], weight, bias, gemm=True)
        stats_c = rows_stats(logits, y_c, softcap, 1.0, triton_path)
        grad_stats = cross_entropy_grad_stats(stats_c, token_weight[rows], vocab, label_smoothing, z_loss)
        coeffs = logits_grad_coefficients(grad_stats, stats_c).contiguous()
        dz = rows_grad(logits, y_c, stats_c, coeffs, softcap, 1.0, triton_path)  # in place: no 2nd chunk
        stats[rows] = stats_c
        return dz

    acc = torch.float32 if (accum_fp32 or h.dtype == torch.float32) else h.dtype
    dh, dw, db = accumulate_chunk_grads(h, weight, bias, chunk_size, chunk_grad, dw_dtype=acc, db_dtype=torch.float32)
    per_token = token_losses_from_stats(stats, targets, vocab, ignore_index, label_smoothing, z_loss)
    return (per_token * token_weight).sum(), stats, dh, dw, db


def _chunked_setup_context(ctx, inputs, output):
    _, stats, dh, dw, db = output
    ctx.mark_non_differentiable(stats, dh, dw, db)
    # Those outputs never get gradients; without this autograd would materialise zero gradients
    # for them -- another [V, D] and [N, D] buffer at the peak.
    ctx.set_materialize_grads(False)
    ctx.has_bias = inputs[2] is not None
    ctx.save_for_backward(dh, dw, db)


def _chunked_backward(ctx, grad_loss, *_):
    dh, dw, db = ctx.saved_tensors
    if grad_loss is None:  # only the non-differentiable outputs were used
        return (None,) * 11
    g = grad_loss.to(dh.dtype)
    return (
        dh * g if ctx.needs_input_grad[0] else None,
        dw * g.to(dw.dtype) if ctx.needs_input_grad[1] else None,
        db * g.to(db.dtype) if ctx.has_bias and ctx.needs_input_grad[2] else None,
        None, None, None, None, None, None, None, None,
    )


def _chunked_samples():
    for (h, w, b, y, softcap, _), label in head_samples():
        y[0] = -100  # an ignored token
        yield (h, w, b, y, torch.rand(h.shape[0]), -100, 0.1, 1e-4, softcap, 4, False), label


CHUNKED = define_op(
    "linear_cross_entropy_chunked", public="linear_cross_entropy", implementation=_chunked,
    backward=_chunked_backward, setup_context=_chunked_setup_context, eager=False, samples=_chunked_samples,
)
linear_cross_entropy_chunked = CHUNKED.op  # the torch.library op (what torch.compile sees)


# ------------------------------------------------------------------------------ public API ---

def _validate(hidden, weight, targets, bias, class_weight, options):
    _validation.check_linear_head(hidden, weight, targets, bias)
    check_options(**options)
    check_class_weight(class_weight, weight, options["label_smoothing"], options["process_group"])
    if shift_amount(options["shift"]) and hidden.dim() < 2:
        raise ValueError(f"shift={options['shift']!r} needs hidden [..., T, D] with a time dimension")
    if options["process_group"] is None:  # sharded: checked against the total vocabulary once it is known
        _validation.check_class_indices("targets", targets, weight.shape[0], options["ignore_index"])


def _shift_targets(targets: torch.Tensor, ignore_index: int, s: int) -> torch.Tensor:
    """targets[..., t+s] at position t and ignore_index at the last s positions (one small copy)."""
    pad = torch.full_like(targets[..., : min(s, targets.shape[-1])], ignore_index)
    return torch.cat([targets[..., s:], pad], dim=-1)


def _token_weights(y: torch.Tensor, valid: torch.Tensor, class_weight: Optional[torch.Tensor], dtype) -> torch.Tensor:
    """Each token's weight in the loss: ``class_weight[y]`` (1 without class weights), 0 where ignored."""
    if class_weight is None:
        return valid.to(dtype)
    return torch.where(valid, class_weight.to(dtype)[torch.where(valid, y, 0)], 0)


def _reduce(per_token: torch.Tensor, token_weight: torch.Tensor, reduction: str) -> torch.Tensor:
    """``F.cross_entropy``'s reductions with per-token weights: ``none`` → ``w·l``, ``sum`` → ``Σ w·l``,
    ``mean`` → ``Σ w·l / Σ w`` (``nan`` when no token counts)."""
    weighted = per_token * token_weight
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return weighted.sum()
    return weighted.sum() / token_weight.sum()


def _choose_impl(impl, reduction, return_lse, needs_grad, h) -> str:
    if impl != "auto":
        return impl
    if not _backend.use_triton(h):
        return "reference"  # no kernels on this device: plain torch autograd is the fastest path
    # chunked: 3 GEMMs instead of 4 and cuBLAS speed, when its limits allow (scalar loss, no lse
    # gradient, a backward to come); otherwise fused (O(N) memory, any reduction).
    if needs_grad and reduction != "none" and not return_lse:
        return "chunked"
    return "fused"


def _fused_filter_eps(filter_eps, dtype: torch.dtype, label_smoothing: float) -> float:
    """The fused backward's tile-skipping threshold: ``auto`` is 2⁻¹² for 16-bit inputs and off
    for fp32; always off with label smoothing (its gradient touches every logit)."""
    if label_smoothing > 0:
        return 0.0
    if filter_eps == "auto":
        return DEFAULT_FILTER_EPS if dtype in (torch.bfloat16, torch.float16) else 0.0
    return float(filter_eps or 0.0)


def _reference_loss(h, w, bias, y, valid, token_weight, options: LinearSoftmaxOptions):
    """``(loss, lse)`` through full fp32 logits (plain torch autograd)."""
    reduction = options.reduction if token_weight is None else "none"
    loss, lse = linear_cross_entropy_reference(h, w, y, bias, options.ignore_index, reduction, options.label_smoothing,
                                               options.z_loss, options.softcap or None)
    return (loss if token_weight is None else _reduce(loss, token_weight, options.reduction)), lse


def _chunked_loss(h, w, bias, y, valid, token_weight, options: LinearSoftmaxOptions):
    """``(loss, lse)`` with the gradients computed in the forward, chunk by chunk (lse detached)."""
    if options.reduction == "none":
        raise ValueError("impl='chunked' computes gradients of a scalar loss: use reduction 'mean'/'sum' or impl='fused'")
    if token_weight is None:
        token_weight = valid.to(stats_dtype(h.dtype))
    if options.reduction == "mean":
        token_weight = token_weight / token_weight.sum()
    size = options.chunk_size or default_chunk_size(h.shape[0], w.shape[0], h.element_size())
    options = dataclasses.replace(options, chunk_size=size)
    loss, stats, *_ = linear_cross_entropy_chunked(h, w, bias, y, token_weight, *options.cross_entropy_args())
    return loss, stats[:, 0]


def _fused_loss(h, w, bias, y, valid, token_weight, options: LinearSoftmaxOptions):
    """``(loss, lse)`` from the differentiable stats op (vocabulary-parallel with a process group)."""
    if options.process_group is not None:
        stats, vocab = vocab_parallel_stats(h, w, bias, y, options)
    else:
        stats, vocab = linear_softmax_stats(h, w, bias, y, *options.fused_args()), w.shape[0]
    per_token = token_losses_from_stats(stats, y, vocab, options.ignore_index, options.label_smoothing, options.z_loss)
    if token_weight is None:
        return reduce_losses(per_token, valid, options.reduction), stats[:, 0]
    return _reduce(per_token, token_weight, options.reduction), stats[:, 0]


_LOSSES = {"reference": _reference_loss, "chunked": _chunked_loss, "fused": _fused_loss}


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: Optional[torch.Tensor] = None,
    class_weight: Optional[torch.Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: Optional[float] = None,
    shift: Union[bool, int] = False,
    return_lse: bool = False,
    impl: str = "auto",
    filter_eps: Union[str, float, None] = "auto",
    accum_fp32: bool = False,
    chunk_size: Optional[int] = None,
    process_group=None,
    vocab_offset: Optional[int] = None,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Cross-entropy of ``hidden @ weight.T (+ bias)`` against ``targets`` without building logits.

    Parameters
    ----------
    hidden : Tensor ``[..., D]``
        fp32, bf16 or fp16 (fp64 works on the reference/CPU path).
    weight : Tensor ``[V, D]``
        LM-head / classifier weight, same dtype as ``hidden``.
    targets : Tensor ``[...]``
        int64/int32 class ids; ``ignore_index`` marks tokens without a loss. In eager mode on
        CPU an out-of-range target raises ``ValueError``; on CUDA and under ``torch.compile``
        (where checking would synchronise or break the graph) it gives that token a ``nan`` loss.
    bias : Tensor ``[V]``, optional
    class_weight : Tensor ``[V]``, optional
        A weight per class, as ``F.cross_entropy(weight=...)``: token ``i``'s loss is scaled by
        ``class_weight[targets[i]]`` and ``mean`` divides by the sum of those weights over the
        non-ignored tokens. Not with ``label_smoothing > 0`` or a ``process_group``. (``weight``
        is the LM head.)
    ignore_index : int
    reduction : "mean" | "sum" | "none"
        ``mean`` averages over non-ignored tokens; with none of them it is ``nan``, as in
        ``torch.nn.functional.cross_entropy`` (``sum`` gives 0, ``none`` zeros).
    label_smoothing : float in [0, 1)
        ``(1-ε)·CE + ε·(lse - mean_j z_j)``, torch's definition.
    z_loss : float
        Adds ``z_loss · lse²`` per token.
    softcap : float, optional
        Logits ``c·tanh(z/c)`` before the softmax (Gemma-2's final-logit softcapping).
    shift : bool or int >= 0
        ``True`` (= 1), next-token prediction: position ``t`` predicts ``targets[..., t+1]``; the
        last position has no target. An int ``s``: position ``t`` predicts ``targets[..., t+s]``,
        as ``labels[:, s:]`` against positions ``[:, :-s]``. With ``reduction="none"`` the output
        is ``[..., T-s]``.
    return_lse : bool
        Also return the per-token ``logsumexp`` of the (softcapped) logits, fp32 ``[...]``.
    impl : "auto" | "fused" | "chunked" | "reference"
        See the module docstring. ``auto`` picks ``chunked`` when a backward will follow, the
        loss is a scalar and ``lse`` is not requested; ``fused`` otherwise; on CPU (no kernels)
        it picks ``reference``. ``fused``/``chunked`` on CPU run their pure-torch equivalents.
    filter_eps : "auto" | float | None
        ``fused`` backward skips vocabulary tiles whose every gradient entry is below
        ``eps ×`` the token's gradient scale. ``auto``: 2⁻¹² for 16-bit inputs, off for fp32.
        Always off with label smoothing (its gradient touches every logit).
    accum_fp32 : bool
        ``fused``: accumulate dW in one fp32 buffer for the whole vocabulary (one backward
        launch, ``V·D·4`` bytes) instead of one 256 MiB vocabulary chunk per launch; dh is always
        accumulated in fp32. ``chunked``: accumulate dW across chunks in fp32 instead of the
        weight dtype.
    chunk_size : int, optional
        Tokens per chunk for ``chunked`` (default: 512 MiB of logits per chunk).
    process_group : torch.distributed group, optional
        Vocabulary-parallel LM head: ``weight`` (and ``bias``) are this rank's contiguous shard
        of the vocabulary, ``targets`` are global ids; every rank gets the global loss, the full
        ``dh`` and its own ``dW`` shard (see :mod:`entropy_kernels.ops.vocab_parallel`).
        ``impl`` must be ``auto``/``fused``.
    vocab_offset : int, optional
        This rank's first vocabulary id; by default the sum of the lower ranks' shard sizes.

    Returns
    -------
    loss (fp32 scalar, or ``[...]`` for ``none``), and ``lse`` if ``return_lse``.

    Example
    -------
    >>> import torch, entropy_kernels as ek
    >>> h, w = torch.randn(2, 5, 16), torch.randn(100, 16)
    >>> y = torch.randint(0, 100, (2, 5))
    >>> loss = ek.linear_cross_entropy(h, w, y)
    >>> torch.allclose(loss, torch.nn.functional.cross_entropy((h @ w.T).flatten(0, 1), y.flatten()), atol=1e-5)
    True
    """
    weight, bias, process_group, vocab_offset = unwrap_lm_head(weight, bias, process_group, vocab_offset)
    _validate(hidden, weight, targets, bias, class_weight, dict(
        ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
        shift=shift, return_lse=return_lse, impl=impl, filter_eps=filter_eps, accum_fp32=accum_fp32, chunk_size=chunk_size,
        process_group=process_group, vocab_offset=vocab_offset,
    ))
    s = shift_amount(shift)
    if s:
        targets = _shift_targets(targets, ignore_index, s)
    lead_shape, h2, w, y = flatten_head(hidden, weight, targets)
    options = LinearSoftmaxOptions(
        softcap=float(softcap) if softcap is not None else 0.0, ignore_index=ignore_index,
        label_smoothing=float(label_smoothing), z_loss=float(z_loss), reduction=reduction,
        filter_eps=_fused_filter_eps(filter_eps, h2.dtype, float(label_smoothing)), accum_fp32=accum_fp32,
        chunk_size=chunk_size or 0, process_group=process_group, vocab_offset=vocab_offset,
    )
    valid = y != ignore_index
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias)
    )
    # a vocabulary-parallel weight: the fused stats op on each shard, combined over the group
    chosen = "fused" if process_group is not None else _choose_impl(impl, reduction, return_lse, needs_grad, h2)
    token_weight = _token_weights(y, valid, class_weight, stats_dtype(h2.dtype)) if class_weight is not None else None
    loss, lse = _LOSSES[chosen](h2, w, bias, y, valid, token_weight, options)

    kept = lead_shape[-1] - min(s, lead_shape[-1]) if s else None  # positions that have a target
    if reduction == "none":
        loss = loss.reshape(lead_shape)
        if s:
            loss = loss[..., :kept]
    if not return_lse:
        return loss
    lse = lse.reshape(lead_shape)
    return loss, (lse[..., :kept] if s else lse)
