"""Regenerate the README's benchmark tables (between ``<!-- benchmark-table:start[ NAME] -->`` and
``<!-- benchmark-table:end[ NAME] -->``) and docs/benchmarks.md from the committed results in
benchmarks/results/ -- so no benchmark number is typed by hand.

    python scripts/regen_bench_docs.py           # rewrite README.md, docs/benchmarks.md and the charts
    python scripts/regen_bench_docs.py --check   # exit 1 if a page would change (a test runs this)

The charts (docs/img/benchmarks/<op>.png, needs matplotlib) plot each op's rows from the newest
results file that has the op; --check only requires that they exist, since PNG bytes depend on
the matplotlib version.

Every cell is looked up by (op, mode, shape, dtype, provider) in the newest results file that has
it (by the date in the file's environment; a file without a date counts as oldest), so a new run
committed to benchmarks/results/ -- ``entropy-kernels bench`` or ``scripts/perf_probe.py`` output
-- updates the tables when this is run. A cell no file has reads "–".
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
DASH = "–"

# ---------------------------------------------------------------------------------------------
# results


def _legacy_dfloat_rows(doc: dict) -> List[dict]:
    """Rows of a ``scripts/dfloat_report.py`` file (its GPU decode section, by size)."""
    names = {"copy_us": "floor: copy", "ekdf_us": "entropy_kernels decoder=1",
             "ekdf_graph_us": "entropy_kernels decoder=1 (CUDA graph)", "ekdf_us_v2": "entropy_kernels decoder=2",
             "ekdf_graph_us_v2": "entropy_kernels decoder=2 (CUDA graph)", "dfloat11_us": "dfloat11"}
    rows = []
    for n, values in (doc.get("gpu_decode") or {}).items():
        for field, provider in names.items():
            if field in values:
                rows.append({"op": "dfloat_decompress", "mode": "fwd", "shape": f"N={n}", "dtype": "bfloat16",
                             "provider": provider, "p50_ms": values[field] / 1e3, "peak_mem_bytes": None})
    return rows


def load_results(directory: Path) -> List[dict]:
    """``[{"file", "gpu", "date", "rows"}]`` of every results JSON in ``directory``; rows that
    failed (an error, or a status other than ok) are left out."""
    out = []
    for path in sorted(Path(directory).glob("*.json")):
        doc = json.loads(path.read_text())
        env = doc.get("environment") or {}
        if "results" in doc:
            rows = [r for r in doc["results"] if not r.get("error") and r.get("status", "ok") == "ok"
                    and r.get("p50_ms") is not None]
        else:
            rows = _legacy_dfloat_rows(doc)
        if env.get("dry_run"):
            continue  # CPU timings of a dry run are not benchmarks
        out.append({"file": path.name, "gpu": env.get("gpu") or doc.get("gpu"), "date": env.get("date") or "",
                    "rows": rows})
    return out


Key = Tuple[str, str, str, str, str]


def index(results: Sequence[dict]) -> Dict[Key, Tuple[dict, dict]]:
    """``(op, mode, shape, dtype, provider) -> (row, its file)``, the newest file winning."""
    out: Dict[Key, Tuple[dict, dict]] = {}
    for res in sorted(results, key=lambda r: (r["date"], r["file"])):
        for row in res["rows"]:
            out[(row["op"], row["mode"], row["shape"], row["dtype"], row["provider"])] = (row, res)
    return out


def fmt_time(ms: Optional[float]) -> str:
    """Three significant digits: ``fmt_time(0.1892) == '189 µs'``, ``fmt_time(51.63) == '51.6 ms'``;
    a dash for an untimed row (the probe's check and count rows)."""
    if ms is None:
        return DASH
    value, unit = (ms * 1e3, "µs") if ms < 1 else (ms, "ms")
    digits = 2 if value < 10 else 1 if value < 100 else 0
    return f"{value:.{digits}f} {unit}"


def fmt_mem(b: Optional[int]) -> str:
    return DASH if b is None else f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"


class Lookup:
    """Cells from the index; remembers which files it used (listed under the table)."""

    def __init__(self, idx: Dict[Key, Tuple[dict, dict]]):
        self.idx, self.used = idx, {}

    def row(self, op, mode, shape, dtype, provider) -> Optional[dict]:
        hit = self.idx.get((op, mode, shape, dtype, provider))
        if hit is None:
            return None
        row, res = hit
        self.used[res["file"]] = res
        return row

    def t(self, *key) -> str:
        row = self.row(*key)
        return fmt_time(row["p50_ms"]) if row else DASH

    def t_mem(self, *key) -> str:
        row = self.row(*key)
        if not row:
            return DASH
        mem = row.get("peak_mem_bytes")
        return fmt_time(row["p50_ms"]) + (f", {fmt_mem(mem)}" if mem and mem >= 2**20 else "")

    def ratio(self, a: tuple, b: tuple) -> Optional[float]:
        ra, rb = self.row(*a), self.row(*b)
        return ra["p50_ms"] / rb["p50_ms"] if ra and rb else None

    def sources(self) -> str:
        parts = [f"`{f}` ({r['gpu'] or 'no GPU'}, {r['date'][:10] or 'undated'})" for f, r in sorted(self.used.items())]
        return "Sources (benchmarks/results/): " + "; ".join(parts) + "." if parts else "No results files."


# EKDF's CUDA decoder 2 became the only one (the probe of 2026-11-28): later probe files name its
# rows "entropy_kernels", earlier ones "entropy_kernels decoder=2"; the newer name wins.
def _ekdf_provider(q: "Lookup", key: tuple) -> str:
    """The provider of ``key``'s graph-replay row of the EKDF CUDA decoder."""
    if q.row(*key, "entropy_kernels (CUDA graph)"):
        return "entropy_kernels (CUDA graph)"
    return "entropy_kernels decoder=2 (CUDA graph)"


def _joined(*cells: str) -> str:
    return DASH if all(c == DASH for c in cells) else " / ".join(cells)


# ---------------------------------------------------------------------------------------------
# the tables

V = "V=151936"
BF = "bfloat16"
GEMMA, LLAMA, LOGPROB = "N=8192 D=2304 V=256000", "N=8192 D=4096 V=128256", "N=8192 D=4096 V=151936"


def main_table(q: Lookup) -> List[str]:
    lines = ["| op, shape (bf16) | ours | torch.compile | others in the same run |", "|---|---|---|---|"]

    def entropy_fwd(b):
        key = ("entropy", "fwd", f"B={b} {V}", BF)
        r = q.ratio((*key, "entropy_kernels"), (*key, "floor: copy"))
        ours = q.t(*key, "entropy_kernels") + (f" ({r:.2f}× a copy of the logits)" if r else "")
        graph = q.t(*key, "entropy_kernels (CUDA graph)")
        ours += f"; CUDA graph {graph}" if graph != DASH else ""
        return [f"`entropy` fwd, B={b}, {V}", ours, q.t(*key, "torch.compile"), f"torch {q.t(*key, 'torch')}"]

    rows = [entropy_fwd(1024), entropy_fwd(64)]
    eb = [("entropy", "fwd+bwd", f"B={b} {V}", BF) for b in (1024, 64)]
    graph = _joined(*(q.t(*k, "entropy_kernels (CUDA graph)") for k in eb))
    rows.append(["`entropy` fwd+bwd, B=1024 / 64", _joined(*(q.t(*k, "entropy_kernels") for k in eb))
                 + (f"; CUDA graph {graph}" if graph != DASH else ""),
                 _joined(*(q.t(*k, "torch.compile") for k in eb)), "torch " + _joined(*(q.t(*k, "torch") for k in eb))])
    for label, shape in (("Gemma-2-2B 8192×2304×256000", GEMMA), ("Llama-3-8B 8192×4096×128256", LLAMA)):
        k = ("linear_cross_entropy", "fwd+bwd", shape, BF)
        rows.append([f"`linear_cross_entropy` fwd+bwd {label}",
                     f"chunked {q.t_mem(*k, 'entropy_kernels chunked')}; fused {q.t_mem(*k, 'entropy_kernels fused')}",
                     q.t_mem(*k, "torch.compile"),
                     f"apple CCE {q.t(*k, 'apple cce')}; Liger {q.t(*k, 'liger flce')}; 4-GEMM floor {q.t(*k, 'floor: 4 GEMMs')}"])
    k = ("linear_logprob_entropy", "fwd+bwd", LOGPROB, BF)
    rows.append(["`linear_logprob_entropy` fwd+bwd 8192×4096×151936",
                 f"stored {q.t_mem(*k, 'entropy_kernels stored')}; fused {q.t_mem(*k, 'entropy_kernels fused')}",
                 q.t_mem(*k, "torch.compile"), f"4-GEMM floor {q.t(*k, 'floor: 4 GEMMs')}"])
    k = ("high_entropy_mask", "fwd", "tokens=1048576", "float32")
    graph = q.t(*k, "entropy_kernels (CUDA graph)")
    rows.append(["`high_entropy_mask`, 1M tokens", q.t(*k, "entropy_kernels") + (f"; CUDA graph {graph}" if graph != DASH else ""),
                 DASH, f"`torch.quantile` {q.t(*k, 'torch quantile')}"])
    th = [("top_h", "fwd", f"B={b} {V}", BF) for b in (1, 64, 256)]
    graph = _joined(*(q.t(*k, "entropy_kernels exact mask (CUDA graph)") for k in th))
    rows.append(["`top_h_mask` exact, B=1 / 64 / 256, bf16", _joined(*(q.t(*k, "entropy_kernels exact mask") for k in th))
                 + (f"; CUDA graph {graph}" if graph != DASH else ""), DASH,
                 "TopHLogitsWarper " + _joined(*(q.t(*k, "transformers TopHLogitsWarper") for k in th))])
    k = ("dfloat_decompress", "fwd", "N=16777216", BF)
    rows.append(["`dfloat_decompress`, 16.8M values (CUDA graph)",
                 q.t(*k, _ekdf_provider(q, k)),
                 DASH, f"dfloat11 {q.t(*k, 'dfloat11')}; copy {q.t(*k, 'floor: copy')}"])
    for tokens, (b, t) in (("65,536", (64, 1024)), ("1,048,576", (256, 4096))):
        k = ("policy_loss", "fwd+bwd", f"B={b} T={t}", "float32")
        graph = _joined(*(q.t(*k, f"entropy_kernels {loss} (CUDA graph)") for loss in ("clip_cov", "kl_cov")))
        rows.append([f"Clip-Cov / KL-Cov fwd+bwd, {tokens} tokens",
                     _joined(*(q.t(*k, f"entropy_kernels {loss}") for loss in ("clip_cov", "kl_cov")))
                     + (f"; CUDA graph {graph}" if graph != DASH else ""), DASH,
                     "verl-style " + _joined(*(q.t(*k, f"verl-style {loss}") for loss in ("clip_cov", "kl_cov")))])
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines + ["", q.sources()]


def ekdf_table(q: Lookup) -> List[str]:
    lines = ["| values | EKDF (graph replay) | dfloat11 | bf16 copy |",
             "|---|---|---|---|"]
    for n in (262_144, 1_048_576, 16_777_216, 536_870_912):
        k = ("dfloat_decompress", "fwd", f"N={n}", BF)
        cells = []
        for provider in (_ekdf_provider(q, k), "dfloat11"):
            row = q.row(*k, provider)
            cells.append(f"{fmt_time(row['p50_ms'])} ({2 * n / row['p50_ms'] / 1e6:.0f} GB/s)" if row else DASH)
        copy = q.row(*k, "floor: copy (CUDA graph)") or q.row(*k, "floor: copy")
        label = f"{n:,}" + (" (1 GiB)" if n == 536_870_912 else "")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {fmt_time(copy['p50_ms']) if copy else DASH} |")
    return lines + ["", q.sources()]


TABLES: Dict[str, Callable[[Lookup], List[str]]] = {"": main_table, "ekdf": ekdf_table}


def replace_blocks(text: str, idx) -> str:
    """``text`` with every marked block regenerated (each keeps its marker's indentation)."""
    out, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        stripped = line.strip()
        if stripped.startswith("<!-- benchmark-table:start") and stripped.endswith("-->"):
            name = stripped[len("<!-- benchmark-table:start"):-3].strip()
            if name not in TABLES:
                raise SystemExit(f"unknown benchmark table {name!r} (known: {sorted(TABLES)})")
            end = f"<!-- benchmark-table:end{' ' + name if name else ''} -->"
            j = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == end), None)
            if j is None:
                raise SystemExit(f"no {end} after line {i + 1}")
            indent = line[: len(line) - len(line.lstrip())]
            out += [(indent + x) if x else "" for x in TABLES[name](Lookup(idx))]
            out.append(lines[j])
            i = j
        i += 1
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# docs/benchmarks.md


