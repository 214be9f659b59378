"""Benchmark results: one flat row per (case, provider), written as JSON and markdown together
with the environment (GPU, torch/triton versions, date, command) that produced them."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import sys
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch


@dataclass
class Result:
    op: str
    mode: str
    shape: str
    dtype: str
    device: str
    provider: str
    kind: str
    p50_ms: float
    p20_ms: float
    p80_ms: float
    peak_mem_bytes: Optional[int]
    error: Optional[str] = None


def environment(device: torch.device) -> Dict[str, object]:
    """What a result depends on: hardware, software versions, date and the command line.

    Example
    -------
    >>> env = environment(torch.device("cpu"))
    >>> env["gpu"] is None and env["torch"] == torch.__version__
    True
    """
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    from .. import __version__
    from ..native import build_info

    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "entropy_kernels": __version__,
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cuda": torch.version.cuda,
        "ext": build_info(),
    }
    return env


def _fmt_time(ms: float) -> str:
    return f"{ms * 1e3:.1f} µs" if ms < 1 else f"{ms:.2f} ms"


def _fmt_mem(b: Optional[int]) -> str:
    if b is None:
        return "-"
    if b >= 2**30:
        return f"{b / 2**30:.2f} GiB"
    return f"{b / 2**20:.1f} MiB"


def markdown_table(results: Sequence[Result]) -> str:
    """One table; each row's time relative to ours and to the case's floor (same run)."""
    lines = [
        "| case | provider | p50 | p20-p80 | peak extra mem | vs ours | vs floor |",
        "|---|---|---|---|---|---|---|",
    ]
    by_case: Dict[str, List[Result]] = {}
    for r in results:
        by_case.setdefault(f"{r.op} {r.mode} {r.shape} {r.dtype}", []).append(r)
    for label, rows in by_case.items():
        ours = next((r for r in rows if r.kind == "ours" and not r.error), None)
        floors = [r.p50_ms for r in rows if r.kind == "floor" and not r.error]
        floor = max(floors) if floors else None  # the copy floor: the memory floor the tables compare with
        for r in rows:
            if r.error:
                lines.append(f"| {label} | {r.provider} | error: {r.error} | | | | |")
                continue
            vs_ours = f"{r.p50_ms / ours.p50_ms:.2f}x" if ours else "-"
            vs_floor = f"{r.p50_ms / floor:.2f}x" if floor else "-"
            lines.append(
                f"| {label} | {r.provider} | {_fmt_time(r.p50_ms)} | {_fmt_time(r.p20_ms)}-{_fmt_time(r.p80_ms)} "
                f"| {_fmt_mem(r.peak_mem_bytes)} | {vs_ours} | {vs_floor} |"
            )
    return "\n".join(lines)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all: into a temporary file in the same folder,
    then renamed over ``path`` -- a run killed mid-write leaves the old file, never half a new one.

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "results.json"
    >>> write_atomic(path, "{}")
    >>> path.read_text(), [p.name for p in path.parent.iterdir()]
    ('{}', ['results.json'])
    """
    path = Path(path)
    # a fresh name opened with "x" (not mkstemp, whose file is private to the user): the file
    # gets the permissions a plain write would give it
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with open(tmp, "x") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_results(results: Sequence[Result], env: Dict[str, object], out_dir: Path, stem: str) -> Dict[str, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` into ``out_dir`` (each whole or not at all);
    return their paths.

    Example
    -------
    >>> paths = write_results(results, environment(device), Path("ek-results"), "cuda_quick")  # doctest: +SKIP
    >>> paths["json"].name                                                                   # doctest: +SKIP
    'cuda_quick.json'
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    write_atomic(json_path, json.dumps({"environment": env, "results": [asdict(r) for r in results]}, indent=2))
    header = [
        f"# entropy_kernels benchmarks: {env.get('gpu') or env.get('cpu')}",
        "",
        f"- date: {env['date']}",
        f"- command: `{env['command']}`",
        f"- torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, entropy_kernels {env['entropy_kernels']}",
        "- times: median (p20-p80) of `triton.testing.do_bench` on GPU, wall-clock on CPU; memory: peak",
        "  allocated above the steady state. Ratios compare rows measured in this same run.",
        "",
    ]
    write_atomic(md_path, "\n".join(header) + markdown_table(results) + "\n")
    return {"json": json_path, "markdown": md_path}
