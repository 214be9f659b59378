"""GPU-probe step ``top_h``: ``top_h_mask`` and ``top_h_sample`` over batch x dtype x rule
(transformers' and the exact one), eager, as a CUDA-graph replay and back to back, each checked
against the float64 reference; the prefilter's candidate counts on random and peaked (Zipf)
rows; the log-prob / kept-mass outputs; and transformers' ``TopHLogitsWarper`` beside them.
"""

from __future__ import annotations

from typing import Dict, List

import torch

from .probe_context import Ctx, Step
from .probe_rows import find_row, fmt_ms, provider_name


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
                                   dtype=str(dtype).replace("torch.", ""), provider=provider_name(base, timing=timing),
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
                       provider=provider_name(f"entropy_kernels {rule} mask", timing="graph"),
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
                           provider=provider_name("transformers TopHLogitsWarper", timing=timing))


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
                               provider=provider_name(f"entropy_kernels transformers {what}", timing=timing), check=ok)


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
                    r = find_row(rows, shape=shape, dtype=dtype, provider=f"entropy_kernels {rule} {mode} (CUDA graph)")
                    if r:
                        cells.append(f"{rule[:5]} {mode}: {fmt_ms(r.get('p50_ms'))}")
            warper = find_row(rows, shape=shape, dtype=dtype, provider="transformers TopHLogitsWarper")
            if cells:
                out.append(f"{shape} {dtype[:4]} graph: " + "; ".join(cells)
                           + (f"; warper {fmt_ms(warper['p50_ms'])}" if warper else ""))
    for r in rows:
        if r["mode"] == "candidates":
            i = r["info"]
            out.append(f"candidates {r['shape'].split()[-1]} {r['provider']}: mean {i['mean']}, max {i['max']} "
                       f"(capacity {i['capacity']}, {i['rows_over_capacity']} rows over)")
    return out


STEPS = [
    Step("top_h", _top_h, 75, _top_h_summary, "Top-H: B x dtype x rule x mask/sample, checked against the float64 reference"),
]
