"""The GPU probe's linear-softmax step: a forward tile / stage / split sweep (each checked against
fp32 on a slice), the fused backward with ``dh`` only, ``dW`` only, both, and with every tile
skipped (the recompute alone), and the chunked / stored / fused CE and log-prob paths broken
down into GEMM, row-kernel and other (accumulation, copies) time.

The launcher (``kernels.linear_softmax.linear_softmax_forward``) fixes ``num_warps`` and leaves
``num_stages`` at Triton's default, so the sweep launches ``_lsm_fwd_kernel`` directly with the
launcher's argument list and its own launch parameters.
"""

from __future__ import annotations

import re
from typing import Dict, List, Tuple

import torch

from ..kernels.aot_check import LSM_FWD_SWEEP
from ..kernels.linear_softmax import forward_splits
from .probe_context import Ctx, Step
from .probe_rows import find_row, fmt_ms, measured

CE_SHAPES = (("gemma2-2b", 8192, 2304, 256000), ("llama3-8b", 8192, 4096, 128256))
LOGPROB_SHAPE = ("logprob", 8192, 4096, 151936)
DRY_SHAPES = (("tiny", 32, 32, 512),)
DRY_PATH_SHAPE = ("tiny", 16, 32, 256)


def default_splits(n_tiles: int, v_tiles: int, sms: int) -> int:
    """The forward launcher's split count (``kernels.linear_softmax.forward_splits``).

    Example
    -------
    >>> default_splits(64, 2000, 132)     # 64 token tiles x 33 splits = 16 whole waves
    33
    """
    return forward_splits(n_tiles, v_tiles, sms)


