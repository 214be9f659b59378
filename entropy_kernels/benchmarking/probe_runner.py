"""Running GPU-probe steps: each in a forked child process under its own time budget
(:func:`run_steps`), or every step's cases shared out over parallel children that only compile
(:func:`run_warm`).

The parent imports torch and the package once and never initialises CUDA, so forking is safe: a
crash, a hung kernel or a CUDA error ends that step only, and a step over its budget is killed
and reported as cut -- the rows it wrote before are kept, because every row is appended to
``steps/<step>.jsonl`` the moment it is measured.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from . import probe_steps
from .probe_context import Ctx, Step


def probe_device(dry: bool) -> torch.device:
    """The device the probe measures on: the GPU, or the CPU on a dry run or without one.

    Example
    -------
    >>> probe_device(dry=True)
    device(type='cpu')
    """
    return torch.device("cpu" if dry or not torch.cuda.is_available() else "cuda")


def fork_child(target: Callable[[], None]) -> int:
    """Fork; the child runs ``target`` in its own process group (so a kill reaches anything it
    started, e.g. ncu) and exits without returning. The parent gets the child's pid.

    Example
    -------
    >>> wait_child(fork_child(lambda: None), timeout_s=30)
    0
    """
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.setpgid(0, 0)
            target()
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def _poll(pid: int) -> Optional[int]:
    """Exit status of child ``pid`` if it has ended (negative: killed by that signal), else None."""
    done, status = os.waitpid(pid, os.WNOHANG)
    return os.waitstatus_to_exitcode(status) if done else None


def _kill(pid: int) -> None:
    """Kill child ``pid`` and its process group, and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def wait_child(pid: int, timeout_s: float) -> Optional[int]:
    """Exit status of child ``pid``, or None if it is still running after ``timeout_s`` -- then
    it and its process group are killed.

    Example
    -------
    >>> wait_child(fork_child(lambda: time.sleep(60)), timeout_s=0.2) is None
    True
    """
    end = time.monotonic() + max(0.0, timeout_s)
    while True:
        code = _poll(pid)
        if code is not None:
            return code
        if time.monotonic() >= end:
            _kill(pid)
            return None
        time.sleep(0.05)


def _run_step_in_child(step: Step, out_dir: Path, dry: bool):
    def target():
        ctx = Ctx(step.name, probe_device(dry), dry, out_dir / "steps" / f"{step.name}.jsonl")
        try:
            step.run(ctx)
        finally:
            ctx.close()

    return target


def read_rows(path: Path) -> List[dict]:
    """The rows of a ``.jsonl`` step file; a last line cut by a kill is dropped.

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "s.jsonl"
    >>> _ = path.write_text('{"op": "a"}' + chr(10) + '{"op": "b", "cut')
    >>> read_rows(path)
    [{'op': 'a'}]
    """
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
    return rows


