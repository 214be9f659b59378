"""The GPU probe: one command that measures every op and the variants that decide its defaults,
each step under its own time budget (``scripts/perf_probe.py``; docs/gpu-probe.md).

Its parts: the steps (:mod:`.probe_steps`, one module per step family), the context a step
measures with and the rows it writes (:mod:`.probe_context`), running steps in forked children
under budgets (:mod:`.probe_runner`), and the results files and summary
(:mod:`.probe_output`). This module is the command line.

``--dry-run`` runs every step on the CPU with tiny shapes (the torch reference and Triton's
interpreter; TRITON_INTERPRET=1 must be set before triton is imported, which the script does):
timings are meaningless there, but every code path runs, and what needs CUDA (graphs, the
profiler, ncu, the read floor) leaves an explicit ``skipped: needs CUDA`` row.

``--warm`` compiles instead of measuring: ``--jobs`` forked children each run a disjoint share
of the probe's cases once (cases are dealt by the kernel configuration they compile), all
sharing one ``TRITON_CACHE_DIR``, so the measuring run finds every kernel compiled.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .probe_context import Ctx, NeedsCuda, Step
from .probe_output import gather_environment, markdown_rows, slug, summary, write_outputs
from .probe_runner import read_rows, run_steps, run_warm
from .probe_steps import step_names
from .report import write_atomic

__all__ = ["Ctx", "NeedsCuda", "Step", "main", "markdown_rows", "read_rows", "run_steps", "run_warm", "slug",
           "step_names", "summary", "write_outputs"]


def main(argv=None) -> int:
    """Run the probe with command-line arguments ``argv`` (default ``sys.argv[1:]``); 0 when
    every check passed (and, with ``--warm``, every compiling process finished).

    Example
    -------
    >>> main(["--steps", "entropy", "--dry-run", "--out", "/tmp/probe"])  # doctest: +SKIP
    0
    """
    names = step_names()
    ap = argparse.ArgumentParser(description="entropy_kernels GPU probe (docs/gpu-probe.md)")
    ap.add_argument("--out", default=os.environ.get("OUT", "ek-results"), help="output folder (default $OUT)")
    ap.add_argument("--steps", default=",".join(names), help=f"comma-separated subset of {','.join(names)}")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, interpreter: every code path, no timing")
    ap.add_argument("--warm", action="store_true", help="compile the probe's kernels in parallel instead of measuring")
    ap.add_argument("--jobs", type=int, default=16, help="--warm: parallel processes")
    ap.add_argument("--deadline", type=float, default=420.0, help="total wall budget in seconds (steps over it are cut)")
    ap.add_argument("--budget-scale", type=float, default=1.0, help="multiply every step's budget")
    ap.add_argument("--parallel", type=int, default=1, help="--dry-run only: steps run at once (timings are void anyway)")
    args = ap.parse_args(argv)
    chosen = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in names]
    if unknown:
        ap.error(f"--steps: unknown step(s) {unknown}; known: {names}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.warm:
        result = run_warm(chosen, max(1, args.jobs), args.dry_run, args.deadline)
        write_atomic(out_dir / "warm.json", json.dumps(result))
        return 0 if result["cut"] == 0 and result["failed"] == 0 else 1
    if args.parallel > 1 and not args.dry_run:
        ap.error("--parallel is for --dry-run only: steps measured at once disturb each other")
    env = gather_environment(out_dir, args.dry_run)
    report = run_steps(chosen, out_dir, args.dry_run, args.deadline, args.budget_scale, args.parallel)
    rows = [r for name in chosen for r in read_rows(out_dir / "steps" / f"{name}.jsonl")]
    paths = write_outputs(rows, env, report, out_dir, chosen)
    print()
    print("\n".join(summary(rows, env, report, chosen)))
    print(f"\n[probe] wrote {paths['json']} and {paths['markdown']}")
    failed_checks = [r for r in rows if r.get("check") is False]
    return 1 if failed_checks else 0
