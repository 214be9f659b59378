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


def aot_configs():
    """Clip-Cov / KL-Cov selection and loss kernels (kernels/cov_phases.py, radix_select.py,
    cov_policy_loss.py, cov_fused.py) at 65,536 tokens (B = 64, T = 1024): phase launches with
    4 warps, the cooperative one-launch kernel with 8.

    Example
    -------
    >>> "cov_stats" in [c.name for c in aot_configs()]
    True
    """
    from .aot_spec import Config, launch_args
    from .cov_fused import _fused_kernel
    from .cov_phases import _keys_phase, _stats_phase
    from .cov_policy_loss import _combine_phase, _loss_phase
    from .radix_select import _hist2_phase, _hist3_phase, _write_phase

    tokens = dict(N=65536, chunk=1024)
    data = {"lp_ptr": "*fp32", "adv_ptr": "*fp32", "mask_ptr": "*i1"}
    yield Config("cov_stats", _stats_phase,
                 launch_args({**data, "part_ptr": "*fp64", "ctrl_ptr": "*i32", "N": "i32", "chunk": "i32"}, **tokens),
                 {"ZERO_CTRL": True, "BLOCK": 1024}, num_warps=4)
    for dt, mask_t in (("fp32", "*i1"), ("bf16", "*fp32"), ("fp64", "*i64")):
        for clip in (False, True):
            for hist in (False, True):
                yield Config(f"cov_keys[{dt},clip={clip},hist={hist}]", _keys_phase, launch_args({
                    "lp_ptr": f"*{dt}", "adv_ptr": f"*{dt}", "mask_ptr": mask_t, "old_ptr": f"*{dt}", "part_ptr": "*fp64",
                    "n_parts": "i32", "stats_ptr": "*fp64", "key_ptr": "*i32" if hist else "*i64", "ctrl_ptr": "*i32",
                    "seed_ptr": "*i64", "offset_ptr": "*i64", "N": "i32", "chunk": "i32", "clip_low": "fp32",
                    "clip_high": "fp32", "lb": "fp32", "ub": "fp32",
                }, **tokens, n_parts=64 if hist else 1),
                    {"MODE": int(clip), "HIST": hist, "KEY64": not hist, "ACC64": dt == "fp64",
                     "HAS_OFFSET": clip and hist, "P_BLOCK": 64 if hist else 16, "BLOCK": 1024}, num_warps=4)
    for dt in ("fp32", "bf16"):  # high_entropy_mask: keys are the values, no statistics
        yield Config(f"cov_keys[{dt},top_values]", _keys_phase, launch_args({
            "lp_ptr": f"*{dt}", "adv_ptr": f"*{dt}", "mask_ptr": "*i1", "old_ptr": f"*{dt}", "part_ptr": "*i32",
            "n_parts": "i32", "stats_ptr": "*i32", "key_ptr": "*i32", "ctrl_ptr": "*i32", "seed_ptr": "*i32",
            "offset_ptr": "*i32", "N": "i32", "chunk": "i32", "clip_low": "fp32", "clip_high": "fp32", "lb": "fp32",
            "ub": "fp32",
        }, N=1 << 20, chunk=2048, n_parts=512),
            {"MODE": 2, "HIST": True, "KEY64": False, "ACC64": False, "HAS_OFFSET": False, "P_BLOCK": 512,
             "BLOCK": 1024}, num_warps=4)
    ratio = {"r_hi": "fp32", "r_mid": "fp32", "r_lo": "fp32"}
    den = {"den_hi": "fp32", "den_lo": "fp32", "den_mult": "fp32"}
    for mode in (0, 1, 2):  # KL-Cov, Clip-Cov, top values
        common = {"key_ptr": "*i32", "stats_ptr": "*fp64" if mode < 2 else "*i32", "ctrl_ptr": "*i32"}
        yield Config(f"cov_hist2[mode={mode}]", _hist2_phase, launch_args({**common, "N": "i32", "chunk": "i32", **ratio}, **tokens),
                     {"MODE": mode, "BLOCK": 1024}, num_warps=4)
        yield Config(f"cov_hist3[mode={mode}]", _hist3_phase,
                     launch_args({**common, "rows_ptr": "*i32", "N": "i32", "chunk": "i32", **ratio}, **tokens),
                     {"MODE": mode, "BLOCK": 1024}, num_warps=4)
        yield Config(f"cov_write[mode={mode}]", _write_phase, launch_args({
            **common, "rows_ptr": "*i32", "sel_ptr": "*i1", "N": "i32", "chunk": "i32", **ratio,
        }, **tokens), {"MODE": mode, "P_BLOCK": 64, "BLOCK": 1024}, num_warps=4)
    loss_shape = dict(**tokens, T=1024, B=64)
    for dt in ("fp32", "bf16", "fp64"):
        for clip in (False, True):
            for agg in (0, 1, 2):
                yield Config(f"cov_loss[{dt},clip={clip},agg={agg},iw={agg == 1},den={agg == 2}]", _loss_phase, launch_args({
                    "old_ptr": f"*{dt}", "lp_ptr": f"*{dt}", "adv_ptr": f"*{dt}", "mask_ptr": "*i1", "sel_ptr": "*i1",
                    "stats_ptr": "*fp64", "rowcnt_ptr": "*fp32", "iw_ptr": "*fp32", "den_ptr": "*fp64",
                    "coef_ptr": "*fp64" if dt == "fp64" else "*fp32", "part_ptr": "*fp64", "N": "i32", "T": "i32",
                    "B": "i32", "chunk": "i32", "clip_low": "fp32", "clip_high": "fp32", "kl_coef": "fp32", **den,
                }, **loss_shape), {"CLIP": clip, "AGG": agg, "HAS_IW": agg == 1, "DEN_PTR": agg == 2, "ACC64": dt == "fp64",
                                   "BLOCK": 1024}, num_warps=4)
        fused_opts = {"launch_cooperative_grid": True}
        for clip in (False, True):
            for agg in (0, 2):
                yield Config(f"cov_fused[{dt},clip={clip},agg={agg},iw={agg == 2},den={agg == 2}]", _fused_kernel, launch_args({
                    "old_ptr": f"*{dt}", "lp_ptr": f"*{dt}", "adv_ptr": f"*{dt}", "mask_ptr": "*i1", "seed_ptr": "*i64",
                    "offset_ptr": "*i64", "rowcnt_ptr": "*fp32", "iw_ptr": "*fp32", "den_ptr": "*fp64", "part_ptr": "*fp64",
                    "stats_ptr": "*fp64",
                    "ctrl_ptr": "*i32", "key_ptr": "*i32", "rows_ptr": "*i32", "sel_ptr": "*i1",
                    "coef_ptr": "*fp64" if dt == "fp64" else "*fp32", "loss_ptr": "*fp64" if dt == "fp64" else "*fp32",
                    "metrics_ptr": "*fp32", "count_ptr": "*i64", "N": "i32", "T": "i32", "B": "i32", "chunk": "i32",
                    "clip_low": "fp32", "clip_high": "fp32", "lb": "fp32", "ub": "fp32", "kl_coef": "fp32", **ratio, **den,
                }, **loss_shape), {"MODE": int(clip), "LOSS": True, "AGG": agg, "HAS_IW": agg == 2, "DEN_PTR": agg == 2,
                                   "ACC64": dt == "fp64", "HAS_OFFSET": False, "P_BLOCK": 256, "BLOCK": 1024},
                    options=fused_opts)
        for clip in (False, True):  # selection only (clip_cov_select / kl_cov_select)
            yield Config(f"cov_fused[{dt},clip={clip},select]", _fused_kernel, launch_args({
                "old_ptr": f"*{dt}", "lp_ptr": f"*{dt}", "adv_ptr": f"*{dt}", "mask_ptr": "*i1", "seed_ptr": "*i64",
                "offset_ptr": "*i64", **{name: "*fp64" for name in ("rowcnt_ptr", "iw_ptr", "den_ptr", "part_ptr", "stats_ptr")},
                "ctrl_ptr": "*i32", "key_ptr": "*i32", "rows_ptr": "*i32", "sel_ptr": "*i1",
                **{name: "*fp64" for name in ("coef_ptr", "loss_ptr", "metrics_ptr", "count_ptr")},
                "N": "i32", "T": "i32", "B": "i32", "chunk": "i32", "clip_low": "fp32", "clip_high": "fp32",
                "lb": "fp32", "ub": "fp32", "kl_coef": "fp32", **ratio, **den,
            }, **loss_shape), {"MODE": int(clip), "LOSS": False, "AGG": 0, "HAS_IW": False, "DEN_PTR": False,
                               "ACC64": dt == "fp64", "HAS_OFFSET": True, "P_BLOCK": 256, "BLOCK": 1024},
                options=fused_opts)
        if dt != "fp64":
            yield Config(f"cov_fused[{dt},top_values]", _fused_kernel, launch_args({
                "old_ptr": f"*{dt}", "lp_ptr": f"*{dt}", "adv_ptr": f"*{dt}", "mask_ptr": "*i1",
                **{name: "*i32" for name in ("seed_ptr", "offset_ptr", "rowcnt_ptr", "iw_ptr", "den_ptr", "part_ptr",
                                             "stats_ptr", "ctrl_ptr", "key_ptr", "rows_ptr")},
                "sel_ptr": "*i1", **{name: "*i32" for name in ("coef_ptr", "loss_ptr", "metrics_ptr", "count_ptr")},
                "N": "i32", "T": "i32", "B": "i32", "chunk": "i32", "clip_low": "fp32",
                "clip_high": "fp32", "lb": "fp32", "ub": "fp32", "kl_coef": "fp32", **ratio, **den,
            }, N=1 << 20, T=1, B=1, chunk=8192),  # high_entropy_mask passes T = B = 1
                {"MODE": 2, "LOSS": False, "AGG": 0, "HAS_IW": False, "DEN_PTR": False, "ACC64": False,
                 "HAS_OFFSET": False, "P_BLOCK": 256, "BLOCK": 1024}, options=fused_opts)
        yield Config(f"cov_loss_combine[{dt}]", _combine_phase, launch_args({
            "part_ptr": "*fp64", "n_parts": "i32", "stats_ptr": "*fp64", "rowcnt_ptr": "*fp32", "den_ptr": "*fp64",
            "loss_ptr": "*fp64" if dt == "fp64" else "*fp32", "metrics_ptr": "*fp32", "B": "i32", **den,
        }, n_parts=64, B=64), {"CLIP": True, "AGG": 1, "DEN_PTR": True, "P_BLOCK": 64}, num_warps=4)


# ---------------------------------------------------------------------------------------------
# specialisation and compilation
