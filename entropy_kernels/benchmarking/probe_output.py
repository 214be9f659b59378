"""What the GPU probe leaves behind: the run's environment (gathered in a child process), and
``<gpu>_probe.json`` / ``.md`` with every row and the summary -- the files
scripts/regen_bench_docs.py reads. Eager rows use the provider names of ``entropy-kernels
bench``, so the results files feed the same tables. Each file is written whole or not at all
(a temporary file in the same folder, then renamed over the old one).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from . import probe_steps
from .probe_context import json_default
from .probe_runner import fork_child, probe_device, wait_child
from .report import environment, write_atomic


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


def gather_environment(out_dir: Path, dry: bool) -> dict:
    """The run's environment, gathered in a child (it initialises CUDA, which the parent must
    not before forking) and kept in ``out_dir/env.json``; stamped with the command line.

    Example
    -------
    >>> gather_environment(Path("ek-results"), dry=True)["dry_run"]  # doctest: +SKIP
    True
    """
    path = out_dir / "env.json"

    def target():
        dev = probe_device(dry)
        try:
            env = environment(dev)
        except Exception as exc:  # e.g. _C not built: keep the rest
            env = {"error": f"{type(exc).__name__}: {exc}", "torch": torch.__version__}
        env.update(environment_extras(dev))
        write_atomic(path, json.dumps(env, default=str))

    wait_child(fork_child(target), 120)
    env = json.loads(path.read_text()) if path.exists() else {}
    env.setdefault("date", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    env["command"] = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    env["dry_run"] = dry
    return env


def slug(name: Optional[str]) -> str:
    """File-name form of a GPU name.

    Example
    -------
    >>> slug("NVIDIA H100 80GB HBM3"), slug(None)
    ('nvidia-h100-80gb-hbm3', 'cpu')
    """
    out = "".join(c if c.isalnum() else "-" for c in (name or "cpu").lower())
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-")


def _fmt_ms(ms) -> str:
    if ms is None or (isinstance(ms, float) and math.isnan(ms)):
        return "-"
    return f"{ms * 1e3:.1f} µs" if ms < 1 else f"{ms:.2f} ms"


def markdown_rows(rows: Sequence[dict]) -> str:
    """Every row as one markdown table (the probe's full record).

    Example
    -------
    >>> print(markdown_rows([{"step": "s", "op": "o", "mode": "fwd", "shape": "B=1", "dtype": "float32",
    ...                       "provider": "p", "timing": "graph", "p50_ms": 0.0123, "status": "ok"}]).splitlines()[-1])
    | s | o | fwd | B=1 | float32 |  | p | graph | 12.3 µs |  |  | ok | {} |
    """
    lines = ["| step | op | mode | shape | dtype | variant | provider | timing | p50 | p20-p80 | check | status | info |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        band = f"{_fmt_ms(r.get('p20_ms'))}-{_fmt_ms(r.get('p80_ms'))}" if r.get("p20_ms") is not None else ""
        check = {True: "pass", False: "FAIL", None: ""}[r.get("check")]
        info = json.dumps(r.get("info") or {}, default=str)[:160].replace("|", "/")
        lines.append(f"| {r['step']} | {r['op']} | {r['mode']} | {r['shape']} | {r['dtype']} | {r.get('variant', '')} | "
                     f"{r['provider']} | {r.get('timing', '')} | {_fmt_ms(r.get('p50_ms'))} | {band} | {check} | "
                     f"{r['status']} | {info} |")
    return "\n".join(lines)


def summary(rows: Sequence[dict], env: dict, report: Dict[str, dict], names: Sequence[str],
            max_lines: int = 80) -> List[str]:
    """The table printed last: a header, one line per step (wall, outcome, failed checks), then
    each step's decision lines -- at most ``max_lines`` lines in all.

    Example
    -------
    >>> summary([], {"gpu": "GPU", "torch": "2", "triton": "3", "date": "d"}, {}, ["entropy"])[:2]
    ['GPU probe: GPU | torch 2 | triton 3 | d', '| step | wall s | outcome | rows | errors | failed checks |']
    """
    steps = probe_steps.steps_by_name()
    head = [f"GPU probe: {env.get('gpu') or 'CPU (dry run)'} | torch {env.get('torch')} | triton {env.get('triton')} | "
            f"{env.get('date')}",
            "| step | wall s | outcome | rows | errors | failed checks |", "|---|---|---|---|---|---|"]
    if env.get("dry_run"):
        head[0] += " | DRY RUN: timings and verdicts mean nothing"
    body: List[str] = []
    for name in names:
        rs = [r for r in rows if r["step"] == name]
        errors = sum(1 for r in rs if str(r["status"]).startswith("error"))
        failed = sum(1 for r in rs if r.get("check") is False)
        rep = report.get(name, {})
        head.append(f"| {name} | {rep.get('wall_s', '-')} | {rep.get('outcome', 'not run')} | {len(rs)} | {errors} | {failed} |")
        try:
            lines = steps[name].summary(rs)
        except Exception as exc:  # a summary bug must not lose the run
            lines = [f"(summary failed: {type(exc).__name__}: {exc})"]
        if lines:
            body.append(f"{name}:")
            body.extend(f"  {line}" for line in lines)
    room = max_lines - len(head)
    if len(body) > room:
        body = body[: room - 1] + [f"... {len(body) - room + 1} more lines in the markdown file"]
    return head + body


def write_outputs(rows: List[dict], env: dict, report: Dict[str, dict], out_dir: Path, names: Sequence[str],
                  extra: Optional[dict] = None) -> Dict[str, Path]:
    """``<gpu>_probe.json`` / ``.md`` in ``out_dir``, each stamped with the environment.

    Example
    -------
    >>> paths = write_outputs(rows, env, report, Path("ek-results"), step_names())  # doctest: +SKIP
    >>> paths["json"].name                                                        # doctest: +SKIP
    'nvidia-h100-80gb-hbm3_probe.json'
    """
    stem = f"{slug(env.get('gpu'))}_probe" + ("_dry_run" if env.get("dry_run") else "")
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    doc = {"environment": env, "steps": report, **(extra or {}), "results": rows}
    write_atomic(json_path, json.dumps(doc, indent=1, default=json_default) + "\n")
    lines = [f"# entropy_kernels GPU probe: {env.get('gpu') or 'CPU (dry run: timings meaningless)'}", "",
             f"- date: {env.get('date')}", f"- command: `{env.get('command')}`",
             f"- torch {env.get('torch')}, triton {env.get('triton')}, CUDA {env.get('cuda')}, "
             f"entropy_kernels {env.get('entropy_kernels')}",
             "- timing: eager = do_bench of an eager call (host time up to ~90 µs hidden); graph = CUDA-graph "
             "replay; wall = back-to-back eager calls, host included; kernel = summed kernel time (profiler)",
             "", "## Summary", "", *summary(rows, env, report, names, max_lines=10_000), "", "## Every row", "",
             markdown_rows(rows), ""]
    write_atomic(md_path, "\n".join(lines))
    return {"json": json_path, "markdown": md_path}