def run_steps(names: Sequence[str], out_dir: Path, dry: bool, deadline_s: float, scale: float = 1.0,
              parallel: int = 1, log: Callable[[str], None] = print) -> Dict[str, dict]:
    """Run each named step in a forked child with timeout ``min(budget·scale, time left)``,
    ``parallel`` at a time (1 when measuring: steps would disturb each other's timings).
    Returns per step ``{"wall_s", "budget_s", "outcome"}``; an over-budget or crashed step gets
    a row saying so (its earlier rows stay).

    Example
    -------
    >>> report = run_steps(["entropy"], Path("ek-results"), dry=True, deadline_s=60)  # doctest: +SKIP
    >>> report["entropy"]["outcome"]                                                  # doctest: +SKIP
    'ok'
    """
    steps = probe_steps.steps_by_name()
    (out_dir / "steps").mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    report: Dict[str, dict] = {}
    pending = list(names)
    running: Dict[int, tuple] = {}  # pid -> (name, started, budget)

    def finish(name: str, code: Optional[int], started: float, budget: float) -> None:
        path = out_dir / "steps" / f"{name}.jsonl"
        wall = time.monotonic() - started
        n_rows = len(read_rows(path))
        if code is None:
            outcome = f"cut at its budget of {budget:.0f} s after {n_rows} rows"
            append_status_row(path, name, f"cut: over its budget of {budget:.0f} s after {n_rows} rows")
        elif code != 0:
            outcome = f"failed (exit {code}) after {n_rows} rows"
            append_status_row(path, name, f"error: the step's process exited with {code} after {n_rows} rows")
        else:
            outcome = "ok"
        report[name] = {"wall_s": round(wall, 1), "budget_s": round(budget, 1), "outcome": outcome}
        log(f"[probe] {name:10s} {outcome} ({wall:.1f} s, {n_rows} rows)")

    while pending or running:
        while pending and len(running) < max(1, parallel):
            name = pending.pop(0)
            step = steps[name]
            path = out_dir / "steps" / f"{name}.jsonl"
            path.unlink(missing_ok=True)
            budget = min(step.budget_s * scale, deadline_s - (time.monotonic() - start))
            if budget < 1:
                append_status_row(path, name, f"cut: no time left of the probe's {deadline_s:.0f} s")
                report[name] = {"wall_s": 0.0, "budget_s": 0.0, "outcome": "cut (no time left)"}
                log(f"[probe] {name:10s} cut: no time left")
                continue
            log(f"[probe] {name:10s} start (budget {budget:.0f} s): {step.what}")
            running[fork_child(_run_step_in_child(step, out_dir, dry))] = (name, time.monotonic(), budget)
        for pid, (name, started, budget) in list(running.items()):
            code = _poll(pid)
            if code is None and time.monotonic() - started >= budget:
                _kill(pid)
            elif code is None:
                continue
            del running[pid]
            finish(name, code, started, budget)
        time.sleep(0.05)
    return {name: report[name] for name in names}


def append_status_row(path: Path, step: str, status: str) -> None:
    """Append the row that says what became of a step as a whole (cut, failed) to its file.

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "s.jsonl"
    >>> append_status_row(path, "s", "cut: no time left")
    >>> read_rows(path)[0]["status"], read_rows(path)[0]["provider"]
    ('cut: no time left', '(step)')
    """
    with open(path, "a") as f:
        f.write(json.dumps({"step": step, "op": step, "mode": "", "shape": "", "dtype": "", "provider": "(step)",
                            "kind": "info", "timing": "", "variant": "", "p50_ms": None, "p20_ms": None,
                            "p80_ms": None, "check": None, "info": {}, "status": status}) + "\n")


def run_warm(names: Sequence[str], jobs: int, dry: bool, deadline_s: float, log: Callable[[str], None] = print) -> dict:
    """Compile the probe's kernels: ``jobs`` forked children, each running its share of every
    step's cases once. Returns ``{"wall_s", "jobs", "finished", "cut"}``.

    Example
    -------
    >>> run_warm(step_names(), jobs=16, dry=False, deadline_s=120)["cut"]  # doctest: +SKIP
    0
    """
    steps = probe_steps.steps_by_name()
    chosen = [steps[n] for n in names]

    def shard_target(i: int):
        def target():
            for step in chosen:
                ctx = Ctx(step.name, probe_device(dry), dry, None, warm=True, shard=i, shards=jobs)
                try:
                    step.run(ctx)
                except Exception:  # a step that fails to warm still lets the others warm
                    traceback.print_exc()
        return target

    t0 = time.monotonic()
    pids = [fork_child(shard_target(i)) for i in range(jobs)]
    finished = cut = failed = 0
    for pid in pids:
        code = wait_child(pid, deadline_s - (time.monotonic() - t0))
        if code is None:
            cut += 1
        elif code != 0:
            failed += 1
        else:
            finished += 1
    wall = time.monotonic() - t0
    log(f"[warm] {jobs} processes: {finished} finished, {cut} cut at {deadline_s:.0f} s, {failed} failed; {wall:.1f} s")
    return {"wall_s": round(wall, 1), "jobs": jobs, "finished": finished, "cut": cut, "failed": failed}
