"""Compile every Triton kernel of the package ahead of time for real GPU targets — no GPU
needed. Triton's wheel carries the NVIDIA backend and ptxas, so a CPU-only machine (CI) can
lower each kernel to PTX and cubin: this catches what the interpreter cannot (globals that are
not constexpr, unsupported atomics, type errors in compiled-only code paths, register
overflows at the launch configurations we use).

    python -m entropy_kernels.kernels.aot_check --arch 80 90

Must run with TRITON_INTERPRET unset or 0 (the kernels must be JIT functions).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, Iterator, List, Tuple

BLOCK_NAMES = ("BLOCK_N", "BLOCK_V", "BLOCK_D")


def _configs() -> Iterator[Tuple[str, object, Dict[str, str], Dict[str, object]]]:
    """(name, kernel, signature, constexprs) for the launch configurations the ops use."""
    from . import cov_select as C
    from . import entropy as E
    from . import linear_softmax as L
    from . import logits_rows as R
    from . import top_h as T

    for dt in ("bf16", "fp32"):
        for split in (False, True):
            for row_temp in (False, True):
                yield (f"entropy_fwd[{dt},split={split},row_temp={row_temp}]", E._entropy_fwd_kernel, {
                    "x_ptr": f"*{dt}", "row_temp_ptr": "*fp32", "inv_temp": "fp32", "entropy_ptr": "*fp32",
                    "lse_ptr": "*fp32", "stats_ptr": "*fp32", "part_ptr": "*fp32", "n_cols": "i32", "n_inner": "i32",
                    "stride_outer": "i64", "stride_inner": "i64", "cols_per_split": "i32", "n_splits": "i32",
                }, {"HAS_ROW_TEMP": row_temp, "SPLIT": split, "ACC64": False, "BLOCK": 4096 if dt == "bf16" else 2048})
        yield (f"entropy_bwd[{dt}]", E._entropy_bwd_kernel, {
            "x_ptr": f"*{dt}", "row_temp_ptr": "*fp32", "inv_temp": "fp32", "entropy_ptr": "*fp32", "stats_ptr": "*fp32",
            "grad_entropy_ptr": "*fp32", "grad_lse_ptr": "*fp32", "grad_x_ptr": f"*{dt}", "n_cols": "i32", "n_inner": "i32",
            "stride_outer": "i64", "stride_inner": "i64", "cols_per_split": "i32",
        }, {"HAS_ROW_TEMP": False, "ACC64": False, "BLOCK": 4096 if dt == "bf16" else 2048})
    yield ("entropy_fwd[fp64]", E._entropy_fwd_kernel, {
        "x_ptr": "*fp64", "row_temp_ptr": "*fp32", "inv_temp": "fp32", "entropy_ptr": "*fp64", "lse_ptr": "*fp64",
        "stats_ptr": "*fp64", "part_ptr": "*fp64", "n_cols": "i32", "n_inner": "i32", "stride_outer": "i64",
        "stride_inner": "i64", "cols_per_split": "i32", "n_splits": "i32",
    }, {"HAS_ROW_TEMP": False, "SPLIT": False, "ACC64": True, "BLOCK": 2048})
    yield ("entropy_combine", E._entropy_combine_kernel, {
        "part_ptr": "*fp32", "entropy_ptr": "*fp32", "lse_ptr": "*fp32", "stats_ptr": "*fp32", "n_splits": "i32",
    }, {"BLOCK_S": 16})

    for dt in ("bf16", "fp32"):
        prec = "ieee" if dt == "fp32" else "tf32"
        common = {"h_ptr": f"*{dt}", "w_ptr": f"*{dt}", "b_ptr": f"*{dt}", "y_ptr": "*i64"}
        for bias, cap in ((False, False), (True, True)):
            yield (f"lsm_fwd[{dt},bias={bias},softcap={cap}]", L._lsm_fwd_kernel, {
                **common, "part_ptr": "*fp32", "N": "i32", "V": "i32", "D": "i32", "stride_h": "i32", "stride_w": "i32",
                "cols_per_split": "i32", "n_splits": "i32", "softcap": "fp32", "inv_temp": "fp32",
            }, {"HAS_BIAS": bias, "SOFTCAP": cap, "PRECISION": prec, **dict(zip(BLOCK_NAMES, L.FWD_BLOCKS))})
        for filt in (False, True):
            yield (f"lsm_bwd[{dt},filter={filt}]", L._lsm_bwd_kernel, {
                    **common, "stats_ptr": "*fp32", "coef_ptr": "*fp32", "thresh_ptr": "*fp32", "dh_ptr": "*fp32",
                    "dw_ptr": "*fp32", "db_ptr": "*fp32", "N": "i32", "V": "i32", "D": "i32", "stride_h": "i32",
                    "stride_w": "i32", "softcap": "fp32", "inv_temp": "fp32", "n_tiles_v": "i32",
                }, {"HAS_BIAS": True, "SOFTCAP": True, "FILTER": filt, "PRECISION": prec, "GROUP_N": 8,
                    "NEED_DH": True, "NEED_DW": not filt,
                    **dict(zip(BLOCK_NAMES, L.BWD_BLOCKS))})
        yield (f"rows_stats[{dt}]", R._rows_stats_kernel, {
            "x_ptr": f"*{dt}", "stride_row": "i32", "y_ptr": "*i64", "stats_ptr": "*fp32", "V": "i32",
            "softcap": "fp32", "inv_temp": "fp32",
        }, {"SOFTCAP": True, "BLOCK": 4096 if dt == "bf16" else 2048})
        yield (f"rows_grad[{dt}]", R._rows_grad_kernel, {
            "x_ptr": f"*{dt}", "stride_row": "i32", "out_ptr": f"*{dt}", "out_stride_row": "i32", "y_ptr": "*i64",
            "stats_ptr": "*fp32", "coef_ptr": "*fp32", "V": "i32", "softcap": "fp32", "inv_temp": "fp32",
        }, {"SOFTCAP": True, "BLOCK": 4096 if dt == "bf16" else 2048})
        block = 4096 if dt == "bf16" else 2048
        for exact, cand, n_select in ((False, 128, 100), (True, 1024, 1024)):
            for prefilter in (True, False):
                group, nsub = T.prefilter_groups(151936, n_select, block) if prefilter else (16, 16)
                cap = T.CAND_CAPACITY if prefilter else 16
                yield (f"top_h[{dt},exact={exact},prefilter={prefilter}]", T._top_h_kernel, {
                    "x_ptr": f"*{dt}", "stride_row": "i32", "n_cols": "i32", "alpha_ptr": "*fp32", "inv_temp": "fp32",
                    "seed_ptr": "*i64", "offset_ptr": "*i64", "mask_ptr": "*u8", "sample_ptr": "*i64",
                    "scratch_ptr": "*i64", "maxima_ptr": "*i64", "cand_ptr": "*i64", "n_select": "i32",
                }, {"EXACT": exact, "WRITE_MASK": True, "SAMPLE": True, "CAND": cand, "BLOCK": block,
                    "PREFILTER": prefilter, "GROUP": group, "NSUB": nsub, "CAP": cap, "BLOCK_C": min(1024, cap)})
    yield from _cov_configs(C)
    yield ("lsm_combine", L._lsm_combine_kernel, {"part_ptr": "*fp32", "stats_ptr": "*fp32", "N": "i32", "n_splits": "i32"},
           {"BLOCK_R": 64, "BLOCK_S": 32})


def _cov_configs(C):
    """Clip-Cov / KL-Cov selection and loss kernels (kernels/cov_select.py)."""
    data = {"lp_ptr": "*fp32", "adv_ptr": "*fp32", "mask_ptr": "*i1"}
    yield ("cov_stats", C._stats_kernel, {**data, "part_ptr": "*fp64", "ctrl_ptr": "*i32", "N": "i32", "chunk": "i32"},
           {"ZERO_CTRL": True, "BLOCK": 1024})
    for dt, mask_t in (("fp32", "*i1"), ("bf16", "*fp32"), ("fp64", "*i64")):
        for clip in (False, True):
            for hist in (False, True):
                yield (f"cov_keys[{dt},clip={clip},hist={hist}]", C._keys_kernel, {
                    "lp_ptr": f"*{dt}", "adv_ptr": f"*{dt}", "mask_ptr": mask_t, "old_ptr": f"*{dt}", "part_ptr": "*fp64",
                    "n_parts": "i32", "stats_ptr": "*fp64", "key_ptr": "*i32" if hist else "*i64", "ctrl_ptr": "*i32",
                    "seed_ptr": "*i64", "offset_ptr": "*i64", "N": "i32", "chunk": "i32", "clip_low": "fp32",
                    "clip_high": "fp32", "lb": "fp32", "ub": "fp32",
                }, {"MODE": int(clip), "HIST": hist, "KEY64": not hist, "ACC64": dt == "fp64", "HAS_OFFSET": clip and hist,
                    "P_BLOCK": 512, "BLOCK": 1024})
    for dt in ("fp32", "bf16"):  # high_entropy_mask: keys are the values, no statistics
        yield (f"cov_keys[{dt},top_values]", C._keys_kernel, {
            "lp_ptr": f"*{dt}", "adv_ptr": f"*{dt}", "mask_ptr": "*i1", "old_ptr": f"*{dt}", "part_ptr": "*i32",
            "n_parts": "i32", "stats_ptr": "*i32", "key_ptr": "*i32", "ctrl_ptr": "*i32", "seed_ptr": "*i32",
            "offset_ptr": "*i32", "N": "i32", "chunk": "i32", "clip_low": "fp32", "clip_high": "fp32", "lb": "fp32",
            "ub": "fp32",
        }, {"MODE": 2, "HIST": True, "KEY64": False, "ACC64": False, "HAS_OFFSET": False, "P_BLOCK": 512, "BLOCK": 1024})
    ratio = {"r_hi": "fp32", "r_mid": "fp32", "r_lo": "fp32"}
    den = {"den_hi": "fp32", "den_lo": "fp32", "den_mult": "fp32"}
    for mode in (0, 1, 2):  # KL-Cov, Clip-Cov, top values
        common = {"key_ptr": "*i32", "stats_ptr": "*fp64" if mode < 2 else "*i32", "ctrl_ptr": "*i32"}
        yield (f"cov_hist2[mode={mode}]", C._hist2_kernel, {**common, "N": "i32", "chunk": "i32", **ratio},
               {"MODE": mode, "BLOCK": 1024})
        yield (f"cov_hist3[mode={mode}]", C._hist3_kernel, {**common, "rows_ptr": "*i32", "N": "i32", "chunk": "i32", **ratio},
               {"MODE": mode, "BLOCK": 1024})
        yield (f"cov_write[mode={mode}]", C._write_kernel, {
            **common, "rows_ptr": "*i32", "sel_ptr": "*i1", "N": "i32", "chunk": "i32", **ratio,
        }, {"MODE": mode, "P_BLOCK": 512, "BLOCK": 1024})
    for dt in ("fp32", "bf16", "fp64"):
        for clip in (False, True):
            for agg in (0, 1, 2):
                yield (f"cov_loss[{dt},clip={clip},agg={agg},iw={agg == 1},den={agg == 2}]", C._loss_kernel, {
                    "old_ptr": f"*{dt}", "lp_ptr": f"*{dt}", "adv_ptr": f"*{dt}", "mask_ptr": "*i1", "sel_ptr": "*i1",
                    "stats_ptr": "*fp64", "rowcnt_ptr": "*fp32", "iw_ptr": "*fp32", "den_ptr": "*fp64",
                    "coef_ptr": "*fp64" if dt == "fp64" else "*fp32", "part_ptr": "*fp64", "N": "i32", "T": "i32",
                    "B": "i32", "chunk": "i32", "clip_low": "fp32", "clip_high": "fp32", "kl_coef": "fp32", **den,
                }, {"CLIP": clip, "AGG": agg, "HAS_IW": agg == 1, "DEN_PTR": agg == 2, "ACC64": dt == "fp64", "BLOCK": 1024})
        for clip in (False, True):
            for agg in (0, 2):
                yield (f"cov_fused[{dt},clip={clip},agg={agg},iw={agg == 2},den={agg == 2}]", C._fused_kernel, {
                    "old_ptr": f"*{dt}", "lp_ptr": f"*{dt}", "adv_ptr": f"*{dt}", "mask_ptr": "*i1", "seed_ptr": "*i64",
                    "offset_ptr": "*i64", "rowcnt_ptr": "*fp32", "iw_ptr": "*fp32", "den_ptr": "*fp64", "part_ptr": "*fp64",
                    "stats_ptr": "*fp64",
                    "ctrl_ptr": "*i32", "key_ptr": "*i32", "rows_ptr": "*i32", "sel_ptr": "*i1",
                    "coef_ptr": "*fp64" if dt == "fp64" else "*fp32", "loss_ptr": "*fp64" if dt == "fp64" else "*fp32",
                    "metrics_ptr": "*fp32", "count_ptr": "*i64", "N": "i32", "T": "i32", "B": "i32", "chunk": "i32",
                    "clip_low": "fp32", "clip_high": "fp32", "lb": "fp32", "ub": "fp32", "kl_coef": "fp32", **ratio, **den,
                }, {"MODE": int(clip), "LOSS": True, "AGG": agg, "HAS_IW": agg == 2, "DEN_PTR": agg == 2, "ACC64": dt == "fp64",
                    "HAS_OFFSET": False,
                    "P_BLOCK": 256, "BLOCK": 1024})
        for clip in (False, True):  # selection only (clip_cov_select / kl_cov_select)
            yield (f"cov_fused[{dt},clip={clip},select]", C._fused_kernel, {
                "old_ptr": f"*{dt}", "lp_ptr": f"*{dt}", "adv_ptr": f"*{dt}", "mask_ptr": "*i1", "seed_ptr": "*i64",
                "offset_ptr": "*i64", **{name: "*fp64" for name in ("rowcnt_ptr", "iw_ptr", "den_ptr", "part_ptr", "stats_ptr")},
                "ctrl_ptr": "*i32", "key_ptr": "*i32", "rows_ptr": "*i32", "sel_ptr": "*i1",
                **{name: "*fp64" for name in ("coef_ptr", "loss_ptr", "metrics_ptr", "count_ptr")},
                "N": "i32", "T": "i32", "B": "i32", "chunk": "i32", "clip_low": "fp32", "clip_high": "fp32",
                "lb": "fp32", "ub": "fp32", "kl_coef": "fp32", **ratio, **den,
            }, {"MODE": int(clip), "LOSS": False, "AGG": 0, "HAS_IW": False, "DEN_PTR": False, "ACC64": dt == "fp64",
                "HAS_OFFSET": True,
                "P_BLOCK": 256, "BLOCK": 1024})
        if dt != "fp64":
            yield (f"cov_fused[{dt},top_values]", C._fused_kernel, {
                "old_ptr": f"*{dt}", "lp_ptr": f"*{dt}", "adv_ptr": f"*{dt}", "mask_ptr": "*i1",
                **{name: "*i32" for name in ("seed_ptr", "offset_ptr", "rowcnt_ptr", "iw_ptr", "den_ptr", "part_ptr",
                                             "stats_ptr", "ctrl_ptr", "key_ptr", "rows_ptr")},
                "sel_ptr": "*i1", **{name: "*i32" for name in ("coef_ptr", "loss_ptr", "metrics_ptr", "count_ptr")},
                "N": "i32", "T": "i32", "B": "i32", "chunk": "i32", "clip_low": "fp32",
                "clip_high": "fp32", "lb": "fp32", "ub": "fp32", "kl_coef": "fp32", **ratio, **den,
            }, {"MODE": 2, "LOSS": False, "AGG": 0, "HAS_IW": False, "DEN_PTR": False, "ACC64": False, "HAS_OFFSET": False, "P_BLOCK": 256, "BLOCK": 1024})
        yield (f"cov_loss_combine[{dt}]", C._loss_combine_kernel, {
            "part_ptr": "*fp64", "n_parts": "i32", "stats_ptr": "*fp64", "rowcnt_ptr": "*fp32", "den_ptr": "*fp64",
            "loss_ptr": "*fp64" if dt == "fp64" else "*fp32", "metrics_ptr": "*fp32", "B": "i32", **den,
        }, {"CLIP": True, "AGG": 1, "DEN_PTR": True, "P_BLOCK": 512})


def compile_all(archs: List[int], num_warps: int = 8) -> List[Tuple[str, int, str]]:
    """Compile every configuration for every arch; returns (name, arch, "ok" | error) rows."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    rows = []
    for name, kernel, signature, constexprs in _configs():
        sig = dict(signature)
        sig.update({k: "constexpr" for k in constexprs})
        for arch in archs:
            try:
                src = ASTSource(fn=kernel, signature=sig, constexprs=constexprs)
                triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
                rows.append((name, arch, "ok"))
            except Exception as exc:  # report every failure, not just the first
                rows.append((name, arch, f"{type(exc).__name__}: {str(exc).strip()[-600:]}"))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", nargs="+", type=int, default=[80, 90])
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("error: unset TRITON_INTERPRET (the kernels must be compiled, not interpreted)", file=sys.stderr)
        return 2
    rows = compile_all(args.arch)
    for name, arch, status in rows:
        print(f"sm_{arch} {name:45s} {status}")
    failed = [r for r in rows if r[2] != "ok"]
    print(f"{len(rows) - len(failed)} compiled, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
