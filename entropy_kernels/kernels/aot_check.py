"""Compile every Triton kernel of the package ahead of time for real GPU targets — no GPU
needed — and report what the compiled code costs (registers, shared memory, spills).

Triton's wheel carries the NVIDIA backend, ptxas and cuobjdump, so a CPU-only machine (CI) can
lower each kernel to cubin: this catches what the interpreter cannot (globals that are not
constexpr, unsupported atomics, type errors in compiled-only code paths, register overflows at
the launch configurations we use).

Each configuration is compiled with the specialisation the JIT applies at launch: argument
values typical of the ops' real launches go through Triton's own binder, so pointers and
integers divisible by 16 get ``tt.divisibility = 16`` and integers equal to 1 become
constants, exactly as at a launch with those values. Without those attributes the compiler
sees unaligned pointers: no vectorised or asynchronous copies, more registers — numbers that
are not what runs.

    python -m entropy_kernels.kernels.aot_check --arch 80 90           # compile, print status
    python -m entropy_kernels.kernels.aot_check --write benchmarks/static/
    python -m entropy_kernels.kernels.aot_check --check benchmarks/static/ --arch 90

``--write DIR`` regenerates ``DIR/triton_kernels.{json,md}`` (registers, shared memory, spill
and stack bytes per configuration and arch); entries whose key (kernel source hash, argument
specialisation, launch options, arch, Triton version) is unchanged are reused, not recompiled.
``--check DIR`` compiles only the configurations whose key is missing from that file and fails
if any does not compile, or if the file is out of date for this Triton version.

Must run with TRITON_INTERPRET unset or 0 (the kernels must be JIT functions).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

BLOCK_NAMES = ("BLOCK_N", "BLOCK_V", "BLOCK_D")
STATIC_STEM = "triton_kernels"
WRITE_COMMAND = "python -m entropy_kernels.kernels.aot_check --write benchmarks/static/"

# Typical launch values of integer arguments (what the JIT specialises on): the ops' anchor
# shapes -- V = 151936 / 256000 / 128256, D = 2304 / 4096, 64-8192 rows, 65,536-1M tokens -- are
# all multiples of 16, so an integer defaults to a multiple of 16; configurations override the
# ones that are not (e.g. 5 vocabulary splits, top_n = 100) or are 1 (a constant at launch).
DEFAULT_INT = 4096

_POINTER_DTYPES = {
    "*bf16": "bfloat16", "*fp16": "float16", "*fp32": "float32", "*fp64": "float64", "*i64": "int64",
    "*i32": "int32", "*i16": "int16", "*i8": "int8", "*u8": "uint8", "*i1": "bool",
}


@dataclass
class Config:
    """One launch configuration: the kernel, its runtime arguments (``"*bf16"``-style strings
    for pointers, typical values for scalars), its constexprs and launch options.

    Example
    -------
    >>> cfg = find_config("entropy_combine")
    >>> cfg.num_warps, cfg.args["n_splits"], cfg.constexprs
    (1, 9, {'BLOCK_S': 16})
    """

    name: str
    kernel: object
    args: Dict[str, object]
    constexprs: Dict[str, object]
    num_warps: int = 8
    num_stages: Optional[int] = None  # None: Triton's default
    options: Dict[str, object] = field(default_factory=dict)  # e.g. launch_cooperative_grid


def _sig(signature: Dict[str, str], **values) -> Dict[str, object]:
    """Runtime arguments from a type signature: pointers stay type strings, integers get
    ``values[name]`` or :data:`DEFAULT_INT`, floats 1.0."""
    out: Dict[str, object] = {}
    for name, ty in signature.items():
        if ty.startswith("*"):
            out[name] = ty
        elif ty.startswith("fp"):
            out[name] = float(values.get(name, 1.0))
        else:
            out[name] = int(values.get(name, DEFAULT_INT))
    unknown = set(values) - set(signature)
    if unknown:
        raise KeyError(f"values for unknown arguments {sorted(unknown)}")
    return out


# Forward tiles (BLOCK_N, BLOCK_V, BLOCK_D, num_stages) the GPU probe sweeps
# (scripts/perf_probe.py, step lsm); the first is the launcher's default.
LSM_FWD_SWEEP = (  # the first is the launcher's 16-bit default (linear_softmax.FWD_BLOCKS, FWD_STAGES)
    (128, 256, 64, 3), (128, 128, 32, 3), (128, 128, 64, 3), (128, 128, 64, 4), (128, 256, 64, 4),
    (256, 128, 32, 3), (256, 128, 64, 3), (256, 128, 64, 4),
)


def _configs() -> Iterator[Config]:
    """The launch configurations the ops use (and the probe's forward-tile sweep)."""
    from . import entropy as E
    from . import linear_softmax as L
    from . import logits_rows as R
    from . import top_h as T

    v = 151936
    for dt in ("bf16", "fp32"):
        block = 4096 if dt == "bf16" else 2048
        blocks = -(-v // block)
        for split in (False, True):
            # [B, V] contiguous: one inner dimension of B rows (stride V); B = 64 splits each
            # row over 9 programs, B = 1024 does not split
            splits = 9 if split else 1
            rows = 64 if split else 1024
            for row_temp in (False, True):
                yield Config(f"entropy_fwd[{dt},split={split},row_temp={row_temp}]", E._entropy_fwd_kernel, _sig({
                    "x_ptr": f"*{dt}", "row_temp_ptr": "*fp32", "inv_temp": "fp32", "entropy_ptr": "*fp32",
                    "lse_ptr": "*fp32", "stats_ptr": "*fp32", "part_ptr": "*fp32", "n_cols": "i32", "n_inner": "i32",
                    "stride_outer": "i64", "stride_inner": "i64", "cols_per_split": "i32", "n_splits": "i32",
                }, n_cols=v, n_inner=rows, stride_outer=0, stride_inner=v, n_splits=splits,
                    cols_per_split=-(-blocks // splits) * block),
                    {"HAS_ROW_TEMP": row_temp, "SPLIT": split, "ACC64": False, "BLOCK": block})
        yield Config(f"entropy_bwd[{dt}]", E._entropy_bwd_kernel, _sig({
            "x_ptr": f"*{dt}", "row_temp_ptr": "*fp32", "inv_temp": "fp32", "entropy_ptr": "*fp32", "stats_ptr": "*fp32",
            "grad_entropy_ptr": "*fp32", "grad_lse_ptr": "*fp32", "grad_x_ptr": f"*{dt}", "n_cols": "i32", "n_inner": "i32",
            "stride_outer": "i64", "stride_inner": "i64", "cols_per_split": "i32",
        }, n_cols=v, n_inner=1024, stride_outer=0, stride_inner=v, cols_per_split=blocks * block),
            {"HAS_ROW_TEMP": False, "ACC64": False, "BLOCK": block})
    yield Config("entropy_fwd[fp64]", E._entropy_fwd_kernel, _sig({
        "x_ptr": "*fp64", "row_temp_ptr": "*fp32", "inv_temp": "fp32", "entropy_ptr": "*fp64", "lse_ptr": "*fp64",
        "stats_ptr": "*fp64", "part_ptr": "*fp64", "n_cols": "i32", "n_inner": "i32", "stride_outer": "i64",
        "stride_inner": "i64", "cols_per_split": "i32", "n_splits": "i32",
    }, n_splits=1, stride_outer=0), {"HAS_ROW_TEMP": False, "SPLIT": False, "ACC64": True, "BLOCK": 2048})
    yield Config("entropy_combine", E._entropy_combine_kernel, _sig({
        "part_ptr": "*fp32", "entropy_ptr": "*fp32", "lse_ptr": "*fp32", "stats_ptr": "*fp32", "n_splits": "i32",
    }, n_splits=9), {"BLOCK_S": 16}, num_warps=1)

    # linear softmax at the Gemma-2-2B shape: N = 8192, D = 2304, V = 256000 (5 splits by default)
    shape = dict(N=8192, V=256000, D=2304, stride_h=2304, stride_w=2304)
    for dt in ("bf16", "fp32"):
        prec = "ieee" if dt == "fp32" else "tf32"
        common = {"h_ptr": f"*{dt}", "w_ptr": f"*{dt}", "b_ptr": f"*{dt}", "y_ptr": "*i64"}
        fwd_sig = {**common, "part_ptr": "*fp32", "N": "i32", "V": "i32", "D": "i32", "stride_h": "i32",
                   "stride_w": "i32", "cols_per_split": "i32", "n_splits": "i32", "softcap": "fp32", "inv_temp": "fp32"}
        for bias, cap in ((False, False), (True, True)):
            yield Config(f"lsm_fwd[{dt},bias={bias},softcap={cap}]", L._lsm_fwd_kernel,
                         _sig(fwd_sig, **shape, cols_per_split=400 * 128, n_splits=5),
                         {"HAS_BIAS": bias, "SOFTCAP": cap, "PRECISION": prec,
                          **dict(zip(BLOCK_NAMES, L.FWD_BLOCKS_FP32 if dt == "fp32" else L.FWD_BLOCKS))},
                         num_stages=L.FWD_STAGES)
        if dt == "bf16":
            for bn, bv, bd, stages in LSM_FWD_SWEEP[1:]:
                yield Config(f"lsm_fwd[bf16,{bn}x{bv}x{bd},s{stages}]", L._lsm_fwd_kernel,
                             _sig(fwd_sig, **shape, cols_per_split=64 * 128, n_splits=33),
                             {"HAS_BIAS": False, "SOFTCAP": False, "PRECISION": prec, "BLOCK_N": bn, "BLOCK_V": bv,
                              "BLOCK_D": bd}, num_stages=stages)
        for filt in (False, True):
            yield Config(f"lsm_bwd[{dt},filter={filt}]", L._lsm_bwd_kernel, _sig({
                **common, "stats_ptr": "*fp32", "coef_ptr": "*fp32", "thresh_ptr": "*fp32", "dh_ptr": "*fp32",
                "dw_ptr": "*fp32", "db_ptr": "*fp32", "N": "i32", "V": "i32", "D": "i32", "stride_h": "i32",
                "stride_w": "i32", "softcap": "fp32", "inv_temp": "fp32", "n_tiles_v": "i32",
            }, **shape, n_tiles_v=2000), {"HAS_BIAS": True, "SOFTCAP": True, "FILTER": filt, "PRECISION": prec, "GROUP_N": 8,
                                          "NEED_DH": True, "NEED_DW": not filt, **dict(zip(BLOCK_NAMES, L.BWD_BLOCKS))})
        block = 4096 if dt == "bf16" else 2048
        yield Config(f"rows_stats[{dt}]", R._rows_stats_kernel, _sig({
            "x_ptr": f"*{dt}", "stride_row": "i32", "y_ptr": "*i64", "stats_ptr": "*fp32", "V": "i32",
            "softcap": "fp32", "inv_temp": "fp32",
        }, stride_row=v, V=v), {"SOFTCAP": True, "BLOCK": block})
        yield Config(f"rows_grad[{dt}]", R._rows_grad_kernel, _sig({
            "x_ptr": f"*{dt}", "stride_row": "i32", "out_ptr": f"*{dt}", "out_stride_row": "i32", "y_ptr": "*i64",
            "stats_ptr": "*fp32", "coef_ptr": "*fp32", "V": "i32", "softcap": "fp32", "inv_temp": "fp32",
        }, stride_row=v, out_stride_row=v, V=v), {"SOFTCAP": True, "BLOCK": block})
        for exact, cand, n_select in ((False, 128, 100), (True, 1024, 1024)):
            # V = 151936 always takes the prefilter (kernels.top_h.prefilter_groups)
            group, nsub = T.prefilter_groups(v, n_select, block)
            cap = T.CAND_CAPACITY
            yield Config(f"top_h[{dt},exact={exact}]", T._top_h_kernel, _sig({
                "x_ptr": f"*{dt}", "stride_row": "i32", "n_cols": "i32", "alpha_ptr": "*fp32", "inv_temp": "fp32",
                "seed_ptr": "*i64", "offset_ptr": "*i64", "mask_ptr": "*u8", "sample_ptr": "*i64", "stats_ptr": "*fp32",
                "scratch_ptr": "*i64", "maxima_ptr": "*i64", "cand_ptr": "*i64", "n_select": "i32",
            }, stride_row=v, n_cols=v, n_select=n_select),
                {"EXACT": exact, "WRITE_MASK": True, "SAMPLE": True, "STATS": True, "CAND": cand, "BLOCK": block,
                 "PREFILTER": True, "GROUP": group, "NSUB": nsub, "CAP": cap, "BLOCK_C": min(1024, cap)})
    yield from _cov_configs()
    yield Config("lsm_combine", L._lsm_combine_kernel, _sig(
        {"part_ptr": "*fp32", "stats_ptr": "*fp32", "N": "i32", "n_splits": "i32"}, N=8192, n_splits=5),
        {"BLOCK_R": 64, "BLOCK_S": 32}, num_warps=4)


def _cov_configs() -> Iterator[Config]:
    """Clip-Cov / KL-Cov selection and loss kernels (kernels/cov_phases.py, radix_select.py,
    cov_policy_loss.py, cov_fused.py) at 65,536 tokens (B = 64, T = 1024): phase launches with
    4 warps, the cooperative one-launch kernel with 8."""
    from .cov_fused import _fused_kernel
    from .cov_phases import _keys_phase, _stats_phase
    from .cov_policy_loss import _combine_phase, _loss_phase
    from .radix_select import _hist2_phase, _hist3_phase, _write_phase

    tokens = dict(N=65536, chunk=1024)
    data = {"lp_ptr": "*fp32", "adv_ptr": "*fp32", "mask_ptr": "*i1"}
    yield Config("cov_stats", _stats_phase,
                 _sig({**data, "part_ptr": "*fp64", "ctrl_ptr": "*i32", "N": "i32", "chunk": "i32"}, **tokens),
                 {"ZERO_CTRL": True, "BLOCK": 1024}, num_warps=4)
    for dt, mask_t in (("fp32", "*i1"), ("bf16", "*fp32"), ("fp64", "*i64")):
        for clip in (False, True):
            for hist in (False, True):
                yield Config(f"cov_keys[{dt},clip={clip},hist={hist}]", _keys_phase, _sig({
                    "lp_ptr": f"*{dt}", "adv_ptr": f"*{dt}", "mask_ptr": mask_t, "old_ptr": f"*{dt}", "part_ptr": "*fp64",
                    "n_parts": "i32", "stats_ptr": "*fp64", "key_ptr": "*i32" if hist else "*i64", "ctrl_ptr": "*i32",
                    "seed_ptr": "*i64", "offset_ptr": "*i64", "N": "i32", "chunk": "i32", "clip_low": "fp32",
                    "clip_high": "fp32", "lb": "fp32", "ub": "fp32",
                }, **tokens, n_parts=64 if hist else 1),
                    {"MODE": int(clip), "HIST": hist, "KEY64": not hist, "ACC64": dt == "fp64",
                     "HAS_OFFSET": clip and hist, "P_BLOCK": 64 if hist else 16, "BLOCK": 1024}, num_warps=4)
    for dt in ("fp32", "bf16"):  # high_entropy_mask: keys are the values, no statistics
        yield Config(f"cov_keys[{dt},top_values]", _keys_phase, _sig({
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
        yield Config(f"cov_hist2[mode={mode}]", _hist2_phase, _sig({**common, "N": "i32", "chunk": "i32", **ratio}, **tokens),
                     {"MODE": mode, "BLOCK": 1024}, num_warps=4)
        yield Config(f"cov_hist3[mode={mode}]", _hist3_phase,
                     _sig({**common, "rows_ptr": "*i32", "N": "i32", "chunk": "i32", **ratio}, **tokens),
                     {"MODE": mode, "BLOCK": 1024}, num_warps=4)
        yield Config(f"cov_write[mode={mode}]", _write_phase, _sig({
            **common, "rows_ptr": "*i32", "sel_ptr": "*i1", "N": "i32", "chunk": "i32", **ratio,
        }, **tokens), {"MODE": mode, "P_BLOCK": 64, "BLOCK": 1024}, num_warps=4)
    loss_shape = dict(**tokens, T=1024, B=64)
    for dt in ("fp32", "bf16", "fp64"):
        for clip in (False, True):
            for agg in (0, 1, 2):
                yield Config(f"cov_loss[{dt},clip={clip},agg={agg},iw={agg == 1},den={agg == 2}]", _loss_phase, _sig({
                    "old_ptr": f"*{dt}", "lp_ptr": f"*{dt}", "adv_ptr": f"*{dt}", "mask_ptr": "*i1", "sel_ptr": "*i1",
                    "stats_ptr": "*fp64", "rowcnt_ptr": "*fp32", "iw_ptr": "*fp32", "den_ptr": "*fp64",
                    "coef_ptr": "*fp64" if dt == "fp64" else "*fp32", "part_ptr": "*fp64", "N": "i32", "T": "i32",
                    "B": "i32", "chunk": "i32", "clip_low": "fp32", "clip_high": "fp32", "kl_coef": "fp32", **den,
                }, **loss_shape), {"CLIP": clip, "AGG": agg, "HAS_IW": agg == 1, "DEN_PTR": agg == 2, "ACC64": dt == "fp64",
                                   "BLOCK": 1024}, num_warps=4)
        fused_opts = {"launch_cooperative_grid": True}
        for clip in (False, True):
            for agg in (0, 2):
                yield Config(f"cov_fused[{dt},clip={clip},agg={agg},iw={agg == 2},den={agg == 2}]", _fused_kernel, _sig({
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
            yield Config(f"cov_fused[{dt},clip={clip},select]", _fused_kernel, _sig({
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
            yield Config(f"cov_fused[{dt},top_values]", _fused_kernel, _sig({
                "old_ptr": f"*{dt}", "lp_ptr": f"*{dt}", "adv_ptr": f"*{dt}", "mask_ptr": "*i1",
                **{name: "*i32" for name in ("seed_ptr", "offset_ptr", "rowcnt_ptr", "iw_ptr", "den_ptr", "part_ptr",
                                             "stats_ptr", "ctrl_ptr", "key_ptr", "rows_ptr")},
                "sel_ptr": "*i1", **{name: "*i32" for name in ("coef_ptr", "loss_ptr", "metrics_ptr", "count_ptr")},
                "N": "i32", "T": "i32", "B": "i32", "chunk": "i32", "clip_low": "fp32",
                "clip_high": "fp32", "lb": "fp32", "ub": "fp32", "kl_coef": "fp32", **ratio, **den,
            }, N=1 << 20, T=1, B=1, chunk=8192),  # high_entropy_mask passes T = B = 1
                {"MODE": 2, "LOSS": False, "AGG": 0, "HAS_IW": False, "DEN_PTR": False, "ACC64": False,
                 "HAS_OFFSET": False, "P_BLOCK": 256, "BLOCK": 1024}, options=fused_opts)
        yield Config(f"cov_loss_combine[{dt}]", _combine_phase, _sig({
            "part_ptr": "*fp64", "n_parts": "i32", "stats_ptr": "*fp64", "rowcnt_ptr": "*fp32", "den_ptr": "*fp64",
            "loss_ptr": "*fp64" if dt == "fp64" else "*fp32", "metrics_ptr": "*fp32", "B": "i32", **den,
        }, n_parts=64, B=64), {"CLIP": True, "AGG": 1, "DEN_PTR": True, "P_BLOCK": 64}, num_warps=4)


# ---------------------------------------------------------------------------------------------
# specialisation and compilation


def _launch_kwargs(cfg: Config) -> Dict[str, object]:
    kw: Dict[str, object] = {"num_warps": cfg.num_warps, **cfg.options}
    if cfg.num_stages is not None:
        kw["num_stages"] = cfg.num_stages
    return kw


def _mock_args(cfg: Config) -> Dict[str, object]:
    import torch
    from triton.runtime.jit import MockTensor

    return {name: MockTensor(getattr(torch, _POINTER_DTYPES[v])) if isinstance(v, str) else v
            for name, v in cfg.args.items()}


def specialise(cfg: Config, target, by_hand: bool = False):
    """``(signature, constexprs, attrs, options, how)`` of ``cfg``'s launch on ``target``: from
    Triton's own launch binder when this Triton has the one it was written for (``how`` =
    "jit binder"); else (or with ``by_hand``) the same rules by hand ("by hand": pointers and
    integers divisible by 16 get ``tt.divisibility = 16``, integers equal to 1 become constants).

    Example
    -------
    >>> from triton.backends.compiler import GPUTarget                                   # doctest: +SKIP
    >>> sig, constexprs, attrs, options, how = specialise(find_config("entropy_combine"),
    ...                                                  GPUTarget("cuda", 90, 32))      # doctest: +SKIP
    >>> sig["part_ptr"], attrs[(0,)], how                                                # doctest: +SKIP
    ('*fp32', [['tt.divisibility', 16]], 'jit binder')
    """
    from triton.compiler import make_backend

    backend = make_backend(target)
    kwargs = {**cfg.constexprs, **_launch_kwargs(cfg)}
    try:
        if by_hand:
            raise ImportError("by hand")
        from triton.runtime.jit import create_function_from_signature

        binder = create_function_from_signature(cfg.kernel.signature, cfg.kernel.params, backend)
        bound, spec, opts = binder(**_mock_args(cfg), **kwargs)
        options, signature, constexprs, attrs = cfg.kernel._pack_args(backend, kwargs, bound, spec, opts)
        return signature, constexprs, attrs, options.__dict__, "jit binder"
    except (ImportError, AttributeError):
        pass
    names = [p.name for p in cfg.kernel.params]
    missing = [n for n in names if n not in cfg.args and n not in cfg.constexprs]
    if missing:
        raise TypeError(f"{cfg.name}: no value for arguments {missing}")
    signature, constexprs = {}, {}
    attrs = {(i,): [] for i in range(len(names))}
    for i, name in enumerate(names):
        if name in cfg.constexprs:
            signature[name], constexprs[(i,)] = "constexpr", cfg.constexprs[name]
            continue
        value = cfg.args[name]
        if isinstance(value, str):  # Triton's own name of the pointer type where it has one (bool: *u1)
            signature[name], attrs[(i,)] = _pointer_type(value), [["tt.divisibility", 16]]
        elif isinstance(value, float):  # floats are not specialised: no attribute at all
            signature[name] = "fp32"
            del attrs[(i,)]
        elif value == 1:
            signature[name], constexprs[(i,)] = "constexpr", 1
        else:
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs, _launch_kwargs(cfg), "by hand"


def _pointer_type(ty: str) -> str:
    try:
        import torch
        from triton.runtime.jit import MockTensor, mangle_type

        return mangle_type(MockTensor(getattr(torch, _POINTER_DTYPES[ty])))
    except Exception:
        return ty


def config_key(cfg: Config, arch: int) -> str:
    """Hash of everything the compiled code depends on: the kernel's source (with the JIT
    functions it calls), the specialisation, the launch options, the arch and Triton's version.

    Example
    -------
    >>> cfg = next(c for c in _configs() if c.name == "entropy_combine")  # doctest: +SKIP
    >>> len(config_key(cfg, 90))                                          # doctest: +SKIP
    64
    """
    import triton
    from triton.backends.compiler import GPUTarget

    signature, constexprs, attrs, _, _ = specialise(cfg, GPUTarget("cuda", arch, 32))
    blob = json.dumps([cfg.kernel.cache_key, signature, sorted((str(k), repr(v)) for k, v in constexprs.items()),
                       sorted((str(k), v) for k, v in attrs.items()), _launch_kwargs(cfg), arch, triton.__version__],
                      sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()


def _cuobjdump() -> Optional[str]:
    try:
        from triton import knobs

        path = knobs.nvidia.cuobjdump.path
        if path and os.path.exists(path):
            return path
    except Exception:
        pass
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return path if os.path.exists(path) else None


def resource_usage(cubin: bytes) -> Dict[str, int]:
    """``{"regs", "stack_bytes", "local_bytes", "static_smem_bytes"}`` per thread / block of the
    one kernel in ``cubin``, read by ``cuobjdump --dump-resource-usage`` (in Triton's wheel);
    empty if that tool is missing. Local memory is where spilled registers go.

    Example
    -------
    >>> resource_usage(compile_kernel(find_config("entropy_combine"), 90)[0].asm["cubin"])  # doctest: +SKIP
    {'regs': 17, 'stack_bytes': 0, 'static_smem_bytes': 0, 'local_bytes': 0}
    """
    tool = _cuobjdump()
    if tool is None:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text))
    names = {"REG": "regs", "STACK": "stack_bytes", "LOCAL": "local_bytes", "SHARED": "static_smem_bytes"}
    return {names[k]: int(v) for k, v in fields.items()}


def compile_kernel(cfg: Config, arch: int):
    """``(compiled kernel, how it was specialised)``: ``cfg`` compiled for ``sm_<arch>`` (its
    ``asm`` holds the PTX and cubin).

    Example
    -------
    >>> compiled, how = compile_kernel(find_config("entropy_combine"), 90)  # doctest: +SKIP
    >>> "ld.global" in compiled.asm["ptx"]                                   # doctest: +SKIP
    True
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    signature, constexprs, attrs, options, how = specialise(cfg, target)
    src = ASTSource(fn=cfg.kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=target, options=options), how


def find_config(name: str) -> Config:
    """The configuration called ``name``.

    Example
    -------
    >>> find_config("lsm_fwd[bf16,128x256x64,s4]").num_stages
    4
    """
    for cfg in _configs():
        if cfg.name == name:
            return cfg
    raise KeyError(f"no configuration named {name!r}")


def compile_config(cfg: Config, arch: int) -> Dict[str, object]:
    """Compile ``cfg`` for ``sm_<arch>``: a row with its key, status ("ok" or the error),
    registers, shared memory (dynamic, as launched, plus static) and spill/stack bytes.

    Example
    -------
    >>> compile_config(find_config("entropy_combine"), 90)["regs"]  # doctest: +SKIP
    17
    """
    row: Dict[str, object] = {"name": cfg.name, "arch": arch, "num_warps": cfg.num_warps}
    try:
        row["key"] = config_key(cfg, arch)
        compiled, row["specialised_by"] = compile_kernel(cfg, arch)
        usage = resource_usage(compiled.asm["cubin"])
        row.update(status="ok", num_stages=getattr(compiled.metadata, "num_stages", None),
                   regs=usage.get("regs"), smem_bytes=int(compiled.metadata.shared) + usage.get("static_smem_bytes", 0),
                   local_bytes=usage.get("local_bytes"), stack_bytes=usage.get("stack_bytes"))
    except Exception as exc:  # report every failure, not just the first
        row["status"] = f"{type(exc).__name__}: {str(exc).strip()[-600:]}"
    return row


_POOL_CONFIGS: List[Config] = []


def _compile_index(job):
    index, arch = job
    return compile_config(_POOL_CONFIGS[index], arch)


def compile_all(archs: Sequence[int], cached: Optional[Dict[str, dict]] = None, jobs: int = 1,
                only: Optional[str] = None) -> List[Dict[str, object]]:
    """Compile every configuration for every arch (rows of :func:`compile_config`); a row of
    ``cached`` (by key) whose status is "ok" is reused instead of compiling again.

    Example
    -------
    >>> rows = compile_all([90], only="entropy_combine")   # doctest: +SKIP
    >>> [r["status"] for r in rows]                        # doctest: +SKIP
    ['ok']
    """
    configs = [c for c in _configs() if only is None or only in c.name]
    rows: List[Optional[Dict[str, object]]] = []
    todo = []
    for i, cfg in enumerate(configs):
        for arch in archs:
            try:
                key = config_key(cfg, arch)
            except Exception:  # e.g. arguments out of date: compile_config reports it
                key = None
            hit = (cached or {}).get(key)
            if hit is not None and hit.get("status") == "ok":
                rows.append(dict(hit, name=cfg.name, arch=arch))
            else:
                rows.append(None)
                todo.append((len(rows) - 1, i, arch))
    if jobs > 1 and len(todo) > 1:
        import multiprocessing

        _POOL_CONFIGS[:] = configs  # forked workers inherit the list: configs hold kernels, not picklable
        with multiprocessing.get_context("fork").Pool(min(jobs, len(todo))) as pool:
            done = pool.map(_compile_index, [(i, arch) for _, i, arch in todo], chunksize=1)
    else:
        done = [compile_config(configs[i], arch) for _, i, arch in todo]
    for (slot, _, _), row in zip(todo, done):
        rows[slot] = row
    return [r for r in rows if r is not None]


# ---------------------------------------------------------------------------------------------
# the committed report


def _note() -> str:
    import triton

    return (f"Compiled with Triton {triton.__version__} (the GPU machine may run another version, e.g. 3.6: "
            "its numbers can differ), at the specialisation the JIT applies to typical launch values "
            "(tt.divisibility = 16 on pointers and integers divisible by 16, integers equal to 1 constant). "
            "regs: registers per thread; smem_bytes: shared memory per program (dynamic + static); "
            "local_bytes: local memory per thread (register spills; 0 = none); from cuobjdump.")


def load_static(directory: Path) -> Optional[dict]:
    """The committed report in ``directory`` (None if there is none).

    Example
    -------
    >>> load_static(Path("benchmarks/static"))["command"]  # doctest: +SKIP
    'python -m entropy_kernels.kernels.aot_check --write benchmarks/static/'
    """
    path = Path(directory) / f"{STATIC_STEM}.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_static(rows: Sequence[Dict[str, object]], directory: Path) -> List[Path]:
    """Write ``triton_kernels.json`` and ``.md`` into ``directory`` (no date: an unchanged
    kernel set rewrites identical files).

    Example
    -------
    >>> write_static(compile_all([80, 90]), Path("benchmarks/static"))  # doctest: +SKIP
    """
    import triton

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: (str(r["name"]), int(r["arch"])))
    doc = {"command": WRITE_COMMAND, "triton": triton.__version__, "note": _note(), "kernels": list(rows)}
    paths = [directory / f"{STATIC_STEM}.json", directory / f"{STATIC_STEM}.md"]
    paths[0].write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    archs = sorted({int(r["arch"]) for r in rows})
    lines = [f"# Triton kernels: compiled resources (Triton {triton.__version__})", "", f"Regenerate: `{WRITE_COMMAND}`",
             "", _note(), "",
             "| configuration | warps | stages | " + " | ".join(f"sm_{a} regs / smem / spill" for a in archs) + " |",
             "|---|---|---|" + "---|" * len(archs)]
    by_name: Dict[str, Dict[int, dict]] = {}
    for r in rows:
        by_name.setdefault(str(r["name"]), {})[int(r["arch"])] = r

    def cell(r):
        if r is None:
            return "-"
        if r.get("status") != "ok":
            return "FAILED"
        return f"{r.get('regs')} / {int(r.get('smem_bytes') or 0) // 1024} KiB / {r.get('local_bytes')} B"

    for name, per_arch in by_name.items():
        first = next(iter(per_arch.values()))
        lines.append(f"| `{name}` | {first.get('num_warps')} | {first.get('num_stages', '-')} | "
                     + " | ".join(cell(per_arch.get(a)) for a in archs) + " |")
    paths[1].write_text("\n".join(lines) + "\n")
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", nargs="+", type=int, default=[80, 90])
    parser.add_argument("--write", metavar="DIR", help="regenerate DIR/triton_kernels.{json,md}")
    parser.add_argument("--check", metavar="DIR", help="compile only what DIR/triton_kernels.json lacks; fail if stale")
    parser.add_argument("--force", action="store_true", help="with --write: compile everything again")
    parser.add_argument("--only", help="only configurations whose name contains this")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compile processes")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("error: unset TRITON_INTERPRET (the kernels must be compiled, not interpreted)", file=sys.stderr)
        return 2
    import triton

    directory = args.write or args.check
    static = load_static(Path(directory)) if directory else None
    cached = {r["key"]: r for r in (static or {}).get("kernels", []) if r.get("key")} if not args.force else {}
    rows = compile_all(args.arch, cached, jobs=args.jobs, only=args.only)
    for r in rows:
        detail = "ok" if r["status"] != "ok" or r.get("regs") is None else \
            f"ok  regs {r['regs']}, smem {r['smem_bytes']} B, local {r['local_bytes']} B"
        print(f"sm_{r['arch']} {r['name']:45s} {detail if r['status'] == 'ok' else r['status']}")
    failed = [r for r in rows if r["status"] != "ok"]
    print(f"{len(rows) - len(failed)} compiled, {len(failed)} failed")
    status = 1 if failed else 0
    if args.write and not failed and args.only is None:
        for path in write_static(rows, Path(args.write)):
            print(f"wrote {path}")
    if args.check:
        reused = sum(1 for r in rows if r.get("key") in cached)
        print(f"{reused} of {len(rows)} from {Path(args.check) / (STATIC_STEM + '.json')}")
        if static is None or static.get("triton") != triton.__version__:
            print(f"note: the committed report is for Triton {(static or {}).get('triton')}, this is "
                  f"{triton.__version__}: compiled everything, staleness not judged")
        elif reused < len(rows):
            print(f"error: {len(rows) - reused} configuration(s) changed since the committed report; "
                  f"regenerate it: {WRITE_COMMAND}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
