"""Host launchers of the Clip-Cov / KL-Cov selection and loss kernels and of
``high_entropy_mask``'s top-values select, in two forms:

- one launch per phase (:func:`stats`, :func:`keys`, :func:`select`, :func:`policy_loss`,
  :func:`top_values`): what torch.compile's ops trace (the graph sees each launch), the
  global selection across ranks and ``EK_COV_FUSED=0`` use; ≤ 4 programs per SM;
- one cooperative launch of :mod:`.cov_fused` (:func:`fused`, :func:`select_fused`,
  :func:`top_values_fused`): the eager path, one program per SM. A device that refuses the
  cooperative launch raises :class:`FusedLaunchUnavailable` (and is remembered), and the ops
  fall back to the phase launches.

No host synchronisation either way: ``k`` never leaves the device.
"""

from __future__ import annotations

import warnings

import functools
from typing import Callable, Dict, Optional, Tuple

import torch

from .. import config
from ._launch import cdiv, launcher, next_pow2, sm_count
from .cov_fused import CTRL_FUSED_SIZE, _fused_kernel
from .cov_phases import N_STATS, _keys_phase, _stats_phase
from .cov_policy_loss import _combine_phase, _loss_phase
from .radix_select import CTRL_SIZE, _hist2_phase, _hist3_phase, _write_phase, ratio_args, split_ratio

TOP_VALUES_MODE = 2  # the MODE of high_entropy_mask's keys (clip_mode gives 1 for Clip-Cov, 0 for KL-Cov)


# ---- launch geometry ---------------------------------------------------------------------------


def _grid_of(n: int, max_programs: int, block: int) -> Tuple[int, int]:
    blocks = max(1, cdiv(n, block))
    programs = min(blocks, max_programs)
    chunk = cdiv(blocks, programs) * block
    return cdiv(max(n, 1), chunk), chunk


_grid_cached = functools.lru_cache(maxsize=256)(_grid_of)


def _grid(n: int, device: torch.device, block: int) -> Tuple[int, int]:
    """(programs, chunk): ≤ 4 programs per SM, each owning a contiguous multiple of ``block``
    (cached per size: this runs on every step's host path; SymInts while tracing are not)."""
    programs = 4 * sm_count(device)
    return _grid_cached(n, programs, block) if isinstance(n, int) else _grid_of(n, programs, block)


def _fused_grid(n: int, device: torch.device, block: int) -> Tuple[int, int]:
    """At most one program per SM, so that a cooperative launch always fits (one program of any
    launchable kernel fits on an SM); one program under the interpreter, which runs programs one
    after another and would wait forever at a barrier."""
    programs = sm_count(device) if device.type == "cuda" else 1
    return _grid_cached(n, programs, block)


MAX_BLOCK = 1024  # tokens per block iteration; tests lower it to exercise many programs and chunks


def _block(n: int) -> int:
    return max(32, min(MAX_BLOCK, next_pow2(max(n, 1))))


