"""GPU probe step ``dfloat_linear``: the fused EKDF decode + matmul against ``F.linear`` on the
bf16 weight, at batch-1 decoding shapes, and ``generate()`` tokens/s of a compressed model
against the bf16 model — the numbers that say whether compressed weights are faster than bf16
at batch 1 (the goal: ``dfloat_linear`` at M = 1 no slower than ``F.linear`` on every shape,
a compressed model's batch-1 generation at >= 0.95x the bf16 model's tokens/s)."""

from __future__ import annotations

import time
from typing import List

import torch

from .. import _backend
from .probe_context import Ctx, Step

# (out_features, in_features): a 4096 attention projection, Llama-3-8B's MLP up / down, the
# Qwen-sized LM head
SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (151936, 4096)]
ROWS = (1, 4, 16)


def _weights(n: int, k: int, device, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g) * 0.02).to(torch.bfloat16).to(device)


def _close(y: torch.Tensor, ref: torch.Tensor) -> bool:
    """Within fp32-accumulation differences of a bf16 result: a few bf16 ulps of the output scale."""
    scale = ref.float().abs().amax().clamp_min(1e-6)
    return bool(((y.float() - ref.float()).abs() <= 2**-6 * scale).all())


def _linear(ctx: Ctx) -> None:
    if ctx.warm:  # CUDA C++ in _C: nothing for Triton to compile
        return
    if _backend.native() is None:
        ctx.row(op="dfloat_linear", mode="fwd", provider="entropy_kernels", status="skipped: _C not built")
        return
    from ..decoding.dfloat import DFloatTensor

    dev = ctx.device
    shapes = [(48, 96), (40, 200)] if ctx.dry else SHAPES
    rows = (1, 4) if ctx.dry else ROWS
    for n, k in shapes:
        w = _weights(n, k, dev, seed=n + k)
        c = DFloatTensor.compress(w.cpu()).to(dev)
        for m in rows:
            shape = f"M={m} N={n} K={k}"
            x = torch.randn(m, k, device=dev).to(torch.bfloat16)
            y = ctx.call(lambda: c.linear(x))
            check = _close(y, torch.nn.functional.linear(x, w))
            gbps = lambda ms, n=n, k=k: {"GB/s of bf16 weight": round(2 * n * k / ms / 1e6, 1)}  # noqa: E731
            for timing in ("eager", "graph"):
                ctx.record(lambda: c.linear(x), timing, calls=20, op="dfloat_linear", mode="fwd", shape=shape,
                           dtype="bfloat16", provider="entropy_kernels" + (" (CUDA graph)" if timing == "graph" else ""),
                           check=check, derive=gbps, info={"ratio": round(c.ratio, 4)})
                ctx.record(lambda: torch.nn.functional.linear(x, w), timing, calls=20, op="dfloat_linear", mode="fwd",
                           shape=shape, dtype="bfloat16", kind="baseline", derive=gbps,
                           provider="F.linear bf16" + (" (CUDA graph)" if timing == "graph" else ""))
        del w, c
        if ctx.cuda:
            torch.cuda.empty_cache()
    _generate(ctx)


def _generate(ctx: Ctx) -> None:
    """Batch-1 greedy generation, tokens/s: a Llama built from a config, bf16 vs compressed."""
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        ctx.row(op="generate", mode="batch 1", provider="entropy_kernels", status="skipped: no transformers")
        return
    from ..decoding.compressed_model import compress_model

    small = ctx.dry
    cfg = LlamaConfig(vocab_size=512 if small else 32000, hidden_size=64 if small else 2048,
                      intermediate_size=128 if small else 5632, num_hidden_layers=2 if small else 6,
                      num_attention_heads=4 if small else 16, num_key_value_heads=4 if small else 8)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16).to(ctx.device).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 16), device=ctx.device)
    new = 4 if small else 64
    shape = f"hidden={cfg.hidden_size} layers={cfg.num_hidden_layers} new={new}"

    def tokens_per_s(m) -> tuple:
        with torch.no_grad():
            # warm-up at the full length: the first H100 run's 2-token warm-up left one-time
            # costs in the timed bf16 call (80 ms per token for a 6-layer model)
            m.generate(ids, max_new_tokens=new, do_sample=False, min_new_tokens=new)
            ctx.sync()
            t0 = time.perf_counter()
            out = m.generate(ids, max_new_tokens=new, do_sample=False, min_new_tokens=new)
            ctx.sync()
        return (time.perf_counter() - t0) * 1e3 / new, out

    ms_plain, out_plain = tokens_per_s(model)
    ctx.row(op="generate", mode="batch 1", shape=shape, dtype="bfloat16", provider="bf16 model", kind="baseline",
            timing="wall", p50_ms=ms_plain, info={"tokens/s": round(1e3 / ms_plain, 1)})
    compress_model(model, progress=False, fused_linear=True)
    ms_c, out_c = tokens_per_s(model)
    ctx.row(op="generate", mode="batch 1", shape=shape, dtype="bfloat16", provider="entropy_kernels compressed",
            timing="wall", p50_ms=ms_c, check=bool(torch.equal(out_c, out_plain)),
            info={"tokens/s": round(1e3 / ms_c, 1), "vs bf16": round(ms_plain / ms_c, 3)})


def _summary(rows: List[dict]) -> List[str]:
    out = []
    for r in rows:
        if r["status"] != "ok" or r["op"] != "dfloat_linear" or r["provider"] != "entropy_kernels (CUDA graph)":
            continue
        base = next((b for b in rows if b["shape"] == r["shape"] and b["provider"] == "F.linear bf16 (CUDA graph)"
                     and b["status"] == "ok"), None)
        ratio = f" = {r['p50_ms'] / base['p50_ms']:.2f}x F.linear" if base else ""
        check = {True: "ok", False: "WRONG", None: ""}[r.get("check")]
        out.append(f"dfloat_linear {r['shape']}: {r['p50_ms'] * 1e3:.1f} us{ratio} {check}")
    for r in rows:
        if r["op"] == "generate" and r["status"] == "ok" and r["provider"].startswith("entropy_kernels"):
            out.append(f"generate {r['shape']}: {r['info']['tokens/s']} tok/s, {r['info']['vs bf16']}x bf16, "
                       f"same tokens: {r.get('check')}")
    return out


STEPS = [Step("dfloat_linear", _linear, 45, _summary,
              "EKDF fused decode+matmul vs F.linear (M = 1, 4, 16), compressed vs bf16 generate() at batch 1")]
