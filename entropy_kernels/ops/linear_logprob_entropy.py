"""Per-token log-probs and entropy from hidden states and the LM head, for RL fine-tuning
(PPO/GRPO: log π(y_t) of the sampled token and the policy entropy H_t), without ``[N, V]``
logits. Built on the linear-softmax statistics:

    logprob = z_y - lse,     entropy = H,     z = (h Wᵀ + b) / T

with gradients of both outputs flowing through the stats op's closed-form backward
(``∂/∂z = g_lp·(onehot − p) − g_H·p·(z − E_p z)``, times 1/T).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import torch

from .. import _backend, _validation
from ..reference.linear_softmax import raw_logits, rows_stats_reference
from .dtensor_weights import unwrap_lm_head
from .linear_head_args import LinearSoftmaxOptions, check_filter_eps, check_vocab_parallel, flatten_head
from .linear_softmax import linear_softmax_stats
from .linear_softmax_chunked import chunk_tokens, linear_softmax_stats_chunked
from .linear_softmax_stored import linear_softmax_stats_stored
from .vocab_parallel import vocab_parallel_stats

IMPLS = ("auto", "fused", "stored", "chunked", "reference")


def _reference_stats(h, weight, bias, labels, inv_temperature):
    """Plain torch autograd through full fp32 logits (the ``reference`` impl)."""
    return rows_stats_reference(raw_logits(h, weight, bias), labels, 0.0, inv_temperature)


def linear_logprob_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = True,
    impl: str = "auto",
    logits_budget: int = 0,
    filter_eps: Optional[float] = None,
    accum_fp32: bool = False,
    process_group=None,
    vocab_offset: Optional[int] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Log-prob of ``labels`` and entropy of ``softmax((hidden @ weight.T + bias) / temperature)``.

    Parameters
    ----------
    hidden : Tensor ``[..., D]`` (fp32, bf16, fp16)
    weight : Tensor ``[V, D]``, same dtype. Vocabulary entries can be masked with a ``-inf``
        ``bias`` entry (e.g. padded vocabulary rows): they get probability 0 and no gradient.
    labels : Tensor ``[...]`` int64/int32; ``ignore_index`` positions give 0 and no gradient.
        In eager CPU mode out-of-range labels raise ``ValueError``; on CUDA / under compile they
        give ``nan`` log-probs (checking would synchronise).
    temperature : float > 0
    return_entropy : bool
        If False the entropy is not returned (``None``); it costs almost nothing to compute.
    impl : "auto" | "fused" | "stored" | "chunked" | "reference"
        ``fused``: logits never stored, recomputed tile by tile in the backward (O(N) memory).
        ``stored``: the logits (input dtype) are kept for a 3-GEMM backward — faster, N·V
        memory. ``chunked``: cuBLAS GEMMs over chunks of tokens (512 MiB of logits alive),
        the chunk's logits recomputed in the backward — 4 GEMMs. ``auto``: ``stored`` when
        ``N·V·itemsize <= logits_budget`` bytes, else ``chunked`` -- ``fused`` under
        torch.compile (the chunk loop would specialise the graph on N) or with ``filter_eps``;
        ``reference`` on CPU (no kernels there).
    logits_budget : int
        Bytes of logits ``auto`` may keep (default 0: never).
    filter_eps : float, optional
        Backward tile skipping of the fused impl (off by default: entropy gradients are dense).
    accum_fp32 : bool
        Fused backward: one fp32 dW buffer for the whole vocabulary instead of 256 MiB chunks;
        chunked backward: dW summed over the token chunks in fp32 instead of the weight dtype.
    process_group, vocab_offset
        Vocabulary-parallel LM head, as in :func:`entropy_kernels.linear_cross_entropy`
        (``impl`` must be ``auto``/``fused``).

    Returns
    -------
    ``(logprobs, entropy)``: fp32 ``[...]`` each (``entropy`` None if not requested), both
    differentiable w.r.t. hidden, weight and bias.

    Example
    -------
    >>> import torch, entropy_kernels as ek
    >>> h, w = torch.randn(2, 5, 16), torch.randn(100, 16)
    >>> y = torch.randint(0, 100, (2, 5))
    >>> lp, ent = ek.linear_logprob_entropy(h, w, y, temperature=0.7)
    >>> ref = torch.log_softmax((h @ w.T) / 0.7, -1)
    >>> torch.allclose(lp, ref.gather(-1, y[..., None])[..., 0], atol=1e-5)
    True
    >>> torch.allclose(ent, -(ref.exp() * ref).sum(-1), atol=1e-4)
    True
    """
    return logprob_entropy(hidden, weight, labels, bias=bias, temperature=temperature, ignore_index=ignore_index,
                           return_entropy=return_entropy, impl=impl, logits_budget=logits_budget, filter_eps=filter_eps,
                           accum_fp32=accum_fp32, process_group=process_group, vocab_offset=vocab_offset)