def _warps(block: int, most: int = 4) -> int:
    """Warps for ``[block]`` tensors: never more threads than elements. A smaller tensor is
    replicated across threads, and ``tl.histogram`` over a replicated layout has over-counted
    in some Triton versions (the interpreter, which has no layouts, cannot show it)."""
    return max(1, min(most, block // 32))


# The fused kernel runs one program per SM (the phase launches: four), so it gets more warps to
# keep as many loads in flight per SM.
FUSED_MAX_WARPS = 8


def _p_block(programs: int) -> int:
    return max(16, min(1024, next_pow2(programs)))


# ---- one launch per phase ----------------------------------------------------------------------


def stats(log_prob: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(Σ m·A, Σ m·lp, Σ m, #valid)`` fp64 ``[4]`` (contiguous inputs of equal shape)."""
    n = log_prob.numel()
    block = _block(n)
    programs, chunk = _grid(n, log_prob.device, block)
    part = torch.empty((programs, 8), dtype=torch.float64, device=log_prob.device)
    launcher(_stats_phase, log_prob)[(programs,)](
        lp_ptr=log_prob, adv_ptr=advantages, mask_ptr=mask, part_ptr=part, ctrl_ptr=part, N=n, chunk=chunk,
        ZERO_CTRL=False, BLOCK=block, num_warps=_warps(block),
    )
    return part[:, :N_STATS].sum(0)


def keys(
    log_prob, advantages, mask, old_log_prob: Optional[torch.Tensor], stats_: torch.Tensor, clip_mode: bool,
    clip_low: float, clip_high: float, lb: float, ub: float, seed: Optional[torch.Tensor], offset: Optional[torch.Tensor],
) -> torch.Tensor:
    """int64 selection keys (0 = never) from given (e.g. all-reduced) statistics ``stats_ [4]``."""
    n = log_prob.numel()
    block = _block(n)
    programs, chunk = _grid(n, log_prob.device, block)
    out = torch.empty(log_prob.shape, dtype=torch.int64, device=log_prob.device)
    dummy = out  # for the pointers this configuration does not read (HIST=False: no control block)
    launcher(_keys_phase, log_prob)[(programs,)](
        lp_ptr=log_prob, adv_ptr=advantages, mask_ptr=mask, old_ptr=old_log_prob if clip_mode else log_prob,
        part_ptr=stats_, n_parts=1, stats_ptr=stats_, key_ptr=out, ctrl_ptr=dummy, seed_ptr=seed if clip_mode else dummy,
        offset_ptr=offset if clip_mode and offset is not None else dummy, N=n, chunk=chunk,
        clip_low=clip_low, clip_high=clip_high, lb=lb, ub=ub, MODE=int(clip_mode), HIST=False, KEY64=True,
        ACC64=log_prob.dtype == torch.float64, HAS_OFFSET=offset is not None, P_BLOCK=16, BLOCK=block,
        num_warps=_warps(block),
    )
    return out


def select(
    log_prob, advantages, mask, old_log_prob: Optional[torch.Tensor], clip_mode: bool, ratio: float,
    clip_low: float, clip_high: float, lb: float, ub: float, seed: Optional[torch.Tensor], offset: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(selected bool [B, T], stats fp64 [4])``: the whole selection on the device, in five
    launches (:func:`fused` does it in one)."""
    n = log_prob.numel()
    dev = log_prob.device
    block = _block(n)
    programs, chunk = _grid(n, dev, block)
    part = torch.empty((programs, 8), dtype=torch.float64, device=dev)
    st = torch.empty((N_STATS,), dtype=torch.float64, device=dev)
    ctrl = torch.empty((CTRL_SIZE,), dtype=torch.int32, device=dev)
    key = torch.empty((n,), dtype=torch.int32, device=dev)
    rows = torch.empty((programs, 1024), dtype=torch.int32, device=dev)
    # bool tensors go to Triton as they are (``*i1``): a ``.view(torch.uint8)`` here would not
    # lower under torch.compile with torch < 2.13
    sel = torch.empty(log_prob.shape, dtype=torch.bool, device=dev)
    grid = (programs,)
    warps = _warps(block)
    launcher(_stats_phase, log_prob)[grid](
        lp_ptr=log_prob, adv_ptr=advantages, mask_ptr=mask, part_ptr=part, ctrl_ptr=ctrl, N=n, chunk=chunk,
        ZERO_CTRL=True, BLOCK=block, num_warps=warps,
    )
    launcher(_keys_phase, log_prob)[grid](
        lp_ptr=log_prob, adv_ptr=advantages, mask_ptr=mask, old_ptr=old_log_prob if clip_mode else log_prob,
        part_ptr=part, n_parts=programs, stats_ptr=st, key_ptr=key, ctrl_ptr=ctrl, seed_ptr=seed if clip_mode else part,
        offset_ptr=offset if clip_mode and offset is not None else part, N=n, chunk=chunk,
        clip_low=clip_low, clip_high=clip_high, lb=lb, ub=ub, MODE=int(clip_mode), HIST=True, KEY64=False,
        ACC64=log_prob.dtype == torch.float64, HAS_OFFSET=offset is not None, P_BLOCK=_p_block(programs), BLOCK=block,
        num_warps=warps,
    )
    _radix_select_launches(log_prob, key, st, ctrl, rows, sel, n, chunk, ratio, int(clip_mode), programs, block)
    return sel, st


def _radix_select_launches(probe, key, st, ctrl, rows, sel, n, chunk, ratio, mode, programs, block) -> None:
    """Radix passes 2 and 3 and the exact-k write over keys already histogrammed (pass 1)."""
    grid = (programs,)
    warps = _warps(block)
    r = ratio_args(ratio)
    launcher(_hist2_phase, probe)[grid](
        key_ptr=key, stats_ptr=st, ctrl_ptr=ctrl, N=n, chunk=chunk, **r, MODE=mode, BLOCK=block, num_warps=warps,
    )
    launcher(_hist3_phase, probe)[grid](
        key_ptr=key, stats_ptr=st, ctrl_ptr=ctrl, rows_ptr=rows, N=n, chunk=chunk, **r, MODE=mode, BLOCK=block,
        num_warps=warps,
    )
    launcher(_write_phase, probe)[grid](
        key_ptr=key, stats_ptr=st, ctrl_ptr=ctrl, rows_ptr=rows, sel_ptr=sel, N=n, chunk=chunk, **r, MODE=mode,
        P_BLOCK=_p_block(programs), BLOCK=block, num_warps=warps,
    )


def _check_row_count(row_count: Optional[torch.Tensor], agg: int) -> None:
    if agg != 0 and row_count is None:
        raise ValueError("the seq-mean loss_agg_modes need row_count (Σ mask per sequence)")


def _loss_tail(given, mult: float) -> Tuple[Dict[str, float], Optional[torch.Tensor]]:
    """The kernels' ``den_hi, den_lo, den_mult`` arguments and the given-denominator tensor (or
    None). A Python ``given`` travels as ``den_hi + den_lo``: 48 bits (Triton passes Python
    floats as fp32), exact for integer counts below 2**48 and rounded beyond that (e.g. a count
    / dp_size that is not an integer). ``mult`` is one fp32 word: exact for integer factors below
    2**24 (verl's ``loss_scale_factor`` is an int)."""
    if isinstance(given, torch.Tensor):
        return {"den_hi": 0.0, "den_lo": 0.0, "den_mult": float(mult)}, given
    hi, lo, _ = split_ratio(float(given))
    return {"den_hi": hi, "den_lo": lo, "den_mult": float(mult)}, None


def policy_loss(
    old_log_prob, log_prob, advantages, mask, selected, stats_, row_count: Optional[torch.Tensor], clip_mode: bool,
    agg: int, clip_low: float, clip_high: float, kl_coef: float, weights: Optional[torch.Tensor] = None,
    given=0.0, mult: float = 1.0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, metrics [2], coef [B, T])``; ``coef = ∂loss/∂log_prob``. ``agg, given, mult``:
    the reduction and denominator of ``loss_aggregation.agg_normalization``; ``row_count``
    (Σ m per sequence, ``ops.cov_select.row_count``) is required by the seq-mean reductions
    (``agg`` 1, 2); ``weights``: per-token factors of the loss (verl's rollout_is_weights)."""
    _check_row_count(row_count, agg)
    den, den_t = _loss_tail(given, mult)
    b, t = log_prob.shape
    n = log_prob.numel()
    dev = log_prob.device
    acc64 = log_prob.dtype == torch.float64
    out_dt = torch.float64 if acc64 else torch.float32
    block = _block(n)
    programs, chunk = _grid(n, dev, block)
    part = torch.empty((programs, 8), dtype=torch.float64, device=dev)
    coef = torch.empty((b, t), dtype=out_dt, device=dev)
    loss = torch.empty((), dtype=out_dt, device=dev)
    metrics = torch.empty((2,), dtype=torch.float32, device=dev)
    # ``stats_`` stands in for the optional inputs a configuration does not read
    row_count = row_count if row_count is not None else stats_
    den_ptr = den_t if den_t is not None else stats_
    launcher(_loss_phase, log_prob)[(programs,)](
        old_ptr=old_log_prob, lp_ptr=log_prob, adv_ptr=advantages, mask_ptr=mask, sel_ptr=selected, stats_ptr=stats_,
        rowcnt_ptr=row_count, iw_ptr=weights if weights is not None else stats_, den_ptr=den_ptr, coef_ptr=coef,
        part_ptr=part, N=n, T=t, B=b, chunk=chunk, clip_low=clip_low, clip_high=clip_high, kl_coef=kl_coef, **den,
        CLIP=clip_mode, AGG=agg, HAS_IW=weights is not None, DEN_PTR=den_t is not None, ACC64=acc64, BLOCK=block,
        num_warps=_warps(block),
    )
    launcher(_combine_phase, log_prob)[(1,)](
        part_ptr=part, n_parts=programs, stats_ptr=stats_, rowcnt_ptr=row_count, den_ptr=den_ptr, loss_ptr=loss,
        metrics_ptr=metrics, B=b, **den, CLIP=clip_mode, AGG=agg, DEN_PTR=den_t is not None,
        P_BLOCK=_p_block(programs), num_warps=_warps(block),
    )
    return loss, metrics, coef


def top_values(values: torch.Tensor, mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """Bool mask (``values``' shape) of the ``max(1, ceil(ρ·#valid − 1e-9))`` valid (``mask != 0``)
    entries of largest ``float32(values)``, ties → lower flat index, NaN lowest; four launches
    (keys + histogram, two radix passes, the write) after a memset. Contiguous inputs."""
    n = values.numel()
    dev = values.device
    block = _block(n)
    programs, chunk = _grid(n, dev, block)
    ctrl = torch.zeros((CTRL_SIZE,), dtype=torch.int32, device=dev)
    key = torch.empty((n,), dtype=torch.int32, device=dev)
    rows = torch.empty((programs, 1024), dtype=torch.int32, device=dev)
    sel = torch.empty(values.shape, dtype=torch.bool, device=dev)
    # no statistics, no advantages, no randomness: ``values`` and ``ctrl`` stand in for those pointers
    launcher(_keys_phase, values)[(programs,)](
        lp_ptr=values, adv_ptr=values, mask_ptr=mask, old_ptr=values, part_ptr=ctrl, n_parts=programs, stats_ptr=ctrl,
        key_ptr=key, ctrl_ptr=ctrl, seed_ptr=ctrl, offset_ptr=ctrl, N=n, chunk=chunk, clip_low=0.0, clip_high=0.0,
        lb=0.0, ub=0.0, MODE=TOP_VALUES_MODE, HIST=True, KEY64=False, ACC64=False, HAS_OFFSET=False,
        P_BLOCK=_p_block(programs), BLOCK=block, num_warps=_warps(block),
    )
    _radix_select_launches(values, key, ctrl, ctrl, rows, sel, n, chunk, ratio, TOP_VALUES_MODE, programs, block)
    return sel


# ---- the one cooperative launch ----------------------------------------------------------------


class FusedLaunchUnavailable(RuntimeError):
    """The cooperative launch of the fused kernel failed on this device (e.g. fewer SMs usable
    than reported under MPS); callers fall back to one launch per phase."""


_FUSED_FAILED = set()  # CUDA device indices where the cooperative launch failed once


def fused_enabled(device: torch.device) -> bool:
    """Whether :func:`fused` may run on ``device``: CUDA (cooperative launch) or Triton's
    interpreter (one program, so the barriers are trivially met); ``EK_COV_FUSED=0`` turns it off.

    Example
    -------
    >>> fused_enabled(torch.device("cpu")) == config.CONFIG.cov_fused
    True
    """
    if not config.CONFIG.cov_fused:
        return False
    if device.type == "cuda":
        return device.index not in _FUSED_FAILED
    return device.type == "cpu"


def one_launch_or_phases(device: torch.device, one_launch: Callable, phases: Callable, what: str):
    """``one_launch()`` where :func:`fused_enabled` allows it, else ``phases()``; a device that
    refuses the cooperative launch (:class:`FusedLaunchUnavailable`) gets a warning naming
    ``what`` and ``phases()`` (it is remembered: later calls go to the phases directly).

    Example
    -------
    >>> one_launch_or_phases(torch.device("meta"), lambda: "one", lambda: "phases", "an example")
    'phases'
    """
    if fused_enabled(device):
        try:
            return one_launch()
        except FusedLaunchUnavailable as e:  # pragma: no cover - depends on the device
            warnings.warn(f"entropy_kernels: one-launch {what} unavailable ({e}); using one launch per phase")
    return phases()


def _fused_scratch(n: int, programs: int, dev: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """The fused kernel's zeroed control block (histograms, eligible count, barrier counters) and
    its int32 scratch: ``n`` keys, then one 1024-bin tie row per program."""
    ctrl = torch.zeros((CTRL_FUSED_SIZE,), dtype=torch.int32, device=dev)
    return ctrl, torch.empty((n + programs * 1024,), dtype=torch.int32, device=dev)


def _launch_fused(programs: int, dev: torch.device, block: int, **arguments) -> None:
    """``_fused_kernel`` on ``programs`` programs of ``block``-token iterations: a cooperative
    launch on CUDA (a plain one under the interpreter); a refused launch raises
    :class:`FusedLaunchUnavailable`."""
    options = {"launch_cooperative_grid": True} if dev.type == "cuda" else {}
    try:
        _fused_kernel[(programs,)](
            **arguments, P_BLOCK=_p_block(programs), BLOCK=block, num_warps=_warps(block, FUSED_MAX_WARPS), **options,
        )
    except RuntimeError as e:  # pragma: no cover - depends on the device
        _refused(e, dev)


def _refused(error: RuntimeError, device: torch.device) -> None:
    """Re-raise a failed cooperative launch as :class:`FusedLaunchUnavailable` (and remember the
    device), any other error as it is."""
    text = str(error).lower()
    if device.type != "cuda" or not any(s in text for s in ("cooperative", "too large", "not supported")):
        raise error
    _FUSED_FAILED.add(device.index)
    raise FusedLaunchUnavailable(str(error)) from error


# The selection-only launches (LOSS=False) read none of the loss's inputs and write none of its
# outputs: those pointers are None, the loss's scalars neutral values.
_SELECTION_ONLY = dict(
    rowcnt_ptr=None, iw_ptr=None, den_ptr=None, coef_ptr=None, loss_ptr=None, metrics_ptr=None, count_ptr=None,
    T=1, B=1, kl_coef=0.0, den_hi=0.0, den_lo=0.0, den_mult=1.0, LOSS=False, AGG=0, HAS_IW=False, DEN_PTR=False,
)


def fused(
    old_log_prob, log_prob, advantages, mask, row_count: Optional[torch.Tensor], clip_mode: bool, agg: int,
    ratio: float, clip_low: float, clip_high: float, lb: float, ub: float, kl_coef: float,
    seed: Optional[torch.Tensor], offset: Optional[torch.Tensor], weights: Optional[torch.Tensor] = None,
    given=0.0, mult: float = 1.0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The selection and the policy loss in one launch: ``(loss, metrics fp32 [3] = (pg_clipfrac,
    ppo_kl, pg_clipfrac_lower), n_selected int64 [], coef [B, T])``, ``coef = ∂loss/∂log_prob``;
    the same values as :func:`select` followed by :func:`policy_loss` (tests check it bit for bit).
    Raises :class:`FusedLaunchUnavailable` if the device refuses the cooperative launch."""
    _check_row_count(row_count, agg)
    den, den_t = _loss_tail(given, mult)
    b, t = log_prob.shape
    n = b * t
    dev = log_prob.device
    acc64 = log_prob.dtype == torch.float64
    out_dt = torch.float64 if acc64 else torch.float32
    block = _block(n)
    programs, chunk = _fused_grid(n, dev, block)
    part = torch.empty((programs + 1, 8), dtype=torch.float64, device=dev)  # last row: the statistics
    ctrl, scratch = _fused_scratch(n, programs, dev)
    sel = torch.empty((b, t), dtype=torch.bool, device=dev)
    coef = torch.empty((b, t), dtype=out_dt, device=dev)
    loss = torch.empty((), dtype=out_dt, device=dev)
    metrics = torch.empty((3,), dtype=torch.float32, device=dev)
    count = torch.empty((), dtype=torch.int64, device=dev)
    _launch_fused(
        programs, dev, block,
        old_ptr=old_log_prob, lp_ptr=log_prob, adv_ptr=advantages, mask_ptr=mask,
        seed_ptr=seed if clip_mode else None, offset_ptr=offset if clip_mode else None, rowcnt_ptr=row_count,
        iw_ptr=weights, den_ptr=den_t, part_ptr=part, stats_ptr=part[programs], ctrl_ptr=ctrl, key_ptr=scratch,
        rows_ptr=scratch[n:], sel_ptr=sel, coef_ptr=coef, loss_ptr=loss, metrics_ptr=metrics, count_ptr=count,
        N=n, T=t, B=b, chunk=chunk, clip_low=clip_low, clip_high=clip_high, lb=lb, ub=ub, kl_coef=kl_coef,
        **ratio_args(ratio), **den, MODE=int(clip_mode), LOSS=True, AGG=agg, HAS_IW=weights is not None,
        DEN_PTR=den_t is not None, ACC64=acc64, HAS_OFFSET=offset is not None,
    )
    return loss, metrics, count, coef


def select_fused(
    log_prob, advantages, mask, old_log_prob: Optional[torch.Tensor], clip_mode: bool, ratio: float,
    clip_low: float, clip_high: float, lb: float, ub: float, seed: Optional[torch.Tensor], offset: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`select` in one cooperative launch (after the memset of the control block): the
    same ``(selected bool [B, T], stats fp64 [4])``. Raises :class:`FusedLaunchUnavailable` if
    the device refuses the cooperative launch."""
    n = log_prob.numel()
    dev = log_prob.device
    block = _block(n)
    programs, chunk = _fused_grid(n, dev, block)
    part = torch.empty((programs + 1, 8), dtype=torch.float64, device=dev)  # last row: the statistics
    ctrl, scratch = _fused_scratch(n, programs, dev)
    sel = torch.empty(log_prob.shape, dtype=torch.bool, device=dev)
    stats_ = part[programs]
    _launch_fused(
        programs, dev, block, **_SELECTION_ONLY,
        old_ptr=old_log_prob if clip_mode else None, lp_ptr=log_prob, adv_ptr=advantages, mask_ptr=mask,
        seed_ptr=seed if clip_mode else None, offset_ptr=offset if clip_mode else None, part_ptr=part,
        stats_ptr=stats_, ctrl_ptr=ctrl, key_ptr=scratch, rows_ptr=scratch[n:], sel_ptr=sel, N=n, chunk=chunk,
        clip_low=clip_low, clip_high=clip_high, lb=lb, ub=ub, **ratio_args(ratio), MODE=int(clip_mode),
        ACC64=log_prob.dtype == torch.float64, HAS_OFFSET=offset is not None,
    )
    return sel, stats_[:N_STATS]


def top_values_fused(values: torch.Tensor, mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """:func:`top_values` in one cooperative launch (after the memset); raises
    :class:`FusedLaunchUnavailable` if the device refuses it."""
    n = values.numel()
    dev = values.device
    block = _block(n)
    programs, chunk = _fused_grid(n, dev, block)
    ctrl, scratch = _fused_scratch(n, programs, dev)
    sel = torch.empty(values.shape, dtype=torch.bool, device=dev)
    _launch_fused(
        programs, dev, block, **_SELECTION_ONLY,
        old_ptr=None, lp_ptr=values, adv_ptr=None, mask_ptr=mask, seed_ptr=None, offset_ptr=None, part_ptr=None,
        stats_ptr=None, ctrl_ptr=ctrl, key_ptr=scratch, rows_ptr=scratch[n:], sel_ptr=sel, N=n, chunk=chunk,
        clip_low=0.0, clip_high=0.0, lb=0.0, ub=0.0, **ratio_args(ratio), MODE=TOP_VALUES_MODE, ACC64=False,
        HAS_OFFSET=False,
    )
    return sel
