"""The one-launch Clip-Cov / KL-Cov / ``high_entropy_mask`` kernel: every phase
(:mod:`.cov_phases`, :mod:`.radix_select`, :mod:`.cov_policy_loss`) back to back in ONE
cooperative launch -- one program per SM, a grid barrier between phases. It serves the eager
path of the losses (selection + loss + metrics), of the selection functions (``LOSS=False``)
and of ``high_entropy_mask`` (``MODE=TOP_VALUES``: no statistics phase).

Pointers a configuration does not read may be None (e.g. ``seed_ptr`` unless
``MODE=CLIP_COV``, the loss outputs unless ``LOSS``): each is read only under the constexpr
that needs it.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .cov_phases import _keys_phase, _stats_phase
from .cov_policy_loss import _combine_phase, _loss_phase
from .radix_select import CLIP_COV, CTRL_SIZE, TOP_VALUES, _hist2_phase, _hist3_phase, _k_eff, _write_phase

BARRIERS = tl.constexpr(CTRL_SIZE)  # after the control block: the grid-barrier counters (5)
CTRL_FUSED_SIZE = CTRL_SIZE + 16


@triton.jit
def _grid_barrier(counter_ptr):
    """Wait until every program of the (cooperatively launched) grid has arrived here. One
    fresh zeroed counter per barrier: the arrival is a release (after a CTA barrier, so it
    covers every thread's stores), the spin an acquire."""
    tl.debug_barrier()
    arrived = tl.atomic_add(counter_ptr, 1, sem="acq_rel") + 1
    while arrived < tl.num_programs(0):
        arrived = tl.atomic_add(counter_ptr, 0, sem="acquire")
    tl.debug_barrier()


@triton.jit
def _fused_kernel(
    old_ptr, lp_ptr, adv_ptr, mask_ptr, seed_ptr, offset_ptr, rowcnt_ptr, iw_ptr, den_ptr,
    part_ptr, stats_ptr, ctrl_ptr, key_ptr, rows_ptr, sel_ptr, coef_ptr, loss_ptr, metrics_ptr, count_ptr,
    N, T, B, chunk, clip_low, clip_high, lb, ub, kl_coef, r_hi, r_mid, r_lo, den_hi, den_lo, den_mult,
    MODE: tl.constexpr, LOSS: tl.constexpr, AGG: tl.constexpr, HAS_IW: tl.constexpr, DEN_PTR: tl.constexpr,
    ACC64: tl.constexpr, HAS_OFFSET: tl.constexpr, P_BLOCK: tl.constexpr, BLOCK: tl.constexpr,
):
    """The selection -- and with LOSS the loss, ``coef``, the metrics and the count -- in one
    launch: the phases separated by grid barriers. Needs every program resident at once
    (a cooperative launch, ≤ one program per SM) and ``ctrl`` zeroed, barrier counters included."""
    n_parts = tl.num_programs(0)
    if MODE != TOP_VALUES:
        _stats_phase(lp_ptr, adv_ptr, mask_ptr, part_ptr, ctrl_ptr, N, chunk, False, BLOCK)
        _grid_barrier(ctrl_ptr + BARRIERS + 0)
    _keys_phase(
        lp_ptr, adv_ptr, mask_ptr, old_ptr, part_ptr, n_parts, stats_ptr, key_ptr, ctrl_ptr, seed_ptr, offset_ptr,
        N, chunk, clip_low, clip_high, lb, ub, MODE, True, False, ACC64, HAS_OFFSET, P_BLOCK, BLOCK,
    )
    _grid_barrier(ctrl_ptr + BARRIERS + 1)
    _hist2_phase(key_ptr, stats_ptr, ctrl_ptr, N, chunk, r_hi, r_mid, r_lo, MODE, BLOCK)
    _grid_barrier(ctrl_ptr + BARRIERS + 2)
    _hist3_phase(key_ptr, stats_ptr, ctrl_ptr, rows_ptr, N, chunk, r_hi, r_mid, r_lo, MODE, BLOCK)
    _grid_barrier(ctrl_ptr + BARRIERS + 3)
    _write_phase(key_ptr, stats_ptr, ctrl_ptr, rows_ptr, sel_ptr, N, chunk, r_hi, r_mid, r_lo, MODE, P_BLOCK, BLOCK)
    if LOSS:
        CLIP: tl.constexpr = MODE == CLIP_COV
        tl.debug_barrier()  # the loss phase reads back this program's selection
        _loss_phase(
            old_ptr, lp_ptr, adv_ptr, mask_ptr, sel_ptr, stats_ptr, rowcnt_ptr, iw_ptr, den_ptr, coef_ptr, part_ptr,
            N, T, B, chunk, clip_low, clip_high, kl_coef, den_hi, den_lo, den_mult, CLIP, AGG, HAS_IW, DEN_PTR, ACC64,
            BLOCK,
        )
        _grid_barrier(ctrl_ptr + BARRIERS + 4)
        if tl.program_id(0) == 0:
            _combine_phase(
                part_ptr, n_parts, stats_ptr, rowcnt_ptr, den_ptr, loss_ptr, metrics_ptr, B, den_hi, den_lo, den_mult,
                CLIP, AGG, DEN_PTR, P_BLOCK,
            )
            tl.store(metrics_ptr + 2, 0.0)  # pg_clipfrac_lower: 0, as verl logs it for these losses
            tl.store(count_ptr, _k_eff(stats_ptr, ctrl_ptr, r_hi, r_mid, r_lo, MODE).to(tl.int64))