def logprob_entropy(hidden, weight, labels, *, bias=None, temperature=1.0, ignore_index=-100, return_entropy=True,
                    impl="auto", logits_budget=0, filter_eps=None, accum_fp32=False, process_group=None, vocab_offset=None,
                    labels_name="labels", weight_name="weight"):
    """:func:`linear_logprob_entropy` for the wrappers that call ``labels`` / ``weight``
    something else (``input_ids`` / ``lm_head_weight``): error messages name the argument the
    user passed.

    Example
    -------
    >>> logprob_entropy(torch.randn(2, 4), torch.randn(6, 4), torch.tensor([0.0, 1.0]), labels_name="input_ids")
    Traceback (most recent call last):
    ...
    TypeError: input_ids must be int64 or int32 class indices, got torch.float32
    """
    weight, bias, process_group, vocab_offset = unwrap_lm_head(weight, bias, process_group, vocab_offset, weight_name)
    _validation.check_linear_head(hidden, weight, labels, bias, targets_name=labels_name, weight_name=weight_name)
    inv_t = 1.0 / _validation.check_positive_scalar("temperature", temperature)
    _validation.check_int("ignore_index", ignore_index)
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    check_filter_eps(filter_eps, allow_auto=False)
    _validation.check_bool("return_entropy", return_entropy)
    _validation.check_bool("accum_fp32", accum_fp32)
    _validation.check_int("logits_budget", logits_budget, 0)
    if process_group is not None and impl not in ("auto", "fused"):
        raise ValueError(f"with a process_group (vocabulary-parallel weight) impl must be 'auto' or 'fused', got {impl!r}")
    check_vocab_parallel(process_group, vocab_offset)
    if process_group is None:
        _validation.check_class_indices(labels_name, labels, weight.shape[0], ignore_index)

    lead_shape, h, w, y = flatten_head(hidden, weight, labels)
    vocab = w.shape[0]
    options = LinearSoftmaxOptions(inv_temperature=inv_t, ignore_index=ignore_index, filter_eps=float(filter_eps or 0.0),
                                   accum_fp32=accum_fp32, process_group=process_group, vocab_offset=vocab_offset)
    if process_group is not None:
        impl = "vocab_parallel"
    if impl == "auto":
        if not _backend.use_triton(h):
            impl = "reference"
        elif h.shape[0] * w.shape[0] * h.element_size() <= logits_budget:
            impl = "stored"
        elif filter_eps is None and not torch.compiler.is_compiling():
            # cuBLAS GEMMs with one chunk of logits alive: the fused Triton backward took 4x the
            # stored path's time on an H100 (246 against 51 ms at 8192x4096x151936); this path
            # is the stored one plus one GEMM (~12 ms there). Chosen with or without a backward,
            # so that log-probs computed under no_grad (an RL step's old log-probs) and with
            # gradients round alike. Not while compiling: its Python chunk loop specialises the
            # graph on N (one recompile per token count); not with gradient filtering (fused only).
            impl = "chunked"
        else:
            impl = "fused"
    if impl == "vocab_parallel":
        stats, vocab = vocab_parallel_stats(h, w, bias, y, options, "labels")
    elif impl == "fused":
        stats = linear_softmax_stats(h, w, bias, y, *options.fused_args())
    elif impl == "stored":
        stats, _ = linear_softmax_stats_stored(h, w, bias, y, *options.stored_args())
    elif impl == "chunked":
        options = dataclasses.replace(options, chunk_size=chunk_tokens(h.shape[0], vocab, h.element_size()))
        stats = linear_softmax_stats_chunked(h, w, bias, y, *options.chunked_args())
    else:
        stats = _reference_stats(h, w, bias, y, inv_t)

    ignored = y == ignore_index
    out_of_range = ~ignored & ((y < 0) | (y >= vocab))
    zeros = torch.zeros_like(stats[:, 0])
    logprobs = torch.where(ignored, zeros, stats[:, 3] - stats[:, 0])
    logprobs = torch.where(out_of_range, torch.full_like(logprobs, float("nan")), logprobs).reshape(lead_shape)
    if not return_entropy:
        return logprobs, None
    entropy = torch.where(ignored, zeros, stats[:, 1]).reshape(lead_shape)
    return logprobs, entropy
