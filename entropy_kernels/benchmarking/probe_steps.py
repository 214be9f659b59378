"""Steps of the GPU probe (:mod:`.probe`): ceilings, the ``tl.histogram`` micro-benchmark, EKDF
decoder, Top-H, Clip-Cov / KL-Cov, entropy. The linear-softmax step is in
:mod:`.probe_lsm`. Each step measures beside the switch that decides a default (the variant
rows) and writes a check measured in the same run where one exists; its ``summary`` turns the
rows into the lines printed at the end.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import torch
import triton
import triton.language as tl

from .. import _backend, config, native
from .cases import Case
from .probe import Ctx, Step

ANCHOR = 16_777_216  # EKDF anchor: 16.8M bf16 values


def _name(base: str, *tags: str, timing: str = "eager") -> str:
    """Provider name with the bench's conventions: ``base (tag, …, CUDA graph)``.

    Example
    -------
    >>> _name("entropy_kernels clip_cov", "phase launches", timing="graph")
    'entropy_kernels clip_cov (phase launches, CUDA graph)'
    >>> _name("entropy_kernels")
    'entropy_kernels'
    """
    extra = {"eager": None, "graph": "CUDA graph", "wall": "back-to-back", "kernel": "kernels only"}[timing]
    tags = [t for t in (*tags, extra) if t]
    return f"{base} ({', '.join(tags)})" if tags else base


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.equal(a.reshape(-1).view(torch.int16), b.reshape(-1).view(torch.int16)))


def _fmt(ms: Optional[float]) -> str:
    if ms is None or (isinstance(ms, float) and math.isnan(ms)):
        return "-"
    return f"{ms * 1e3:.1f}us" if ms < 1 else f"{ms:.2f}ms"


def _ok(rows: Sequence[dict]) -> List[dict]:
    return [r for r in rows if r.get("status") == "ok" and r.get("p50_ms") is not None]


def _find(rows: Sequence[dict], **match) -> Optional[dict]:
    for r in _ok(rows):
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def _geo(ratios: Sequence[float]) -> Optional[float]:
    ratios = [r for r in ratios if r and r > 0 and math.isfinite(r)]
    return math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else None


def _same_case(r: dict) -> tuple:
    """What a row measures, apart from its variant (and the variant's tag in the provider)."""
    return r["op"], r["mode"], r["shape"], r["dtype"], r["provider"].split(" (")[0], r["timing"]


def decide(rows: Sequence[dict], a: str, b: str, switch: str, key=_same_case) -> List[str]:
    """Compare variant ``a`` (the default) with ``b`` over every row pair measured both ways
    (same ``key``): the geometric-mean time ratio b/a, the wins each way, and the decision the
    rule in docs/gpu-probe.md makes of it.

    Example
    -------
    >>> rows = [{"op": "o", "mode": "fwd", "shape": f"B={b}", "dtype": "float32", "provider": "p", "timing": "graph",
    ...          "variant": v, "p50_ms": ms, "status": "ok"} for b, v, ms in ((1, "a", 2.0), (1, "b", 1.0))]
    >>> decide(rows, "a", "b", "SWITCH")[0].endswith("make 'b' the default and delete the switch")
    True
    """
    by: Dict[object, Dict[str, float]] = {}
    failed = set()
    for r in _ok(rows):
        if r.get("variant") in (a, b) and r.get("timing") != "wall":  # host time is not the variant's
            by.setdefault(key(r), {})[r["variant"]] = r["p50_ms"]
            if r.get("check") is False:  # a wrong answer wins nothing
                failed.add(key(r))
    pairs = [(v[a], v[b]) for k, v in by.items() if a in v and b in v and k not in failed]
    note = f" ({len(failed)} cases left out: a check failed)" if failed else ""
    if not pairs:
        return [f"{switch}: no paired rows{note}"]
    g = _geo([y / x for x, y in pairs])
    wins_b = sum(1 for x, y in pairs if y < x * 0.97)
    wins_a = sum(1 for x, y in pairs if x < y * 0.97)
    if g < 0.97 and wins_b >= wins_a:
        verdict = f"-> make '{b}' the default and delete the switch"
    elif g > 1.03 and wins_a >= wins_b:
        verdict = f"-> keep '{a}' and delete the '{b}' path"
    else:
        verdict = "-> no clear winner (within 3% or mixed): keep the simpler path"
    return [f"{switch}: {b} / {a} time = {g:.2f}x (geo-mean of {len(pairs)} pairs; {b} faster in {wins_b}, "
            f"{a} faster in {wins_a}){note} {verdict}"]


def _read_floor(ctx: Ctx) -> bool:
    """Whether ``native.read_checksum`` runs here: ``_C`` built (with CUDA, on a GPU)."""
    return _backend.native() is not None and (native.cuda_compiled() or not ctx.cuda)


def environment_extras(device: torch.device) -> dict:
    """What else the probe's rows depend on: SMs, ncu, importable baselines.

    Example
    -------
    >>> sorted(environment_extras(torch.device("cpu")))
    ['ncu', 'peers', 'sm_count']
    """
    from ..kernels._launch import sm_count

    def importable(name):
        try:
            __import__(name)
            return True
        except Exception:
            return False

    return {"sm_count": sm_count(device), "ncu": shutil.which("ncu"),
            "peers": {n: importable(n) for n in ("transformers", "dfloat11", "cupy", "cut_cross_entropy", "liger_kernel")}}


# ---------------------------------------------------------------------------------------------
# ceilings: what the hardware gives at the probe's sizes


def _ceilings(ctx: Ctx) -> None:
    if ctx.warm:  # nothing of ours to compile
        return
    dev = ctx.device
    n_bytes = (1 << 22) if ctx.dry else (1 << 30)
    x = torch.randn(n_bytes // 2, device=dev).to(torch.bfloat16)
    dst = torch.empty_like(x)
    gbps = lambda reads_writes: (lambda ms: {"GB/s": round(reads_writes * n_bytes / ms / 1e6, 1)})  # noqa: E731
    shape = f"bytes={n_bytes}"
    for timing in ("eager", "graph"):
        ctx.record(lambda: dst.copy_(x), timing, op="ceiling", mode="copy", shape=shape, dtype="bfloat16",
                   provider=_name("floor: copy", timing=timing), kind="floor", derive=gbps(2))
    if _read_floor(ctx):
        ctx.record(lambda: native.read_checksum(x), "eager", op="ceiling", mode="read", shape=shape, dtype="bfloat16",
                   provider="floor: read (_C)", kind="floor", derive=gbps(1))
    del x, dst
    shapes = [("tiny", 64, 32, 512)] if ctx.dry else [("gemma2-2b", 8192, 2304, 256000), ("llama3-8b", 8192, 4096, 128256)]
    for name, n, d, v in shapes:
        h = torch.randn(n, d, device=dev).to(torch.bfloat16)
        w = (torch.randn(v, d, device=dev) / d**0.5).to(torch.bfloat16)
        out = torch.empty(n, v, device=dev, dtype=torch.bfloat16)
        ctx.record(lambda: torch.matmul(h, w.T, out=out), "eager", op="ceiling", mode="gemm",
                   shape=f"N={n} D={d} V={v}", dtype="bfloat16", provider="cuBLAS GEMM h·Wᵀ", kind="floor",
                   derive=lambda ms, f=2 * n * d * v: {"TFLOP/s": round(f / ms / 1e9, 1)}, info={"model": name})
        del h, w, out


def _ceilings_summary(rows: List[dict]) -> List[str]:
    out = []
    for r in _ok(rows):
        info = r.get("info") or {}
        rate = info.get("GB/s") or info.get("TFLOP/s")
        unit = "GB/s" if "GB/s" in info else "TFLOP/s"
        out.append(f"{r['mode']:5s} {r['shape']:28s} {r['provider']:28s} {_fmt(r['p50_ms']):>9s}  {rate} {unit}")
    return out


# ---------------------------------------------------------------------------------------------
# tl.histogram: cost per call by bin count, elements per call and key spread


@triton.jit
def _histogram_probe_kernel(x_ptr, out_ptr, iters, NB: tl.constexpr, BLOCK: tl.constexpr, HIST: tl.constexpr):
    """Each program makes ``iters`` calls of ``tl.histogram`` over ``BLOCK`` keys (one of 8
    key blocks, L2/L1 resident) and stores the summed histogram; ``HIST=False`` does the same
    loads and a sum instead: the loop's cost without the histogram."""
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros((NB,), tl.int32)
    total = tl.zeros((BLOCK,), tl.int32)
    for i in range(iters):
        k = tl.load(x_ptr + ((pid + i) % 8) * BLOCK + offs)
        if HIST:
            acc += tl.histogram(k, NB)
        else:
            total += k
    if HIST:
        tl.store(out_ptr + pid * NB + tl.arange(0, NB), acc)
    else:
        tl.store(out_ptr + pid * NB + tl.arange(0, NB), acc + tl.sum(total, 0))


HIST_BINS = (256, 512, 1024, 2048)
HIST_BLOCKS = (1024, 4096)
HIST_ITERS = 200


def _expected_histograms(x: torch.Tensor, programs: int, iters: int, nb: int, block: int) -> torch.Tensor:
    """What every program must store: Σ over its iterations of the bincount of its key block."""
    per_block = torch.stack([torch.bincount(x[b * block:(b + 1) * block].long(), minlength=nb) for b in range(8)])
    uses = torch.zeros(programs, 8, dtype=torch.long)
    for p in range(programs):
        for b in range(8):
            uses[p, b] = len(range((b - p) % 8, iters, 8))
    return (uses @ per_block).to(torch.int32)


def _histogram(ctx: Ctx) -> None:
    from ..kernels._launch import sm_count

    dev = ctx.device
    programs = 2 if ctx.dry else sm_count(dev)
    iters = 2 if ctx.dry else HIST_ITERS
    bins, blocks = ((256, 2048), (1024,)) if ctx.dry else (HIST_BINS, HIST_BLOCKS)
    g = torch.Generator().manual_seed(0)
    for block in blocks:
        base_ms = None
        if ctx.mine(("hist", 0, block)):
            x = torch.randint(0, 256, (8 * block,), generator=g, dtype=torch.int32).to(dev)
            out = torch.empty(programs, 256, dtype=torch.int32, device=dev)
            row = ctx.record(lambda: _histogram_probe_kernel[(programs,)](x, out, iters, NB=256, BLOCK=block, HIST=False,
                                                                          num_warps=8),
                             "eager", op="tl.histogram", mode="loop without histogram", shape=f"NB=0 BLOCK={block}",
                             dtype="int32", provider="load + sum loop", kind="floor",
                             info={"programs": programs, "iters": iters})
            base_ms = row["p50_ms"] if row and row.get("p50_ms") is not None else None
        for nb in bins:
            if not ctx.mine(("hist", nb, block)):
                continue
            for spread in ("uniform", "crowded"):
                hi = nb if spread == "uniform" else 4  # crowded: every key in 4 neighbouring bins
                x = (torch.randint(0, hi, (8 * block,), generator=g, dtype=torch.int32) + (0 if hi == nb else nb // 2)).to(dev)
                out = torch.empty(programs, nb, dtype=torch.int32, device=dev)

                def run(x=x, out=out, nb=nb):
                    _histogram_probe_kernel[(programs,)](x, out, iters, NB=nb, BLOCK=block, HIST=True, num_warps=8)

                def derive(ms, base=base_ms):
                    per = ms / iters * 1e3
                    net = None if base is None else (ms - base) / iters * 1e3
                    return {"us_per_call": round(per, 3), "us_per_call_net": None if net is None else round(net, 3)}

                row = ctx.record(run, "eager", op="tl.histogram", mode=spread, shape=f"NB={nb} BLOCK={block}",
                                 dtype="int32", provider="tl.histogram per call", derive=derive,
                                 info={"programs": programs, "iters": iters, "num_warps": 8})
                if row is not None and row["status"] == "ok":
                    run()
                    ctx.sync()
                    ok = torch.equal(out.cpu(), _expected_histograms(x.cpu(), programs, iters, nb, block))
                    ctx.row(**{k: row[k] for k in ("op", "mode", "shape", "dtype")}, provider="check vs torch.bincount",
                            kind="info", check=ok)


def _histogram_summary(rows: List[dict]) -> List[str]:
    out = []
    for block in HIST_BLOCKS:
        for spread in ("uniform", "crowded"):
            cells = []
            for nb in HIST_BINS:
                r = _find(rows, mode=spread, shape=f"NB={nb} BLOCK={block}", provider="tl.histogram per call")
                info = (r or {}).get("info") or {}
                v = info.get("us_per_call_net", info.get("us_per_call"))
                cells.append(f"{nb}:{v if v is not None else '-'}")
            out.append(f"us per call (net of the load loop), {block} keys, {spread}: " + "  ".join(cells))
    r = _find(rows, mode="uniform", shape="NB=2048 BLOCK=1024", provider="tl.histogram per call")
    v = ((r or {}).get("info") or {}).get("us_per_call_net")
    if v is not None:
        verdict = "confirmed (within 2x)" if 5 <= v <= 20 else "refuted"
        out.append(f"static model: ~10 us per 2048-bin call over 1024 keys -> measured {v} us: {verdict}")
    return out


# ---------------------------------------------------------------------------------------------
# EKDF decoder


DFLOAT_SIZES = (262_144, 1_048_576, ANCHOR, 536_870_912)
NCU_METRICS = (
    "gpu__time_duration.sum", "smsp__inst_executed.sum", "l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum",
    "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum", "sm__warps_active.avg.pct_of_peak_sustained_active",
    "smsp__issue_active.avg.pct_of_peak_sustained_active",
)


def _weights(n: int, device: torch.device, seed: int) -> torch.Tensor:
    """N(0, 0.02) bf16 values made on ``device`` (fast for the 1 GiB tensor)."""
    g = torch.Generator(device=device).manual_seed(seed)
    return (torch.randn(n, generator=g, device=device) * 0.02).to(torch.bfloat16)


_NCU_SCRIPT = """
import sys, torch
from entropy_kernels.decoding.dfloat import DFloatTensor
x = (torch.randn({n}, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)
c = DFloatTensor.compress(x).to("cuda")
o = torch.empty({n}, dtype=torch.bfloat16, device="cuda")
c.decompress(out=o)
torch.cuda.synchronize()
"""


def ncu_counters(n: int, timeout_s: float = 90) -> Dict[str, str]:
    """``{metric: value}`` of one decode of ``n`` values under Nsight Compute (clocks not
    locked: the rates of a normal run).

    Example
    -------
    >>> ncu_counters(16_777_216)["gpu__time_duration.sum"]  # doctest: +SKIP
    '76.7 usecond'
    """
    import csv

    with tempfile.TemporaryDirectory() as tmp:
        script, log = os.path.join(tmp, "decode.py"), os.path.join(tmp, "ncu.csv")
        with open(script, "w") as f:
            f.write(_NCU_SCRIPT.format(n=n))
        cmd = [shutil.which("ncu") or "ncu", "--clock-control", "none", "--csv", "--log-file", log,
               "--kernel-name", "regex:decode_kernel", "--launch-count", "1",
               "--metrics", ",".join(NCU_METRICS), sys.executable, script]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        text = (open(log).read() if os.path.exists(log) else "") + "\n" + proc.stdout
        lines = [ln for ln in text.splitlines() if ln.startswith('"')]  # the CSV rows; not ==PROF== lines
    header = next((i for i, ln in enumerate(lines) if ln.startswith('"ID"')), None)
    if header is None:
        raise RuntimeError(f"no ncu metrics (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-300:]}")
    table = [row for row in csv.DictReader(lines[header:]) if row.get("ID", "").isdigit()]
    if not table:
        raise RuntimeError(f"no ncu metrics (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-300:]}")
    first = min((row["ID"] for row in table), key=int)  # the decode (one launch is profiled)
    return {row["Metric Name"]: f"{row['Metric Value']} {row.get('Metric Unit', '')}".strip()
            for row in table if row["ID"] == first}


def _ekdf(ctx: Ctx) -> None:
    if ctx.warm:  # CUDA C++ in _C: nothing for Triton to compile
        return
    if _backend.native() is None:
        ctx.row(op="dfloat_decompress", mode="fwd", provider="entropy_kernels", status=f"skipped: _C not built "
                f"({_backend.native_error()})"[:300])
        return
    from ..decoding.dfloat import DFloatTensor
    from .dfloat import dfloat11_available, dfloat11_encode

    dev = ctx.device
    sizes = (4096, 16_384) if ctx.dry else DFLOAT_SIZES
    for n in sizes:
        shape = f"N={n}"
        x = _weights(n, dev, seed=n)
        t0 = time.perf_counter()
        c = DFloatTensor.compress(x.cpu())
        encode_s = time.perf_counter() - t0
        c = c.to(dev)
        out = torch.empty(n, dtype=torch.bfloat16, device=dev)
        dst = torch.empty_like(x)
        gbps = lambda ms, n=n: {"GB/s of output": round(2 * n / ms / 1e6, 1)}  # noqa: E731
        for timing in ("eager", "graph"):
            ctx.record(lambda: dst.copy_(x), timing, calls=20, op="dfloat_decompress", mode="fwd", shape=shape,
                       dtype="bfloat16", provider=_name("floor: copy", timing=timing), kind="floor", derive=gbps)
        out.fill_(float("nan"))
        c.decompress(out=out)
        exact = _bits_equal(out, x)
        for timing in ("eager", "graph"):
            ctx.record(lambda: c.decompress(out=out), timing, calls=20, op="dfloat_decompress", mode="fwd",
                       shape=shape, dtype="bfloat16", provider=_name("entropy_kernels", timing=timing), check=exact,
                       derive=gbps, info={"ratio": round(c.ratio, 4), "encode_s": round(encode_s, 2)})
        if ctx.cuda and n <= ANCHOR and dfloat11_available():
            try:
                t0 = time.perf_counter()
                decode11, size11 = dfloat11_encode(x.cpu(), dev)
                enc11 = time.perf_counter() - t0
                exact11 = _bits_equal(decode11(), x)
                ctx.record(decode11, "eager", op="dfloat_decompress", mode="fwd", shape=shape, dtype="bfloat16",
                           provider="dfloat11", kind="baseline", check=exact11, derive=gbps,
                           info={"ratio": round(size11 / (2 * n), 4), "encode_s": round(enc11, 2)})
            except Exception as exc:
                ctx.row(op="dfloat_decompress", mode="fwd", shape=shape, dtype="bfloat16", provider="dfloat11",
                        kind="baseline", status=f"error: {type(exc).__name__}: {str(exc)[:200]}")
        del x, c, out, dst
        if ctx.cuda:
            torch.cuda.empty_cache()
    shape = f"N={ANCHOR}"
    if not ctx.cuda:
        ctx.row(op="dfloat_decompress", mode="ncu", shape=shape, dtype="bfloat16", provider="ncu counters", kind="info",
                status="skipped: needs CUDA")
    elif shutil.which("ncu") is None:
        ctx.row(op="dfloat_decompress", mode="ncu", shape=shape, dtype="bfloat16", provider="ncu counters", kind="info",
                status="skipped: ncu not on PATH")
    else:
        try:
            ctx.row(op="dfloat_decompress", mode="ncu", shape=shape, dtype="bfloat16", provider="ncu counters",
                    kind="info", info=ncu_counters(ANCHOR))
        except Exception as exc:
            ctx.row(op="dfloat_decompress", mode="ncu", shape=shape, dtype="bfloat16", provider="ncu counters",
                    kind="info", status=f"error: {type(exc).__name__}: {str(exc)[:300]}")


def _ekdf_summary(rows: List[dict]) -> List[str]:
    out = []
    for shape in dict.fromkeys(r["shape"] for r in rows if r["mode"] == "fwd"):
        cells = []
        r = (_find(rows, shape=shape, provider="entropy_kernels (CUDA graph)")
             or _find(rows, shape=shape, provider="entropy_kernels"))
        if r:
            exact = {True: "exact", False: "NOT EXACT", None: ""}[r.get("check")]
            cells.append(f"ekdf {_fmt(r['p50_ms'])} {(r.get('info') or {}).get('GB/s of output', '')}GB/s {exact}")
        copy = _find(rows, shape=shape, provider="floor: copy (CUDA graph)") or _find(rows, shape=shape, provider="floor: copy")
        d11 = _find(rows, shape=shape, provider="dfloat11")
        out.append(f"{shape}: " + "; ".join(cells) + f"; copy {_fmt((copy or {}).get('p50_ms'))}"
                   + (f"; dfloat11 {_fmt(d11['p50_ms'])}" if d11 else ""))
    for r in rows:
        if r["provider"].startswith("ncu counters") and r["status"] == "ok":
            i = r["info"]
            out.append("ncu: " + ", ".join(f"{k.split('.')[0].split('__')[-1]}={i[k]}" for k in NCU_METRICS if k in i))
    return out


# ---------------------------------------------------------------------------------------------
# Top-H


TOP_H_V = 151936


def zipf_logits(rows: int, vocab: int, device, s: float = 1.1, seed: int = 0) -> torch.Tensor:
    """Peaked rows: p ∝ rank^-s over a random permutation of the vocabulary (an LM-like
    distribution), as logits ``-s·log(rank)``.

    Example
    -------
    >>> z = zipf_logits(2, 10, "cpu")
    >>> z.shape, bool((z.max(1).values == 0).all())
    (torch.Size([2, 10]), True)
    """
    g = torch.Generator().manual_seed(seed)
    ranks = torch.stack([torch.randperm(vocab, generator=g) for _ in range(rows)]).float() + 1
    return (-s * torch.log(ranks)).to(device)


def prefilter_candidates(logits: torch.Tensor, n_select: int, block: int) -> torch.Tensor:
    """Per row, how many keys the Top-H prefilter keeps as candidates: those ≥ the
    ``n_select``-th largest of the group maxima (groups as ``kernels.top_h.prefilter_groups``);
    -1 where the prefilter is off for this vocabulary.

    Example
    -------
    >>> prefilter_candidates(torch.arange(8192.0)[None], 100, 4096).tolist()   # groups of 64
    [6337]
    """
    from ..kernels.top_h import prefilter_groups

    b, v = logits.shape
    group, nsub = prefilter_groups(v, n_select, block)
    if nsub == 0:
        return torch.full((b,), -1, dtype=torch.long)
    z = logits.float()
    z = torch.where(torch.isnan(z), torch.full_like(z, float("-inf")), z)
    pad = (-v) % group
    zp = torch.nn.functional.pad(z, (0, pad), value=float("-inf"))
    maxima = zp.view(b, -1, group).max(-1).values
    low = maxima.topk(n_select, dim=1).values[:, -1:]
    return (z >= low).sum(1).cpu()


def _top_h(ctx: Ctx) -> None:
    from ..kernels.top_h import CAND_CAPACITY
    from ..ops.top_h import top_h_mask, top_h_sample

    dev = ctx.device
    # dry run: the transformers rule over 2048 logits (enough groups for its prefilter), the
    # exact rule over 256 (its 1024-candidate sort is slow to interpret; no prefilter there)
    vocab = (lambda rule: 2048 if rule == "transformers" else 256) if ctx.dry else (lambda rule: TOP_H_V)
    v = vocab("transformers")
    batches = (1,) if ctx.dry else (1, 64, 256)
    dtypes = (torch.float32,) if ctx.dry else (torch.float32, torch.bfloat16)
    seed, off = torch.tensor([1], device=dev), torch.tensor([0], device=dev)

    def op(x, rule, sample):
        if sample:
            return lambda: top_h_sample(x, 0.4, mode=rule, seed=seed, offset=off)
        return lambda: top_h_mask(x, 0.4, mode=rule)

    inputs: Dict[tuple, torch.Tensor] = {}
    for b in batches:
        for dtype in dtypes:
            for rule in ("transformers", "exact"):
                for sample in (False, True):
                    if not ctx.mine(("top_h", dtype, rule, sample)):
                        continue
                    if ctx.dry and rule == "exact" and sample:
                        continue  # slow to interpret, and the same probe code as the rows kept
                    key = (b, dtype, vocab(rule))
                    if key not in inputs:
                        inputs = {key: (torch.randn(b, vocab(rule), device=dev) * 3).to(dtype)}
                    x = inputs[key]
                    fn = op(x, rule, sample)
                    check = _top_h_check(x, rule, ctx.call(fn), sample)
                    base = f"entropy_kernels {rule} {'sample' if sample else 'mask'}"
                    for timing in ["eager", "graph"] + (["wall"] if b == 1 else []):
                        ctx.record(fn, timing, op="top_h", mode="fwd", shape=f"B={b} V={vocab(rule)}",
                                   dtype=str(dtype).replace("torch.", ""), provider=_name(base, timing=timing),
                                   check=check)
    if ctx.warm:
        return
    # peaked rows: the prefilter's bound is looser there (more keys per group maximum)
    b = 1 if ctx.dry else 64
    for name, x in (("randn*3", torch.randn(b, v, device=dev) * 3), ("zipf", zipf_logits(b, v, dev))):
        for rule, n_select in (("transformers", 100), ("exact", min(v, 1024))):
            cands = prefilter_candidates(x, n_select, 2048)
            if ctx.dry and rule == "exact":
                continue  # its interpreted call is slow and adds no code path
            ctx.row(op="top_h", mode="candidates", shape=f"B={b} V={v} {name}", dtype="float32", provider=f"prefilter {rule}",
                    kind="info", info={"mean": round(float(cands.float().mean()), 1), "max": int(cands.max()),
                                       "capacity": CAND_CAPACITY, "rows_over_capacity": int((cands > CAND_CAPACITY).sum())})
            if name != "zipf":
                continue
            fn = op(x, rule, False)
            ctx.record(fn, "graph", op="top_h", mode="fwd", shape=f"B={b} V={v} peaked=zipf", dtype="float32",
                       provider=_name(f"entropy_kernels {rule} mask", timing="graph"),
                       check=_top_h_check(x, rule, ctx.call(fn), False))
    _top_h_stats_rows(ctx, batches, dtypes, vocab("transformers"), seed, off)
    try:
        from transformers.generation.logits_process import TopHLogitsWarper
    except Exception as exc:
        ctx.row(op="top_h", mode="fwd", provider="transformers TopHLogitsWarper", kind="baseline",
                status=f"skipped: transformers not importable ({type(exc).__name__})")
        return
    warper = TopHLogitsWarper(top_h=0.4)
    for b in batches:
        for dtype in dtypes:
            x = (torch.randn(b, v, device=dev) * 3).to(dtype)
            for timing in ("eager", "wall"):
                ctx.record(lambda: warper(None, x), timing, op="top_h", mode="fwd", shape=f"B={b} V={v}",
                           dtype=str(dtype).replace("torch.", ""), kind="baseline",
                           provider=_name("transformers TopHLogitsWarper", timing=timing))


def _top_h_stats_rows(ctx: Ctx, batches, dtypes, v: int, seed, off) -> None:
    """The sampler with ``return_logprobs`` and the mask with ``return_log_mass`` (transformers
    rule): their cost over the plain calls, each output checked against float64 -- the sampled
    token's log-prob under the full softmax, and log Σ p over the kernel's own kept set."""
    from ..ops.top_h import top_h_mask, top_h_sample

    for b in batches:
        for dtype in dtypes:
            if not ctx.mine(("top_h stats", b, dtype)):
                continue
            x = (torch.randn(b, v, device=ctx.device) * 3).to(dtype)
            logp64 = torch.log_softmax(x.double(), -1)
            tol = 1e-4 if dtype == torch.float32 else 2e-3
            sample = lambda: top_h_sample(x, 0.4, mode="transformers", seed=seed, offset=off, return_logprobs=True)  # noqa: E731
            tokens, logp, _ = ctx.call(sample)
            check = bool(((logp.double() - logp64.gather(-1, tokens[:, None].long())[:, 0]).abs() <= tol * (1 + logp64.abs().max())).all())
            mask_fn = lambda: top_h_mask(x, 0.4, mode="transformers", return_log_mass=True)  # noqa: E731
            keep, log_mass = ctx.call(mask_fn)
            want = torch.logsumexp(logp64.masked_fill(~keep, float("-inf")), -1)
            check_mass = bool(((log_mass.double() - want).abs() <= tol * (1 + want.abs())).all())
            for fn, what, ok in ((sample, "sample return_logprobs", check), (mask_fn, "mask return_log_mass", check_mass)):
                for timing in ("eager", "graph"):
                    ctx.record(fn, timing, op="top_h", mode="fwd", shape=f"B={b} V={v}",
                               dtype=str(dtype).replace("torch.", ""),
                               provider=_name(f"entropy_kernels transformers {what}", timing=timing), check=ok)


def _top_h_check(x: torch.Tensor, rule: str, out: torch.Tensor, sample: bool) -> bool:
    """A mask: its kept count is within one token of the float64 reference's in every row (a
    row may sit on the boundary to fp32 rounding; bf16 ties may swap tokens, not change the
    count). Samples: every token is in the reference's kept set or next to its boundary (the
    same slack: kept by the kernel's mask)."""
    from ..ops.top_h import top_h_mask
    from ..reference.top_h import top_h_mask_reference

    alpha = torch.full((x.shape[0],), 0.4, device=x.device)
    if sample:
        return bool(top_h_mask(x, 0.4, mode=rule)[torch.arange(x.shape[0], device=x.device), out].all())
    ref = top_h_mask_reference(x, alpha, 1.0, rule, dtype=torch.float64)
    return bool(((out.sum(1) - ref.sum(1)).abs() <= 1).all())


def _top_h_summary(rows: List[dict]) -> List[str]:
    out = []
    for shape in dict.fromkeys(r["shape"] for r in rows if r["mode"] == "fwd" and r["kind"] == "ours"):
        for dtype in ("float32", "bfloat16"):
            cells = []
            for rule in ("transformers", "exact"):
                for mode in ("mask", "sample"):
                    r = _find(rows, shape=shape, dtype=dtype, provider=f"entropy_kernels {rule} {mode} (CUDA graph)")
                    if r:
                        cells.append(f"{rule[:5]} {mode}: {_fmt(r.get('p50_ms'))}")
            warper = _find(rows, shape=shape, dtype=dtype, provider="transformers TopHLogitsWarper")
            if cells:
                out.append(f"{shape} {dtype[:4]} graph: " + "; ".join(cells)
                           + (f"; warper {_fmt(warper['p50_ms'])}" if warper else ""))
    for r in rows:
        if r["mode"] == "candidates":
            i = r["info"]
            out.append(f"candidates {r['shape'].split()[-1]} {r['provider']}: mean {i['mean']}, max {i['max']} "
                       f"(capacity {i['capacity']}, {i['rows_over_capacity']} rows over)")
    return out


# ---------------------------------------------------------------------------------------------
# Clip-Cov / KL-Cov and high_entropy_mask


def _cov(ctx: Ctx) -> None:
    from ..ops.high_entropy_mask import high_entropy_mask
    from ..reference.high_entropy import high_entropy_mask_reference
    from ..training.policy_loss import clip_cov_policy_loss, kl_cov_policy_loss
    from .policy_loss import _inputs

    dev = ctx.device
    sizes = ((4, 256),) if ctx.dry else ((64, 1024), (256, 4096))
    for b, t in sizes:
        case = Case("policy_loss", "fwd+bwd", {"B": b, "T": t}, torch.float32, dev)
        old, lp, adv, mask = _inputs(case)
        seed, off = torch.tensor([1], device=dev), torch.tensor([0], device=dev)
        for loss in ("clip_cov", "kl_cov"):
            def step(loss=loss):
                if loss == "clip_cov":
                    out = clip_cov_policy_loss(old, lp, adv, mask, seed=seed, offset=off)[0]
                else:
                    out = kl_cov_policy_loss(old, lp, adv, mask)[0]
                out.backward()
                return out

            results = {}
            for fused in ("1", "0"):
                if not ctx.mine(("cov", loss, fused, b * t)):
                    continue
                tags = () if fused == "1" else ("phase launches",)
                with config.override(cov_fused=fused == "1"):
                    lp.grad = None
                    value = ctx.call(step).detach().clone()
                    results[fused] = (value, lp.grad.clone())
                    check = None
                    if fused == "0" and "1" in results:
                        check = all(torch.equal(a, c) for a, c in zip(results["0"], results["1"]))
                    for timing in ("eager", "graph", "wall", "kernel"):
                        ctx.record(step, timing, grads=[lp], op="policy_loss", mode="fwd+bwd", shape=f"B={b} T={t}",
                                   dtype="float32", provider=_name(f"entropy_kernels {loss}", *tags, timing=timing),
                                   variant=f"fused={fused}", check=check)
    n = 4096 if ctx.dry else 1 << 20
    ent = torch.rand(n, device=dev) * 4
    valid = torch.rand(n, device=dev) < 0.8
    want = high_entropy_mask_reference(ent, valid, 0.2)
    for fused in ("1", "0"):
        if not ctx.mine(("high_entropy_mask", fused)):
            continue
        tags = () if fused == "1" else ("four launches",)
        with config.override(cov_fused=fused == "1"):
            fn = lambda: high_entropy_mask(ent, valid, 0.2)  # noqa: E731
            got = ctx.call(fn)
            for timing in ("eager", "graph", "wall", "kernel"):
                ctx.record(fn, timing, op="high_entropy_mask", mode="fwd",
                           shape=f"tokens={n}", dtype="float32", provider=_name("entropy_kernels", *tags, timing=timing),
                           variant=f"fused={fused}", check=bool(torch.equal(got, want)))


def _by_timing(rows: Sequence[dict], r: dict) -> Dict[str, dict]:
    """The rows measuring what ``r`` measures (same op, shape, dtype, variant, provider before
    its tags), by timing."""
    base = r["provider"].split(" (")[0]
    return {x["timing"]: x for x in _ok(rows) if x["op"] == r["op"] and x["mode"] == r["mode"]
            and x["shape"] == r["shape"] and x["dtype"] == r["dtype"] and x.get("variant") == r.get("variant")
            and x["provider"].split(" (")[0] == base}


def _timings_line(rows: Sequence[dict], r: dict, label: str) -> str:
    sib = _by_timing(rows, r)
    return f"{label}: " + ", ".join(f"{t} {_fmt(sib[t]['p50_ms'])}" for t in ("eager", "wall", "graph", "kernel") if t in sib)


def _cov_summary(rows: List[dict]) -> List[str]:
    out = [_timings_line(rows, r, f"{r['op'][:6]} {r['shape']} {r['provider'].replace('entropy_kernels ', '')}")
           for r in _ok(rows) if r["timing"] == "eager"]
    out += decide(rows, "fused=1", "fused=0", "EK_COV_FUSED")
    return out


# ---------------------------------------------------------------------------------------------
# entropy


def _entropy(ctx: Ctx) -> None:
    from ..ops.entropy import entropy
    from .entropy import _inputs

    dev = ctx.device
    shapes, dtype = (((2, 2048), (8, 2048)), torch.float32) if ctx.dry else (((64, 151936), (1024, 151936)), torch.bfloat16)
    for b, v in shapes:
        for mode in ("fwd", "fwd+bwd"):
            if not ctx.mine(("entropy", b, mode)):
                continue
            case = Case("entropy", mode, {"B": b, "V": v}, dtype, dev)
            x, g = _inputs(case, mode != "fwd")
            if mode == "fwd":
                fn, grads = (lambda x=x: entropy(x)), []
                got = ctx.call(fn).double()
                z = x.detach().double()
                want = -(torch.softmax(z, -1) * torch.log_softmax(z, -1)).sum(-1)
                check = bool(((got - want).abs() <= 1e-3 + 1e-4 * want.abs()).all())
            else:
                fn, grads, check = (lambda x=x, g=g: entropy(x).backward(g)), [x], None
            dt = str(dtype).replace("torch.", "")
            for timing in ("eager", "graph", "wall", "kernel"):
                ctx.record(fn, timing, grads=grads, op="entropy", mode=mode, shape=f"B={b} V={v}", dtype=dt,
                           provider=_name("entropy_kernels", timing=timing), check=check)
            if ctx.warm:
                continue
            src = x.detach()
            dst = torch.empty_like(src)
            for timing in ("eager", "graph"):
                ctx.record(lambda: dst.copy_(src), timing, op="entropy", mode=mode, shape=f"B={b} V={v}", dtype=dt,
                           provider=_name("floor: copy", timing=timing), kind="floor")
            if mode == "fwd" and _read_floor(ctx):
                for timing in ("eager", "graph"):
                    ctx.record(lambda: native.read_checksum(src), timing, op="entropy", mode=mode, shape=f"B={b} V={v}",
                               dtype=dt, provider=_name("floor: read (_C)", timing=timing), kind="floor")


def _entropy_summary(rows: List[dict]) -> List[str]:
    out = []
    for r in _ok(rows):
        if r["provider"] == "entropy_kernels":
            floor = _find(rows, mode=r["mode"], shape=r["shape"], provider="floor: read (_C) (CUDA graph)") or \
                _find(rows, mode=r["mode"], shape=r["shape"], provider="floor: copy (CUDA graph)")
            out.append(_timings_line(rows, r, f"{r['mode']:7s} {r['shape']}")
                       + (f"; {floor['provider'].replace(' (CUDA graph)', '')} {_fmt(floor['p50_ms'])}" if floor else ""))
    return out


STEPS = [
    Step("ceilings", _ceilings, 20, _ceilings_summary, "1 GiB copy and read, bf16 GEMM at the CE shapes"),
    Step("histogram", _histogram, 25, _histogram_summary, "tl.histogram cost per call: bins x keys x spread"),
    Step("ekdf", _ekdf, 100, _ekdf_summary, "EKDF decoder x sizes: graph replay, bit-exact, dfloat11, ncu"),
    Step("top_h", _top_h, 75, _top_h_summary, "Top-H: B x dtype x rule x mask/sample, checked against the float64 reference"),
    Step("cov", _cov, 45, _cov_summary, "Clip-Cov/KL-Cov and high_entropy_mask: eager, graph, kernels; EK_COV_FUSED"),
    Step("entropy", _entropy, 30, _entropy_summary, "entropy fwd, fwd+bwd: eager, graph, kernels, floors"),
]
