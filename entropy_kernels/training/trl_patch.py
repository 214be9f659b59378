"""Back TRL's fused LM head and its 80/20 entropy mask with this package's kernels.

TRL (1.16) trainers — GRPO, RLOO, KTO, DPO, SFT — call ``add_fused_lm_head(model, …)`` and then
``model(**inputs, labels=labels, fused_lm_head=True)``, which returns ``outputs.log_probs`` and
``outputs.entropy`` computed by TRL's chunked kernel (``trl.kernels.ChunkedLogProbFunction``)
from the last hidden state. :func:`patch_trl` swaps that kernel for
:func:`entropy_kernels.linear_logprob_entropy`, so every model TRL patches — before or after the
call — scores its tokens with our op; and ``GRPOTrainer.get_high_entropy_mask`` (the
``top_entropy_quantile < 1`` rule) for :func:`entropy_kernels.high_entropy_mask`, which selects
on the device instead of padding and gathering every rank's entropies to ``torch.quantile``.

What is left to TRL's own kernel (the call is passed through unchanged): a
``final_logit_softcapping`` model (Gemma 2/3), the extra outputs ``log_sum_sq_probs`` /
``mean_logits`` / ``is_top1``, and a non-positive ``logit_scale``. Nothing else of TRL changes,
and :meth:`TRLPatch.undo` (or leaving the ``with`` block) restores it exactly.

The entropy mask has two rules. ``"trl"`` (the default) is TRL's own: every valid token whose
entropy is ``>= torch.quantile(valid_entropies, 1 - ρ)`` (linear interpolation, every tie
kept), the same mask bit for bit — but the two order statistics the quantile interpolates come
from the radix select of :mod:`entropy_kernels.ops.distributed_select`, on the device, with
constant-size collectives over all processes instead of TRL's padding and gathering of every
entropy to one sort (and no host synchronisation). ``"top_k"`` is
:func:`entropy_kernels.high_entropy_mask`: exactly ``k = ceil(ρ·n)`` tokens, ties broken by
position (it keeps one token more than TRL's rule when the fractional part of ``ρ·n`` is below
``ρ``, and never more than ``k`` on ties).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..ops.distributed_select import key_value, kth_largest_key
from ..ops.high_entropy_mask import high_entropy_mask
from ..ops.linear_logprob_entropy import linear_logprob_entropy
from ..selection_keys import float_key

SUPPORTED_TRL = ("1.16",)
MASK_RULES = ("trl", "top_k")
_OUR_OUTPUTS = frozenset({"log_probs", "entropy"})


def _trl_modules():
    """TRL's module that holds the fused head's kernel, and GRPOTrainer; a clear error otherwise."""
    try:
        import trl
        import trl.trainer.utils as trl_utils
        from trl.trainer.grpo_trainer import GRPOTrainer
    except ImportError as e:  # pragma: no cover - exercised only without TRL
        raise ImportError(f"entropy_kernels.training.trl_patch needs TRL ({' or '.join(SUPPORTED_TRL)}): {e}") from e
    missing = [name for name, ok in (
        ("trl.trainer.utils._ChunkedLogProbFunction", hasattr(trl_utils, "_ChunkedLogProbFunction")),
        ("trl.trainer.utils.add_fused_lm_head", hasattr(trl_utils, "add_fused_lm_head")),
        ("GRPOTrainer.get_high_entropy_mask", hasattr(GRPOTrainer, "get_high_entropy_mask")),
    ) if not ok]
    if missing:
        raise RuntimeError(
            f"entropy_kernels cannot patch TRL {trl.__version__}: it has no {', '.join(missing)} "
            f"(the hooks of TRL {' / '.join(SUPPORTED_TRL)}); leave TRL unpatched or install a supported version")
    return trl_utils, GRPOTrainer


class LogProbEntropyHead:
    """Drop-in for TRL's ``ChunkedLogProbFunction``: ``apply`` takes TRL's arguments and returns
    TRL's 5-tuple ``(log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1)``, the first two
    from :func:`entropy_kernels.linear_logprob_entropy` and the others ``None``. Calls we do not
    cover go to ``fallback`` (TRL's own class) unchanged.

    Example
    -------
    >>> import torch
    >>> head = LogProbEntropyHead(fallback=None)
    >>> h, w, y = torch.randn(6, 16), torch.randn(50, 16), torch.randint(0, 50, (6,))
    >>> lp, ent, *rest = head.apply(h, w, None, y, 0.7, 32768, None, 1.0, ("log_probs", "entropy"))
    >>> ref = torch.log_softmax(h @ w.T / 0.7, -1)
    >>> torch.allclose(lp, ref[torch.arange(6), y], atol=1e-5), rest
    (True, [None, None, None])
    """

    def __init__(self, fallback):
        self.fallback = fallback

    def covers(self, final_logit_softcapping, logit_scale, outputs) -> bool:
        """Whether this call is ours: no softcap, only log-probs / entropy, a positive finite scale."""
        scale = float(logit_scale)
        return (final_logit_softcapping is None and set(outputs) <= _OUR_OUTPUTS
                and scale > 0.0 and scale != float("inf"))

    def apply(self, hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
              targets: torch.Tensor, temperature: float, chunk_size: int,
              final_logit_softcapping: Optional[float] = None, logit_scale: float = 1.0,
              outputs: Tuple[str, ...] = ("log_probs",)):
        if not self.covers(final_logit_softcapping, logit_scale, outputs):
            return self.fallback.apply(hidden, weight, bias, targets, temperature, chunk_size,
                                       final_logit_softcapping, logit_scale, outputs)
        # TRL's kernel runs the projection in the autocast dtype when autocast is on, else in the
        # hidden state's dtype (fp32 under cast_lm_head_to_fp32): do the same, then leave autocast
        # off so our op sees one dtype.
        device_type = hidden.device.type
        autocast = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type) if autocast else hidden.dtype
        bias = None if bias is None else bias.to(dtype)
        with torch.autocast(device_type, enabled=False):
            # logits · scale / T == logits / (T / scale): the scale folds into the temperature.
            log_probs, entropy = linear_logprob_entropy(
                hidden.to(dtype), weight.to(dtype), targets, bias=bias,
                temperature=float(temperature) / float(logit_scale),
                return_entropy="entropy" in outputs)
        return log_probs, entropy, None, None, None


def quantile_mask(entropies: torch.Tensor, mask: torch.Tensor, threshold: float, group=None) -> torch.Tensor:
    """TRL's 80/20 rule exactly — ``mask & (entropies >= torch.quantile(valid, threshold))`` with
    the linear interpolation of ``torch.quantile`` in float32, over the valid tokens of every
    process of ``group`` (``None``: this one) — without gathering or sorting the entropies: the
    two order statistics come from a radix select (4 all-reduces of 256 bins each), no host sync.
    NaN entropies rank lowest (torch.quantile would return NaN and keep nothing).

    Example
    -------
    >>> ent = torch.tensor([[0.1, 2.0, 0.5, 3.0, 1.0]])
    >>> valid = torch.tensor([[1, 1, 1, 1, 0]])
    >>> quantile_mask(ent, valid, 0.5)       # quantile(0.1, 0.5, 2.0, 3.0; 0.5) = 1.25
    tensor([[False,  True, False,  True, False]])
    """
    valid = mask.bool()
    key = torch.where(valid, float_key(entropies.detach()), 0)
    n = valid.sum().reshape(1)
    if group is not None:
        import torch.distributed as dist

        dist.all_reduce(n, op=dist.ReduceOp.SUM, group=group)
    n = n.reshape(())
    # torch.quantile: rank = q·(n-1) in the data's dtype, lerp between the values at floor / ceil
    rank = torch.tensor(float(threshold), dtype=torch.float32, device=key.device) * (n - 1).clamp(min=0).float()
    below, above = rank.floor(), rank.ceil()
    value_below = key_value(kth_largest_key(key, n - below.long(), group)[0])  # ascending [below] = descending [n-below]
    value_above = key_value(kth_largest_key(key, n - above.long(), group)[0])
    cut = torch.lerp(value_below, value_above, rank - below)
    keep = ((entropies * mask.float()) >= cut) & valid
    return keep & (n > 0)


def get_high_entropy_mask(trainer, entropies: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """``GRPOTrainer.get_high_entropy_mask`` on this package's selection: by the patch's rule,
    TRL's own quantile rule (:func:`quantile_mask`, the default) or the top ``k = ceil(ρ·n)``
    (:func:`entropy_kernels.high_entropy_mask`), ``ρ = 1 - threshold``; selected on the device
    without gathering entropies, over all processes (those TRL's own method gathers from).
    ``ρ <= 0`` goes to TRL's method.

    Example
    -------
    >>> import torch
    >>> class One:  # a trainer on one process
    ...     class accelerator: num_processes = 1
    >>> ent = torch.tensor([[0.1, 2.0, 0.5, 3.0]])
    >>> get_high_entropy_mask(One(), ent, torch.ones(1, 4), threshold=0.5)
    tensor([[False,  True, False,  True]])
    """
    top_fraction = 1.0 - float(threshold)
    if not 0.0 < top_fraction <= 1.0:
        return trainer._ek_trl_original_mask(entropies, mask, threshold)
    num_processes = getattr(getattr(trainer, "accelerator", None), "num_processes", 1)
    group = None
    if num_processes > 1:
        import torch.distributed as dist

        group = dist.group.WORLD
    if getattr(trainer, "_ek_trl_mask_rule", "trl") == "top_k":
        return high_entropy_mask(entropies, mask, top_fraction, process_group=group)
    return quantile_mask(entropies, mask, float(threshold), group)


class TRLPatch:
    """What :func:`patch_trl` changed; :meth:`undo` (or leaving a ``with`` block) restores it.

    Example
    -------
    >>> from entropy_kernels.training.trl_patch import patch_trl
    >>> with patch_trl():          # doctest: +SKIP
    ...     trainer.train()         # TRL's fused LM head now runs entropy_kernels' op
    """

    def __init__(self, trl_utils, grpo_cls, head: bool, entropy_mask: bool, rule: str = "trl"):
        self._trl_utils, self._grpo_cls = trl_utils, grpo_cls
        self._original_head = trl_utils._ChunkedLogProbFunction
        self._original_mask = grpo_cls.__dict__.get("get_high_entropy_mask")
        self.head, self.entropy_mask, self.active = head, entropy_mask, True
        if head:
            trl_utils._ChunkedLogProbFunction = LogProbEntropyHead(self._original_head)
        if entropy_mask:
            original = grpo_cls.get_high_entropy_mask
            grpo_cls._ek_trl_original_mask = original
            grpo_cls._ek_trl_mask_rule = rule
            grpo_cls.get_high_entropy_mask = get_high_entropy_mask

    def undo(self) -> None:
        """Put TRL's own kernel and mask back (idempotent)."""
        if not self.active:
            return
        if self.head:
            self._trl_utils._ChunkedLogProbFunction = self._original_head
        if self.entropy_mask:
            if self._original_mask is None:  # it was inherited: remove ours, the base's shows again
                del self._grpo_cls.get_high_entropy_mask
            else:
                self._grpo_cls.get_high_entropy_mask = self._original_mask
            del self._grpo_cls._ek_trl_original_mask
            del self._grpo_cls._ek_trl_mask_rule
        self.active = False
        global _ACTIVE
        if _ACTIVE is self:
            _ACTIVE = None

    def __enter__(self) -> "TRLPatch":
        return self

    def __exit__(self, *exc) -> None:
        self.undo()


_ACTIVE: Optional[TRLPatch] = None


def patch_trl(*, fused_lm_head: bool = True, entropy_mask: bool = True, entropy_mask_rule: str = "trl") -> TRLPatch:
    """Make TRL's ``fused_lm_head=True`` forward and GRPO's 80/20 entropy mask use this
    package's kernels, for every trainer and model (patched before or after this call).

    Parameters
    ----------
    fused_lm_head : bool
        Replace the kernel behind ``add_fused_lm_head`` (log-probs and entropies from the last
        hidden state, no ``[B, T, V]`` logits; TRL's temperature and logit scale; labels ``-100``
        are handled by TRL as before).
    entropy_mask : bool
        Replace ``GRPOTrainer.get_high_entropy_mask`` (``top_entropy_quantile < 1``).
    entropy_mask_rule : "trl" | "top_k"
        ``"trl"``: TRL's quantile rule, the same masks (:func:`quantile_mask`); ``"top_k"``:
        exactly ``ceil(ρ·n)`` tokens (:func:`entropy_kernels.high_entropy_mask`).

    Returns
    -------
    :class:`TRLPatch`, whose ``undo()`` restores TRL; usable as a context manager. Patching twice
    raises ``RuntimeError``; an unsupported TRL raises ``RuntimeError`` naming the missing hook.

    Example
    -------
    >>> from entropy_kernels.training.trl_patch import patch_trl
    >>> patch = patch_trl()                      # doctest: +SKIP
    >>> trainer = GRPOTrainer(model=..., ...)    # doctest: +SKIP
    >>> trainer.train(); patch.undo()            # doctest: +SKIP
    """
    global _ACTIVE
    for name, value in (("fused_lm_head", fused_lm_head), ("entropy_mask", entropy_mask)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    if entropy_mask_rule not in MASK_RULES:
        raise ValueError(f"entropy_mask_rule must be one of {MASK_RULES}, got {entropy_mask_rule!r}")
    if _ACTIVE is not None:
        raise RuntimeError("TRL is already patched by entropy_kernels: call undo() on the first patch first")
    trl_utils, grpo_cls = _trl_modules()
    _ACTIVE = TRLPatch(trl_utils, grpo_cls, fused_lm_head, entropy_mask, entropy_mask_rule)
    return _ACTIVE


def unpatch_trl() -> None:
    """Undo :func:`patch_trl` if it is active (no-op otherwise).

    Example
    -------
    >>> from entropy_kernels.training.trl_patch import unpatch_trl
    >>> unpatch_trl()
    """
    if _ACTIVE is not None:
        _ACTIVE.undo()