def _file_section(res: dict, doc: dict) -> List[str]:
    env = doc.get("environment") or {}
    head = [f"### `{res['file']}`", "",
            f"{res['gpu'] or 'no GPU'}; {res['date'] or 'undated'}; torch {env.get('torch') or doc.get('torch', '?')}, "
            f"triton {env.get('triton', '?')}" + (f"; `{env['command']}`" if env.get("command") else ""), ""]
    if "results" not in doc:
        return head + [f"EKDF report (GPU decode section; sizes, encoder and CPU decoder in the file itself): "
                       f"{len(res['rows'])} rows, shown in the EKDF table above.", ""]
    lines = ["| case | provider | p50 | p20-p80 | peak extra mem | check |", "|---|---|---|---|---|---|"]
    for r in doc["results"]:
        case = " ".join(x for x in (r.get("op"), r.get("mode"), r.get("shape"), r.get("dtype")) if x)
        status = r.get("error") or ("" if r.get("status", "ok") == "ok" else r["status"])
        if status:
            lines.append(f"| {case} | {r.get('provider')} | {status[:80]} | | | |")
            continue
        band = f"{fmt_time(r['p20_ms'])}-{fmt_time(r['p80_ms'])}" if r.get("p20_ms") is not None else ""
        check = {True: "pass", False: "FAIL", None: ""}[r.get("check")]
        lines.append(f"| {case} | {r.get('provider')} | {fmt_time(r['p50_ms'])} | {band} | "
                     f"{fmt_mem(r.get('peak_mem_bytes'))} | {check} |")
    return head + lines + [""]


