"""Naming and reading GPU-probe rows, shared by the steps' summaries: provider names with the
bench's conventions, row lookups, and :func:`decide`, which turns the rows a variant switch was
measured both ways into the decision docs/gpu-probe.md's rule makes of them.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence


def provider_name(base: str, *tags: str, timing: str = "eager") -> str:
    """Provider name with the bench's conventions: ``base (tag, …, CUDA graph)``.

    Example
    -------
    >>> provider_name("entropy_kernels clip_cov", "phase launches", timing="graph")
    'entropy_kernels clip_cov (phase launches, CUDA graph)'
    >>> provider_name("entropy_kernels")
    'entropy_kernels'
    """
    extra = {"eager": None, "graph": "CUDA graph", "wall": "back-to-back", "kernel": "kernels only"}[timing]
    tags = [t for t in (*tags, extra) if t]
    return f"{base} ({', '.join(tags)})" if tags else base


def fmt_ms(ms: Optional[float]) -> str:
    """A time for a summary line: microseconds under 1 ms, milliseconds above, ``-`` for none.

    Example
    -------
    >>> fmt_ms(0.0123), fmt_ms(2.5), fmt_ms(None)
    ('12.3us', '2.50ms', '-')
    """
    if ms is None or (isinstance(ms, float) and math.isnan(ms)):
        return "-"
    return f"{ms * 1e3:.1f}us" if ms < 1 else f"{ms:.2f}ms"


def measured(rows: Sequence[dict]) -> List[dict]:
    """The rows that hold a time (status ``ok`` and a ``p50_ms``).

    Example
    -------
    >>> len(measured([{"status": "ok", "p50_ms": 1.0}, {"status": "skipped: needs CUDA", "p50_ms": None}]))
    1
    """
    return [r for r in rows if r.get("status") == "ok" and r.get("p50_ms") is not None]


def find_row(rows: Sequence[dict], **match) -> Optional[dict]:
    """The first measured row whose fields equal ``match``, or None.

    Example
    -------
    >>> find_row([{"status": "ok", "p50_ms": 1.0, "shape": "B=1"}], shape="B=1")["p50_ms"]
    1.0
    """
    for r in measured(rows):
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def geo_mean(ratios: Sequence[float]) -> Optional[float]:
    """Geometric mean of the positive finite ``ratios``; None when there are none.

    Example
    -------
    >>> geo_mean([2.0, 8.0, float("nan")])
    4.0
    """
    ratios = [r for r in ratios if r and r > 0 and math.isfinite(r)]
    return math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else None


def same_case(r: dict) -> tuple:
    """What a row measures, apart from its variant (and the variant's tag in the provider).

    Example
    -------
    >>> same_case({"op": "o", "mode": "fwd", "shape": "B=1", "dtype": "float32", "provider": "p (x)", "timing": "graph"})
    ('o', 'fwd', 'B=1', 'float32', 'p', 'graph')
    """
    return r["op"], r["mode"], r["shape"], r["dtype"], r["provider"].split(" (")[0], r["timing"]


def decide(rows: Sequence[dict], a: str, b: str, switch: str, key=same_case) -> List[str]:
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
    for r in measured(rows):
        if r.get("variant") in (a, b) and r.get("timing") != "wall":  # host time is not the variant's
            by.setdefault(key(r), {})[r["variant"]] = r["p50_ms"]
            if r.get("check") is False:  # a wrong answer wins nothing
                failed.add(key(r))
    pairs = [(v[a], v[b]) for k, v in by.items() if a in v and b in v and k not in failed]
    note = f" ({len(failed)} cases left out: a check failed)" if failed else ""
    if not pairs:
        return [f"{switch}: no paired rows{note}"]
    g = geo_mean([y / x for x, y in pairs])
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


def by_timing(rows: Sequence[dict], r: dict) -> Dict[str, dict]:
    """The rows measuring what ``r`` measures (same op, shape, dtype, variant, provider before
    its tags), by timing.

    Example
    -------
    >>> r = {"op": "o", "mode": "fwd", "shape": "B=1", "dtype": "float32", "provider": "p", "timing": "eager",
    ...      "p50_ms": 2.0, "status": "ok"}
    >>> sorted(by_timing([r, dict(r, provider="p (CUDA graph)", timing="graph")], r))
    ['eager', 'graph']
    """
    base = r["provider"].split(" (")[0]
    return {x["timing"]: x for x in measured(rows) if x["op"] == r["op"] and x["mode"] == r["mode"]
            and x["shape"] == r["shape"] and x["dtype"] == r["dtype"] and x.get("variant") == r.get("variant")
            and x["provider"].split(" (")[0] == base}


def timings_line(rows: Sequence[dict], r: dict, label: str) -> str:
    """``label`` and the time of each timing the rows measured ``r``'s case with.

    Example
    -------
    >>> r = {"op": "o", "mode": "fwd", "shape": "B=1", "dtype": "float32", "provider": "p", "timing": "eager",
    ...      "p50_ms": 2.0, "status": "ok"}
    >>> timings_line([r, dict(r, timing="graph", p50_ms=0.5)], r, "o B=1")
    'o B=1: eager 2.00ms, graph 500.0us'
    """
    sib = by_timing(rows, r)
    return f"{label}: " + ", ".join(f"{t} {fmt_ms(sib[t]['p50_ms'])}" for t in ("eager", "wall", "graph", "kernel") if t in sib)
