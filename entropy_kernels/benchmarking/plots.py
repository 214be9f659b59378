"""PNG charts of benchmark results: per op, one panel of times and one of extra memory, each
case a group of bars (ours, then every baseline), the floors drawn as lines across the group.

matplotlib is an optional extra (``pip install entropy_kernels[plot]``); everything else in the
package works without it. The input is the rows of a results file (the ``results`` list of the
JSON that ``entropy-kernels bench`` writes), so a committed GPU run can be re-plotted anywhere.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Sequence

KIND_ORDER = {"ours": 0, "baseline": 1}


def _rows(results: Iterable[object]) -> List[Dict[str, object]]:
    return [asdict(r) if is_dataclass(r) else dict(r) for r in results]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def group_by_op(results: Iterable[object]) -> "OrderedDict[str, OrderedDict[str, List[dict]]]":
    """``{op: {case label: [rows]}}`` in first-seen order, failed rows left out.

    Example
    -------
    >>> rows = [dict(op="entropy", mode="fwd", shape="B=4", dtype="float32", provider="torch", kind="baseline",
    ...              p50_ms=1.0, peak_mem_bytes=0, error=None)]
    >>> list(group_by_op(rows)["entropy"])
    ['fwd B=4 float32']
    """
    ops: "OrderedDict[str, OrderedDict[str, List[dict]]]" = OrderedDict()
    for row in _rows(results):
        if row.get("error") or not _finite(row.get("p50_ms")):
            continue
        label = f"{row['mode']} {row['shape']} {row['dtype']}"
        ops.setdefault(row["op"], OrderedDict()).setdefault(label, []).append(row)
    return ops


def plot_results(results: Iterable[object], out_dir, title: str = "", matplotlib_backend: str = "Agg") -> List[Path]:
    """Write ``<op>.png`` per op into ``out_dir`` and return the paths.

    Each PNG has two panels: median time (log scale) and extra peak memory, one group of bars per
    case (ours first, then the baselines), floors as horizontal lines over their case's group.
    Raises ``ImportError`` with the install hint when matplotlib is missing.

    Example
    -------
    >>> import tempfile
    >>> rows = [dict(op="entropy", mode="fwd", shape="B=4", dtype="float32", provider=p, kind=k,
    ...              p50_ms=t, peak_mem_bytes=m, error=None)
    ...         for p, k, t, m in (("entropy_kernels", "ours", 0.1, 64), ("torch", "baseline", 0.3, 4096),
    ...                            ("floor:copy", "floor", 0.05, 0))]
    >>> [p.name for p in plot_results(rows, tempfile.mkdtemp())]
    ['entropy.png']
    """
    try:
        import matplotlib

        matplotlib.use(matplotlib_backend)
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install 'entropy_kernels[plot]'") from e
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for op, cases in group_by_op(results).items():
        paths.append(_plot_op(plt, op, cases, out / f"{_slug(op)}.png", title))
    return paths


def _plot_op(plt, op: str, cases: Mapping[str, Sequence[dict]], path: Path, title: str) -> Path:
    bars_per_case = [sorted((r for r in rows if r["kind"] != "floor"), key=lambda r: (KIND_ORDER.get(r["kind"], 2),
                                                                                          r["provider"]))
                     for rows in cases.values()]
    providers = list(OrderedDict.fromkeys(r["provider"] for rows in bars_per_case for r in rows))
    colours = {p: plt.get_cmap("tab10")(i % 10) for i, p in enumerate(providers)}
    width = 0.8 / max(1, max((len(b) for b in bars_per_case), default=1))
    fig, axes = plt.subplots(2, 1, figsize=(max(7.0, 1.6 * len(cases) + 4), 7), sharex=True)
    labelled = set()  # one legend entry per provider
    for panel, (ax, field, unit, scale) in enumerate(((axes[0], "p50_ms", "median time (ms)", 1.0),
                                                      (axes[1], "peak_mem_bytes", "extra memory (MiB)", 2.0**-20))):
        for i, (rows, all_rows) in enumerate(zip(bars_per_case, cases.values())):
            for j, r in enumerate(rows):
                value = r.get(field)
                if not _finite(value):
                    continue
                label = None if r["provider"] in labelled else r["provider"]
                labelled.add(r["provider"])
                ax.bar(i - 0.4 + width * (j + 0.5), value * scale, width, color=colours[r["provider"]], label=label)
            if panel == 0:  # floors are times (a copy, a GEMM): a line over their case's bars
                for f in (r for r in all_rows if r["kind"] == "floor" and _finite(r.get(field))):
                    ax.hlines(f[field] * scale, i - 0.45, i + 0.45, colors="black", linestyles="dashed")
                    ax.annotate(f["provider"], (i + 0.45, f[field] * scale), fontsize=7, va="bottom", ha="right")
        ax.set_ylabel(unit)
        if panel == 0:
            ax.set_yscale("log")
    axes[1].set_xticks(range(len(cases)))
    axes[1].set_xticklabels(list(cases), rotation=20, ha="right", fontsize=8)
    axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over a bar
    fig.suptitle(f"{op}" + (f" — {title}" if title else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
