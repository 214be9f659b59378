"""Top-H in decoding loops: a transformers ``LogitsProcessor``, a switch that makes
transformers' own ``generate(top_h=...)`` use the kernel, and a minimal sampling loop for users
without transformers."""

from __future__ import annotations

import math
from numbers import Real
from typing import Callable, Optional, Union

import torch

from .. import _validation
from ..ops.top_h import check_options, top_h_mask, top_h_sample

try:  # subclass transformers' base class when it is installed, so isinstance checks pass
    from transformers import LogitsProcessor as _Base
except Exception:  # pragma: no cover - transformers is optional
    _Base = object


class TopHLogitsProcessor(_Base):
    """Sets the logits of tokens outside the Top-H kept set to ``filter_value``.

    Use it in ``model.generate(..., do_sample=True, logits_processor=[TopHLogitsProcessor(0.4)])``
    or in any loop that post-processes ``[batch, vocab]`` scores. ``top_h`` is a float in (0, 1],
    or a per-row float tensor ``[batch]`` (one α per row of the scores it is called on; its
    values are not checked, and it is moved to the scores' device at each call).

    Example
    -------
    >>> import torch
    >>> from entropy_kernels.decoding import TopHLogitsProcessor
    >>> proc = TopHLogitsProcessor(0.9)
    >>> proc(None, torch.tensor([[5.0, 4.0, 1.0, 0.0]]))
    tensor([[5., 4., -inf, -inf]])
    >>> TopHLogitsProcessor(torch.tensor([0.9, 0.01]))(None, torch.tensor([[5.0, 4.0, 1.0, 0.0]] * 2))
    tensor([[5., 4., -inf, -inf],
            [5., -inf, -inf, -inf]])
    """

    def __init__(self, top_h: Union[float, torch.Tensor], *, mode: str = "transformers", top_n: int = 100, filter_value: float = -float("inf")):
        # checked here, not at the first generation step
        if isinstance(top_h, torch.Tensor):
            _validation.check_tensor("top_h", top_h)
            _validation.check_float_dtype("top_h", top_h)
            if top_h.dim() > 1:
                raise ValueError(f"top_h must be a float or a [batch] tensor, got shape {tuple(top_h.shape)}")
        else:
            _validation.check_real("top_h", top_h, 0.0, 1.0, low_open=True)
            top_h = float(top_h)
        check_options(0.5, 1.0, mode, top_n)
        if isinstance(filter_value, bool) or not isinstance(filter_value, Real) or math.isnan(filter_value):
            raise TypeError(f"filter_value must be a number (e.g. -inf), not NaN, got {filter_value!r}")
        self.top_h, self.mode, self.top_n, self.filter_value = top_h, mode, top_n, filter_value

    def __call__(self, input_ids: Optional[torch.Tensor], scores: torch.Tensor) -> torch.Tensor:
        top_h = self.top_h
        if isinstance(top_h, torch.Tensor) and isinstance(scores, torch.Tensor):
            top_h = top_h.to(scores.device, non_blocking=True)
        keep = top_h_mask(scores, top_h, mode=self.mode, top_n=self.top_n)
        return scores.masked_fill(~keep, self.filter_value)


_ORIGINAL_CALL = None


def use_kernel_for_transformers_top_h(enabled: bool = True) -> None:
    """Make transformers' own ``TopHLogitsWarper`` (``generate(top_h=α)``) run the kernel.

    The kept set is the same (transformers mode), so generation with a fixed seed gives the same
    tokens, minus the warper's topk/scatter/clone round trips. ``enabled=False`` restores it.

    Example
    -------
    >>> from entropy_kernels.decoding import use_kernel_for_transformers_top_h
    >>> use_kernel_for_transformers_top_h()          # doctest: +SKIP
    >>> model.generate(ids, do_sample=True, top_h=0.4)   # doctest: +SKIP
    """
    global _ORIGINAL_CALL
    from transformers.generation.logits_process import TopHLogitsWarper

    if enabled:
        if _ORIGINAL_CALL is None:
            _ORIGINAL_CALL = TopHLogitsWarper.__call__

        def __call__(self, input_ids, scores):
            keep = top_h_mask(scores, self.top_h, mode="transformers", top_n=self.top_n)
            return scores.masked_fill(~keep, self.filter_value)

        TopHLogitsWarper.__call__ = __call__
    elif _ORIGINAL_CALL is not None:
        TopHLogitsWarper.__call__ = _ORIGINAL_CALL
        _ORIGINAL_CALL = None


@torch.no_grad()
def top_h_generate(
    next_token_logits: Callable[[torch.Tensor], torch.Tensor],
    input_ids: torch.Tensor,
    max_new_tokens: int,
    alpha: float,
    *,
    temperature: float = 1.0,
    mode: str = "transformers",
    eos_token_id: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """A minimal Top-H sampling loop: ``next_token_logits(ids [B, T]) -> [B, V]`` is called once
    per step; returns ``[B, T + new]``. Finished rows (``eos_token_id``) keep emitting it.

    Example
    -------
    >>> import torch
    >>> from entropy_kernels.decoding import top_h_generate
    >>> table = torch.randn(50, 50)                        # a toy bigram "model"
    >>> out = top_h_generate(lambda ids: table[ids[:, -1]], torch.tensor([[1], [2]]), 5, 0.4)
    >>> out.shape
    torch.Size([2, 6])
    """
    if not callable(next_token_logits):
        raise TypeError(f"next_token_logits must be a function ids -> logits, got {type(next_token_logits).__name__}")
    _validation.check_tensor("input_ids", input_ids)
    if input_ids.dtype not in (torch.int64, torch.int32) or input_ids.dim() != 2:
        raise ValueError(f"input_ids must be an int64/int32 [B, T] tensor, got {input_ids.dtype} of shape {tuple(input_ids.shape)}")
    _validation.check_int("max_new_tokens", max_new_tokens, 0)
    if eos_token_id is not None:
        _validation.check_int("eos_token_id", eos_token_id)
    _validation.check_generator("generator", generator)
    check_options(alpha, temperature, mode, 100)
    ids = input_ids
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        nxt = top_h_sample(next_token_logits(ids), alpha, temperature=temperature, mode=mode, generator=generator)
        if eos_token_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
            done = done | (nxt == eos_token_id)
        ids = torch.cat([ids, nxt.unsqueeze(1)], dim=1)
    return ids