def two_wave_splits(n_tiles: int, v_tiles: int, sms: int) -> int:
    """The launcher's split rule before the 2026-11-28 probe: ~2 waves, >= 8 vocabulary tiles
    per split, no whole-wave rounding (kept in the sweep as the comparison).

    Example
    -------
    >>> two_wave_splits(64, 2000, 132)     # 64 token tiles x 5 splits = 320 programs, 2.4 waves
    5
    """
    return max(1, min(-(-2 * sms // n_tiles), v_tiles // 8))


def lsm_forward_direct(h, w, y, block_n: int, block_v: int, block_d: int, num_stages: int, splits: int,
                       num_warps: int = 8) -> Tuple[torch.Tensor, int, int]:
    """``(stats [N, 4], programs, splits)`` of the linear-softmax forward (no bias, no softcap,
    T = 1) launched with the given tile, stages and splits; the launcher's arguments otherwise.

    Example
    -------
    >>> stats, programs, splits = lsm_forward_direct(h, w, y, 128, 256, 64, 3, 33)  # doctest: +SKIP
    """
    from ..kernels import linear_softmax as L
    from ..kernels._launch import cdiv, next_pow2

    n, d = h.shape
    v = w.shape[0]
    n_tiles, v_tiles = cdiv(n, block_n), cdiv(v, block_v)
    splits = max(1, min(splits, v_tiles))
    cols_per_split = cdiv(v_tiles, splits) * block_v
    splits = cdiv(v, cols_per_split)
    part = torch.empty((n, splits, 5), dtype=torch.float32, device=h.device)
    L._lsm_fwd_kernel[(n_tiles, splits)](
        h, w, w, y, part, n, v, d, h.stride(0), w.stride(0), cols_per_split, splits, 0.0, 1.0,
        HAS_BIAS=False, SOFTCAP=False, PRECISION=L._precision(h.dtype),
        BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_D=block_d, num_warps=num_warps, num_stages=num_stages,
    )
    stats = torch.empty((n, 4), dtype=torch.float32, device=h.device)
    block_s = max(2, next_pow2(splits))
    block_r = max(1, min(64, 2048 // block_s))
    L._lsm_combine_kernel[(cdiv(n, block_r),)](part, stats, n, splits, BLOCK_R=block_r, BLOCK_S=block_s, num_warps=4)
    return stats, n_tiles * splits, splits


def reference_stats(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """fp32 ``[rows, 4]`` (lse, entropy, Σz, z_y) of the rows of ``h`` given.

    Example
    -------
    >>> stats, abs_z = reference_stats(torch.eye(2), torch.eye(2), torch.tensor([0, 1]))
    >>> stats[:, 3].tolist()          # z_y: the label's logit
    [1.0, 1.0]
    """
    z = h.float() @ w.float().T
    lse = torch.logsumexp(z, -1)
    ent = lse - (torch.softmax(z, -1) * z).sum(-1)
    return torch.stack([lse, ent, z.sum(-1), z.gather(1, y[:, None]).squeeze(1)], 1), z.abs().sum(-1)


def stats_close(got: torch.Tensor, want: torch.Tensor, abs_z: torch.Tensor) -> bool:
    """lse, entropy and z_y within 1e-2 + 1e-3·|x|; Σz within 1e-5 of Σ|z| (accumulation order).

    Example
    -------
    >>> want, abs_z = reference_stats(torch.eye(2), torch.eye(2), torch.tensor([0, 1]))
    >>> stats_close(want + 1e-4, want, abs_z), stats_close(want + 1.0, want, abs_z)
    (True, False)
    """
    got, want = got.float().cpu(), want.float().cpu()
    cols = [0, 1, 3]
    ok = ((got[:, cols] - want[:, cols]).abs() <= 1e-2 + 1e-3 * want[:, cols].abs()).all()
    return bool(ok and ((got[:, 2] - want[:, 2]).abs() <= 1e-2 + 1e-5 * abs_z.cpu()).all())


_GEMM = re.compile(r"gemm|nvjet|cutlass|xmma|cublas|sm\d\d_", re.I)


def kernel_breakdown(kernels) -> Dict[str, float]:
    """Split ``(name, ms)`` pairs into GEMM (cuBLAS), row kernels (ours: ``_rows*``), the fused
    linear-softmax kernels (``_lsm*``) and the rest (accumulation, copies, casts, memsets).

    Example
    -------
    >>> kernel_breakdown([("nvjet_tst_128x256", 5.0), ("_rows_grad_kernel", 1.0), ("elementwise_add", 0.5)])
    {'GEMM': 5.0, 'rows': 1.0, 'lsm': 0.0, 'other': 0.5}
    """
    out = {"GEMM": 0.0, "rows": 0.0, "lsm": 0.0, "other": 0.0}
    for name, ms in kernels:
        key = "rows" if name.startswith("_rows") else "lsm" if name.startswith("_lsm") else \
            "GEMM" if _GEMM.search(name) else "other"
        out[key] += ms
    return {k: round(v, 4) for k, v in out.items()}


def _inputs(n: int, d: int, v: int, device, dtype=torch.bfloat16, grad: bool = False):
    if device.type == "cpu":  # dry run: the interpreter's tl.dot gives garbage on bf16 (fp32 is right)
        dtype = torch.float32
    g = torch.Generator(device=device).manual_seed(n + d + v)
    h = torch.randn(n, d, device=device, generator=g).to(dtype).requires_grad_(grad)
    w = (torch.randn(v, d, device=device, generator=g) / d**0.5).to(dtype).requires_grad_(grad)
    y = torch.randint(0, v, (n,), device=device, generator=g)
    return h, w, y


def _dt(ctx: Ctx) -> str:
    return "float32" if ctx.device.type == "cpu" else "bfloat16"


def _forward_sweep(ctx: Ctx, name: str, n: int, d: int, v: int, sms: int) -> None:
    from ..kernels._launch import cdiv

    dev = ctx.device
    h = w = y = want = abs_z = None
    shape = f"N={n} D={d} V={v}"
    flops = 2 * n * d * v
    sweep = LSM_FWD_SWEEP[:2] if ctx.dry else LSM_FWD_SWEEP  # a dry run needs the code path, not every tile
    for bn, bv, bd, stages in sweep:
        n_tiles, v_tiles = cdiv(n, bn), cdiv(v, bv)
        base = default_splits(n_tiles, v_tiles, sms)
        for splits in dict.fromkeys((base, two_wave_splits(n_tiles, v_tiles, sms))):
            if not ctx.mine(("lsm_fwd", bn, bv, bd, stages)):  # the split count does not change the compile
                continue
            if h is None:
                h, w, y = _inputs(n, d, v, dev)
                rows = min(n, 256)
                want, abs_z = reference_stats(h[:rows], w, y[:rows])

            def run(bn=bn, bv=bv, bd=bd, stages=stages, splits=splits):
                return lsm_forward_direct(h, w, y, bn, bv, bd, stages, splits)

            try:
                stats, programs, used = ctx.call(run)
                check = stats_close(stats[: want.shape[0]], want, abs_z)
            except Exception as exc:
                ctx.row(op="linear_softmax_fwd", mode="fwd", shape=shape, dtype=_dt(ctx),
                        provider=f"tile {bn}x{bv}x{bd} s{stages} splits={splits}",
                        status=f"error: {type(exc).__name__}: {str(exc)[:300]}")
                continue
            ctx.record(run, "eager", op="linear_softmax_fwd", mode="fwd", shape=shape, dtype=_dt(ctx),
                       provider=f"tile {bn}x{bv}x{bd} s{stages} splits={used}",
                       variant="default" if (bn, bv, bd, stages) == LSM_FWD_SWEEP[0] and splits == base else "",
                       check=check, derive=lambda ms: {"TFLOP/s": round(flops / ms / 1e9, 1)},
                       info={"model": name, "programs": programs, "waves": round(programs / sms, 2)})


def _backward(ctx: Ctx, name: str, n: int, d: int, v: int) -> None:
    from ..kernels.linear_softmax import linear_softmax_backward, linear_softmax_forward

    dev = ctx.device
    shape = f"N={n} D={d} V={v}"
    cases = (("dh + dW", True, True, False), ("dh only", True, False, False), ("dW only", False, True, False),
             ("every tile skipped (recompute only)", True, True, True))
    h = None
    for label, need_dh, need_dw, skip_all in cases:
        if ctx.dry and label in ("dh only", "dW only"):
            continue  # the same probe code as the rows kept; slow to interpret
        if not ctx.mine(("lsm_bwd", need_dh, need_dw, skip_all)):
            continue
        if h is None:
            h, w, y = _inputs(n, d, v, dev)
            stats = linear_softmax_forward(h, w, None, y, 0.0, 1.0)
            # cross-entropy's logit gradient: dz = p - [j = y], i.e. coefficients (A, B, C, D) = (1, 0, -1, 0) / N
            coeffs = torch.tensor([1.0, 0.0, -1.0, 0.0], device=dev).repeat(n, 1) / n
        thresh = torch.full((n,), float("inf"), device=dev) if skip_all else None

        def run(need_dh=need_dh, need_dw=need_dw, thresh=thresh):
            return linear_softmax_backward(coeffs, thresh, h, w, None, y, stats, 0.0, 1.0, False,
                                           need_dh=need_dh, need_dw=need_dw)

        ctx.record(run, "eager", op="linear_softmax_bwd", mode="bwd", shape=shape, dtype=_dt(ctx),
                   provider=f"fused backward: {label}", info={"model": name})


def _paths(ctx: Ctx, shapes) -> None:
    from ..ops.linear_cross_entropy import linear_cross_entropy
    from ..ops.linear_logprob_entropy import linear_logprob_entropy
    from .linear_logprob_entropy import trl_logprob_entropy

    dev = ctx.device
    for op, impls, (name, n, d, v) in shapes:
        for impl in impls:
            if not ctx.mine((op, impl, n, d, v)):
                continue
            h, w, y = _inputs(n, d, v, dev, grad=True)
            if op == "linear_cross_entropy" and impl == "torch":  # torch's own F.linear_cross_entropy
                options = torch.nn.LinearCrossEntropyOptions()

                def run(h=h, w=w, y=y, options=options):
                    torch.nn.functional.linear_cross_entropy(h, w, y, options=options).backward()
            elif op == "linear_cross_entropy":
                # "chunked@T": T tokens per chunk instead of the default (a larger chunk runs
                # larger GEMMs and re-reads dW fewer times, for more logits memory)
                base_impl, _, tokens = impl.partition("@")

                def run(impl=base_impl, h=h, w=w, y=y, chunk=int(tokens) if tokens else None):
                    linear_cross_entropy(h, w, y, impl=impl, chunk_size=chunk).backward()
            elif impl == "trl":  # TRL's chunked kernel, the peer of the TRL integration
                g1, g2 = torch.randn(n, device=dev), torch.randn(n, device=dev)

                def run(h=h, w=w, y=y, g1=g1, g2=g2):
                    lp, ent = trl_logprob_entropy(h, w, y)
                    torch.autograd.backward([lp, ent], [g1, g2])
            else:
                g1, g2 = torch.randn(n, device=dev), torch.randn(n, device=dev)

                def run(impl=impl, h=h, w=w, y=y, g1=g1, g2=g2):
                    lp, ent = linear_logprob_entropy(h, w, y, impl=impl)
                    torch.autograd.backward([lp, ent], [g1, g2])

            fields = dict(op=op, mode="fwd+bwd", shape=f"N={n} D={d} V={v}", dtype=_dt(ctx), info={"model": name})
            peer = {"trl": "trl chunked", "torch": "torch F.linear_cross_entropy"}.get(impl)
            ctx.record(run, "eager", grads=[h, w], provider=peer or f"entropy_kernels {impl}", kind="baseline" if peer else "ours",
                       **fields)
            if ctx.warm or peer:
                continue
            row = ctx.record(run, "kernel", grads=[h, w], provider=f"entropy_kernels {impl} (kernels only)", **fields)
            if row is not None and row["status"] == "ok":
                row_info = row.get("info") or {}
                ctx.row(**{k: v for k, v in fields.items() if k != "info"}, provider=f"entropy_kernels {impl} breakdown",
                        kind="info", timing="kernel", info=kernel_breakdown([(k, us / 1e3) for k, us in row_info.get("kernels", [])]))  # the row keeps µs
            del h, w, y
            if ctx.cuda:
                torch.cuda.empty_cache()


def _lsm(ctx: Ctx) -> None:
    from ..kernels._launch import sm_count

    sms = sm_count(ctx.device)
    shapes = DRY_SHAPES if ctx.dry else CE_SHAPES
    for name, n, d, v in shapes:
        _forward_sweep(ctx, name, n, d, v, sms)
    for name, n, d, v in shapes:
        _backward(ctx, name, n, d, v)
    from .linear_logprob_entropy import trl_available

    peers = ("trl",) if trl_available() else ()
    torch_ce = ("torch",) if hasattr(torch.nn.functional, "linear_cross_entropy") else ()
    if ctx.dry:  # the same probe code as on a GPU, without the slow interpreted tiles
        _paths(ctx, [("linear_cross_entropy", ("chunked", "chunked@8") + torch_ce, DRY_PATH_SHAPE),
                     ("linear_logprob_entropy", ("stored", "chunked") + peers, DRY_PATH_SHAPE)])
    else:
        # the default chunk is 512 MiB of logits (1024 / 2048 tokens at these vocabularies)
        chunks = ("chunked@2048", "chunked@4096")
        _paths(ctx, [("linear_cross_entropy", ("chunked",) + chunks + ("fused",) + torch_ce, s) for s in shapes]
               + [("linear_logprob_entropy", ("stored", "chunked", "fused") + peers, LOGPROB_SHAPE)])


def _lsm_summary(rows: List[dict]) -> List[str]:
    out = []
    fwd = [r for r in measured(rows) if r["op"] == "linear_softmax_fwd"]
    for shape in dict.fromkeys(r["shape"] for r in fwd):
        mine = [r for r in fwd if r["shape"] == shape]
        default = next((r for r in mine if r.get("variant") == "default"), None)
        good = [r for r in mine if r.get("check") is not False]
        best = min(good, key=lambda r: r["p50_ms"]) if good else None
        bad = [r["provider"] for r in mine if r.get("check") is False]
        if best:
            gain = f" = {default['p50_ms'] / best['p50_ms']:.2f}x the default {fmt_ms(default['p50_ms'])}" if default else ""
            out.append(f"fwd {shape}: best {best['provider']} {fmt_ms(best['p50_ms'])} "
                       f"({best['info'].get('TFLOP/s')} TFLOP/s, {best['info'].get('waves')} waves){gain}")
        if bad:
            out.append(f"fwd {shape}: FAILED the fp32 check: {', '.join(bad)}")
    for r in measured(rows):
        if r["op"] == "linear_softmax_bwd":
            out.append(f"bwd {r['shape']} {r['provider'][16:]}: {fmt_ms(r['p50_ms'])}")
    for r in rows:
        if r["provider"].endswith("breakdown") and r["status"] == "ok":
            total = find_row(rows, op=r["op"], shape=r["shape"], provider=r["provider"].replace(" breakdown", ""))
            i = r["info"]
            out.append(f"{r['op'][7:]} {r['shape']} {r['provider'][16:-10]}: eager {fmt_ms((total or {}).get('p50_ms'))}; "
                       f"GEMM {fmt_ms(i['GEMM'])}, rows {fmt_ms(i['rows'])}, lsm {fmt_ms(i['lsm'])}, other {fmt_ms(i['other'])}")
    for shape in dict.fromkeys(r["shape"] for r in rows if r["op"] == "linear_cross_entropy"):
        chunked = find_row(rows, op="linear_cross_entropy", shape=shape, provider="entropy_kernels chunked")
        fused = find_row(rows, op="linear_cross_entropy", shape=shape, provider="entropy_kernels fused")
        if chunked and fused:
            winner = "chunked" if chunked["p50_ms"] < fused["p50_ms"] else "fused"
            out.append(f"CE fwd+bwd {shape}: chunked {fmt_ms(chunked['p50_ms'])} vs fused {fmt_ms(fused['p50_ms'])} "
                       f"-> {winner} is the faster default")
        sizes = [r for r in rows if r["op"] == "linear_cross_entropy" and r["shape"] == shape and r["status"] == "ok"
                 and r["provider"].startswith("entropy_kernels chunked") and r.get("timing") == "eager"]
        if len(sizes) > 1:  # the chunk-size sweep: time and peak extra memory per chunk
            cells = [f"{r['provider'][16:]} {fmt_ms(r['p50_ms'])}"
                     + (f" ({r['peak_mem_bytes'] / 2**30:.2f} GiB)" if r.get("peak_mem_bytes") else "") for r in sizes]
            out.append(f"CE chunk sizes {shape}: " + "; ".join(cells))
    return out


STEPS = [Step("lsm", _lsm, 110, _lsm_summary,
              "linear-softmax fwd tile/stage/split sweep, fused bwd parts, chunked/stored/fused breakdown")]