def benchmarks_md(results: Sequence[dict], directory: Path, idx) -> str:
    lines = ["# Benchmarks", "",
             "<!-- Generated by scripts/regen_bench_docs.py from benchmarks/results/: do not edit by hand. -->", "",
             "Every number here comes from a results file committed in `benchmarks/results/` (written on a GPU "
             "machine by `entropy-kernels bench --full` or `scripts/perf_probe.py`; see docs/gpu-probe.md), each "
             "row measured in the same run as the baselines and floors beside it. Regenerate this page and the "
             "README tables with `python scripts/regen_bench_docs.py`.", "",
             "## Summary (as in the README)", "", *main_table(Lookup(idx)), "", "## EKDF decoding", "",
             *ekdf_table(Lookup(idx)), "", "## Compiled kernels", "",
             "Registers, shared memory and spills of every Triton kernel configuration (compiled without a GPU): "
             "`benchmarks/static/triton_kernels.md`.", "", "## Every results file, newest first", ""]
    for res in sorted(results, key=lambda r: (r["date"], r["file"]), reverse=True):
        lines += _file_section(res, json.loads((directory / res["file"]).read_text()))
    return "\n".join(lines).rstrip("\n") + "\n"


def render(readme: Path, docs: Path, results_dir: Path) -> Dict[Path, str]:
    """The new text of each output file."""
    results = load_results(results_dir)
    idx = index(results)
    return {readme: replace_blocks(readme.read_text(), idx), docs: benchmarks_md(results, results_dir, idx)}


