"""Make a transformers causal LM compute its training loss with
:func:`entropy_kernels.linear_cross_entropy`, so ``model(input_ids, labels=labels)`` never builds
``[batch, seq, vocab]`` logits.

The patched ``forward`` reproduces transformers' own loss (``ForCausalLMLoss``): labels shifted
by one with ``-100`` ignored, mean over non-ignored tokens, or ``sum / num_items_in_batch`` when
the Trainer passes ``num_items_in_batch``; ``shift_labels`` is honoured; Gemma-2/3's
``final_logit_softcapping`` becomes the op's ``softcap``. Without labels (generation, eval
without loss) the original forward runs unchanged.
"""

from __future__ import annotations

import functools
import types
from typing import Any, Optional

import torch

from .. import _validation
from ..ops.linear_cross_entropy import check_options, linear_cross_entropy

# Families whose *ForCausalLM.forward is `self.model(...)` → `self.lm_head(hidden)` → loss.
SUPPORTED = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "Phi3ForCausalLM",
    "PhiForCausalLM",
)


def _keep_positions(hidden: torch.Tensor, logits_to_keep) -> torch.Tensor:
    if isinstance(logits_to_keep, int):
        return hidden if logits_to_keep == 0 else hidden[:, -logits_to_keep:, :]
    return hidden[:, logits_to_keep, :]


def _loss_dtypes(hidden: torch.Tensor, weight: torch.Tensor):
    """Under autocast the LM head would run in the autocast dtype; otherwise follow the weight."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        return hidden.to(dtype), weight.to(dtype)
    return hidden.to(weight.dtype), weight


def _patched_forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                     inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, **kwargs: Any):
    options = self._ek_loss_options
    original = self._ek_original_forward
    if labels is None:  # transformers computes a loss only when labels are given
        return original(self, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        past_key_values=past_key_values, inputs_embeds=inputs_embeds, labels=None,
                        use_cache=use_cache, logits_to_keep=logits_to_keep, **kwargs)
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return_dict = kwargs.pop("return_dict", None)
    num_items_in_batch = kwargs.pop("num_items_in_batch", None)
    shift_labels = kwargs.pop("shift_labels", None)
    ignore_index = kwargs.pop("ignore_index", -100)
    outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
    hidden = _keep_positions(outputs.last_hidden_state, logits_to_keep)
    softcap = getattr(self.config, "final_logit_softcapping", None)
    targets, shift = (shift_labels, False) if shift_labels is not None else (labels, True)
    h, w = _loss_dtypes(hidden, self.lm_head.weight)
    bias = self.lm_head.bias.to(w.dtype) if self.lm_head.bias is not None else None
    loss = linear_cross_entropy(
        h, w, targets.to(h.device), bias=bias, ignore_index=ignore_index, softcap=softcap, shift=shift,
        reduction="sum" if num_items_in_batch is not None else "mean",
        impl=options["impl"], filter_eps=options["filter_eps"], accum_fp32=options["accum_fp32"],
        chunk_size=options["chunk_size"],
    )
    if num_items_in_batch is not None:
        loss = loss / (num_items_in_batch.to(loss.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch)
    logits = None
    if options["return_logits"]:
        logits = self.lm_head(hidden)
        if softcap is not None:
            logits = softcap * torch.tanh(logits / softcap)
    out = CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values,
                                 hidden_states=outputs.hidden_states, attentions=outputs.attentions)
    return out.to_tuple() if return_dict is False else out


def patch_causal_lm(
    target,
    *,
    impl: str = "auto",
    filter_eps="auto",
    accum_fp32: bool = False,
    chunk_size: Optional[int] = None,
    return_logits: bool = False,
    force: bool = False,
):
    """Patch a transformers ``*ForCausalLM`` instance or class to use the cut cross-entropy.

    Parameters
    ----------
    target : model instance or class
        One of :data:`SUPPORTED` (or any with the same ``model``/``lm_head`` structure, with
        ``force=True``). Patching a class affects every instance, existing and future.
    impl, filter_eps, accum_fp32, chunk_size
        Passed to :func:`entropy_kernels.linear_cross_entropy`.
    return_logits : bool
        Also compute ``logits`` when labels are given (defeats the memory saving; for debugging).

    Returns the target. Undo with :func:`unpatch_causal_lm`.

    Example
    -------
    >>> from transformers import LlamaConfig, LlamaForCausalLM            # doctest: +SKIP
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
    ...                                      num_hidden_layers=1, num_attention_heads=4))  # doctest: +SKIP
    >>> patch_causal_lm(model)                                             # doctest: +SKIP
    >>> out = model(input_ids, labels=input_ids)   # out.loss as before, out.logits is None  # doctest: +SKIP
    """
    _validation.check_bool("force", force)
    _validation.check_bool("return_logits", return_logits)
    check_options(impl=impl, filter_eps=filter_eps, accum_fp32=accum_fp32, chunk_size=chunk_size)
    if target is None or isinstance(target, (str, int, float, bool, torch.Tensor)):
        raise TypeError(f"target must be a causal LM (an instance or a class), got {type(target).__name__}")
    cls = target if isinstance(target, type) else type(target)
    if not force and cls.__name__ not in SUPPORTED:
        raise ValueError(f"target {cls.__name__} is not a supported causal LM ({', '.join(SUPPORTED)}); pass force=True to try anyway")
    options = dict(impl=impl, filter_eps=filter_eps, accum_fp32=accum_fp32, chunk_size=chunk_size, return_logits=return_logits)
    if isinstance(target, type):
        if "_ek_original_forward" not in target.__dict__:
            target._ek_original_forward = target.forward
        target._ek_loss_options = options
        target.forward = functools.wraps(target._ek_original_forward)(_patched_forward)
    else:
        if "_ek_original_forward" not in target.__dict__:
            target._ek_original_forward = type(target).forward
        target._ek_loss_options = options
        target.forward = types.MethodType(_patched_forward, target)
    return target


def unpatch_causal_lm(target):
    """Restore the original ``forward`` of a target patched by :func:`patch_causal_lm`."""
    if "_ek_original_forward" not in getattr(target, "__dict__", {}):
        raise ValueError(f"target {target!r} was not patched by entropy_kernels")
    if isinstance(target, type):
        target.forward = target._ek_original_forward
    else:
        del target.forward
    del target._ek_original_forward, target._ek_loss_options
    return target