def newest_rows_per_op(results: Sequence[dict]) -> Dict[str, Tuple[dict, List[dict]]]:
    """``{op: (results file, its rows of that op)}`` from the newest file (by date) holding the op."""
    out: Dict[str, Tuple[dict, List[dict]]] = {}
    for res in sorted(results, key=lambda r: (r["date"], r["file"])):
        for op in {r["op"] for r in res["rows"] if "kind" in r}:
            out[op] = (res, [r for r in res["rows"] if r["op"] == op])
    return out


def write_charts(results: Sequence[dict], out_dir: Path) -> List[Path]:
    """One PNG per op (time and extra memory, ours beside each baseline, floors as lines)."""
    sys.path.insert(0, str(ROOT))
    from entropy_kernels.benchmarking.plots import plot_results

    paths = []
    for op, (res, rows) in sorted(newest_rows_per_op(results).items()):
        title = f"{res['gpu'] or 'CPU'}, {(res['date'] or 'undated')[:10]}"
        paths += plot_results(rows, out_dir, title=title)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 (and show the diff) if a file would change")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--charts", default=str(ROOT / "docs" / "img" / "benchmarks"),
                    help="folder of the per-op PNG charts ('' for none)")
    args = ap.parse_args(argv)
    args.charts = Path(args.charts) if args.charts else None  # Path("") would be the current folder
    if args.charts is not None:
        # the names plot_results gives (checked here without importing torch)
        wanted = [args.charts / (re.sub(r"[^a-z0-9]+", "-", op.lower()).strip("-") + ".png")
                  for op in newest_rows_per_op(load_results(args.results))]
        if args.check:
            missing = [p for p in wanted if not p.exists()]
            if missing:
                print(f"missing chart(s) {', '.join(map(str, missing))}: run python scripts/regen_bench_docs.py",
                      file=sys.stderr)
                return 1
        else:
            for path in write_charts(load_results(args.results), args.charts):
                print(f"wrote {path}")
    stale = []
    for path, text in render(args.readme, args.docs, args.results).items():
        old = path.read_text() if path.exists() else ""
        if old == text:
            continue
        stale.append(path)
        if args.check:
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), text.splitlines(True), str(path), "regenerated"))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if args.check and stale:
        print(f"\n{', '.join(map(str, stale))} differ from the results files: run python scripts/regen_bench_docs.py "
              "(benchmark numbers are generated, never typed)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
