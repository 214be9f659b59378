"""The GPU probe: one command that measures every op and the variants that decide its defaults,
each step under its own time budget (``scripts/perf_probe.py``; docs/gpu-probe.md).

A step runs in a forked child process (the parent imports torch and the package once, and never
initialises CUDA, so forking is safe): a crash, a hung kernel or a CUDA error ends that step
only, and a step over its budget is killed and reported as cut -- the rows it wrote before are
kept, because every row is appended to ``steps/<step>.jsonl`` the moment it is measured.

Rows are flat dicts: ``step, op, mode, shape, dtype, provider, kind, timing, variant, p50_ms,
p20_ms, p80_ms, check, info, status``. ``timing`` says what a time is: ``eager`` (do_bench:
the GPU time of an eagerly launched call; up to ~90 µs of host time hides behind its L2-flush
memset), ``graph`` (a CUDA-graph replay), ``wall`` (back-to-back eager calls, host included),
``kernel`` (the profiler's summed kernel time). ``check`` is a correctness verdict measured in
the same run (None: not checked); ``status`` is ``ok``, ``error: …``, ``skipped: …`` or
``cut: …``. Eager rows use the provider names of ``entropy-kernels bench``, so the results
files feed the same tables (scripts/regen_bench_docs.py).

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
import contextlib
import datetime as _dt
import json
import math
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch


class NeedsCuda(Exception):
    """A measurement that only exists on a CUDA device (graph replay, profiler, ncu)."""


@dataclass
class Step:
    name: str
    run: Callable[["Ctx"], None]
    budget_s: float  # wall budget on an H100 with the kernels already compiled
    summary: Callable[[List[dict]], List[str]]
    what: str


def _steps() -> Dict[str, Step]:
    from . import probe_dfloat_linear, probe_lsm, probe_steps

    steps = [*probe_steps.STEPS, *probe_lsm.STEPS, *probe_dfloat_linear.STEPS]
    return {s.name: s for s in steps}


def step_names() -> List[str]:
    """The probe's steps in the order they run (the most decisive first).

    Example
    -------
    >>> step_names()[:3]
    ['ceilings', 'histogram', 'ekdf']
    """
    return list(_steps())


# ---------------------------------------------------------------------------------------------
# the context a step runs with


class Ctx:
    """What a step measures with: the device, dry/warm mode, row output, timers.

    In warm mode :meth:`mine` deals cases to processes by compile key and the timers only call
    the function once.

    Example
    -------
    >>> ctx = Ctx("demo", torch.device("cpu"), dry=False, out=None)
    >>> ctx.record(lambda: torch.ones(8).sum(), "wall", op="demo")["status"]
    'ok'
    >>> ctx.record(lambda: None, "graph", op="demo")["status"]
    'skipped: needs CUDA'
    """

    def __init__(self, step: str, device: torch.device, dry: bool, out: Optional[Path], warm: bool = False,
                 shard: int = 0, shards: int = 1):
        self.step, self.device, self.dry, self.warm = step, device, dry, warm
        self.shard, self.shards = shard, shards
        self._out = open(out, "a") if out is not None else None
        self._keys: Dict[object, int] = {}
        self.rows_written = 0
        self.warmed = 0
        self._last_call = (None, 0.0)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def close(self):
        if self._out is not None:
            self._out.close()

    # -- sharding for --warm ------------------------------------------------------------------
    def mine(self, key) -> bool:
        """Whether this process handles the case whose kernels compile under ``key``: always when
        measuring; when warming, the first case of each key, keys dealt round-robin in the
        order they first appear (the same order in every process)."""
        if not self.warm:
            return True
        if key in self._keys:
            return False
        self._keys[key] = len(self._keys)
        return self._keys[key] % self.shards == self.shard

    def launch(self):
        """Context for running ops: on a dry run, the Triton kernels under the interpreter."""
        if self.dry:
            from .._backend import triton_on_cpu

            return triton_on_cpu()
        return contextlib.nullcontext()

    # -- rows --------------------------------------------------------------------------------
    def row(self, **fields) -> dict:
        row = {"step": self.step, "op": "", "mode": "", "shape": "", "dtype": "", "provider": "", "kind": "ours",
               "timing": "", "variant": "", "p50_ms": None, "p20_ms": None, "p80_ms": None, "check": None,
               "info": {}, "status": "ok"}
        row.update(fields)
        if self.warm:
            return row
        if self._out is not None:
            self._out.write(json.dumps(row, default=_json_default) + "\n")
            self._out.flush()
        self.rows_written += 1
        return row

    def call(self, fn: Callable[[], object]):
        """``fn()`` under :meth:`launch`, synchronised. On a dry run its time stands in for the
        timings of ``fn`` recorded next (one interpreted call per case instead of three)."""
        t0 = time.perf_counter()
        with self.launch():
            out = fn()
        self.sync()
        self._last_call = (fn, (time.perf_counter() - t0) * 1e3)
        return out

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def measure(self, fn: Callable[[], object], timing: str = "eager", grads: Sequence[torch.Tensor] = (),
                calls: int = 10) -> Optional[dict]:
        """``{"p50_ms", "p20_ms", "p80_ms"}`` of ``fn`` by ``timing`` (eager | graph | wall |
        kernel); raises :class:`NeedsCuda` for graph/kernel off CUDA. Warm mode: one call, None."""
        from .timing import graph_measure, kernel_time, measure, wall_per_call

        if self.warm:
            if self._last_call[0] is not fn:  # compiled by the call just made otherwise
                self.call(fn)
            self.warmed += 1
            return None
        if timing in ("graph", "kernel") and not self.cuda:
            raise NeedsCuda(timing)
        if self.dry:  # timings mean nothing on a dry run: one call shows the code path works
            if self._last_call[0] is fn:
                return {"p50_ms": self._last_call[1]}
            with self.launch():
                t0 = time.perf_counter()
                fn()
                return {"p50_ms": (time.perf_counter() - t0) * 1e3}
        with self.launch():
            if timing == "eager":
                m = measure(fn, self.device, grad_to_none=list(grads), warmup_ms=10, rep_ms=50, cpu_rep=3, cpu_warmup=1)
                return {"p50_ms": m.p50_ms, "p20_ms": m.p20_ms, "p80_ms": m.p80_ms, "peak_mem_bytes": m.peak_mem_bytes}
            if timing == "wall":
                ms = wall_per_call(fn, self.device, calls=calls if self.cuda else 2, grad_to_none=grads)
                return {"p50_ms": ms}
            if timing == "graph":
                m = graph_measure(fn, grads, repeat=calls)
                return {"p50_ms": m.p50_ms, "p20_ms": m.p20_ms, "p80_ms": m.p80_ms}
            if timing == "kernel":
                def fresh():  # a backward into fresh gradients, as in the other timings
                    for t in grads:
                        t.grad = None
                    return fn()

                ms, kernels = kernel_time(fresh)
                return {"p50_ms": ms, "info": {"kernels": [[k[:60], round(v * 1e3, 2)] for k, v in kernels]}}
        raise ValueError(f"timing must be eager, graph, wall or kernel, got {timing!r}")

    def record(self, fn: Callable[[], object], timing: str = "eager", grads: Sequence[torch.Tensor] = (),
               calls: int = 10, derive: Optional[Callable[[float], dict]] = None, **fields) -> Optional[dict]:
        """Measure ``fn`` and write its row (``fields``: op, mode, shape, dtype, provider, …;
        ``derive(p50_ms)`` adds rates to its info); an exception becomes an ``error`` row, a
        CUDA-only timing off CUDA a ``skipped`` row."""
        if timing in ("graph", "kernel", "wall") and self.warm:
            return None  # compiling needs one eager call, which the eager row makes
        info = dict(fields.pop("info", {}) or {})
        try:
            m = self.measure(fn, timing, grads, calls)
        except NeedsCuda:
            return self.row(timing=timing, status="skipped: needs CUDA", info=info, **fields)
        except Exception as exc:  # one failing case must not hide the others
            return self.row(timing=timing, status=f"error: {type(exc).__name__}: {str(exc)[:300]}", info=info, **fields)
        if m is None:
            return None
        info.update(m.pop("info", {}))
        if derive is not None and m.get("p50_ms"):
            info.update(derive(m["p50_ms"]))
        return self.row(timing=timing, info=info, **m, **fields)


def _json_default(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


# ---------------------------------------------------------------------------------------------
# running steps in forked children, under budgets


def _device(dry: bool) -> torch.device:
    return torch.device("cpu" if dry or not torch.cuda.is_available() else "cuda")


def _child(target: Callable[[], None]) -> int:
    """Fork; the child runs ``target`` in its own process group (so a kill reaches anything it
    started, e.g. ncu) and exits without returning. The parent gets the child's pid."""
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


def _wait(pid: int, timeout_s: float) -> Optional[int]:
    """Exit status of child ``pid``, or None if it is still running after ``timeout_s`` -- then
    it and its process group are killed."""
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
        ctx = Ctx(step.name, _device(dry), dry, out_dir / "steps" / f"{step.name}.jsonl")
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
    steps = _steps()
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
            _append(path, name, f"cut: over its budget of {budget:.0f} s after {n_rows} rows")
        elif code != 0:
            outcome = f"failed (exit {code}) after {n_rows} rows"
            _append(path, name, f"error: the step's process exited with {code} after {n_rows} rows")
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
                _append(path, name, f"cut: no time left of the probe's {deadline_s:.0f} s")
                report[name] = {"wall_s": 0.0, "budget_s": 0.0, "outcome": "cut (no time left)"}
                log(f"[probe] {name:10s} cut: no time left")
                continue
            log(f"[probe] {name:10s} start (budget {budget:.0f} s): {step.what}")
            running[_child(_run_step_in_child(step, out_dir, dry))] = (name, time.monotonic(), budget)
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


def _append(path: Path, step: str, status: str) -> None:
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
    steps = _steps()
    chosen = [steps[n] for n in names]

    def shard_target(i: int):
        def target():
            for step in chosen:
                ctx = Ctx(step.name, _device(dry), dry, None, warm=True, shard=i, shards=jobs)
                try:
                    step.run(ctx)
                except Exception:  # a step that fails to warm still lets the others warm
                    traceback.print_exc()
        return target

    t0 = time.monotonic()
    pids = [_child(shard_target(i)) for i in range(jobs)]
    finished = cut = failed = 0
    for pid in pids:
        code = _wait(pid, deadline_s - (time.monotonic() - t0))
        if code is None:
            cut += 1
        elif code != 0:
            failed += 1
        else:
            finished += 1
    wall = time.monotonic() - t0
    log(f"[warm] {jobs} processes: {finished} finished, {cut} cut at {deadline_s:.0f} s, {failed} failed; {wall:.1f} s")
    return {"wall_s": round(wall, 1), "jobs": jobs, "finished": finished, "cut": cut, "failed": failed}


# ---------------------------------------------------------------------------------------------
# environment, output files, summary


def _env_in_child(out_dir: Path, dry: bool) -> dict:
    """The run's environment, gathered in a child (it initialises CUDA, which the parent must
    not before forking)."""
    path = out_dir / "env.json"

    def target():
        from . import probe_steps
        from .report import environment

        dev = _device(dry)
        try:
            env = environment(dev)
        except Exception as exc:  # e.g. _C not built: keep the rest
            env = {"error": f"{type(exc).__name__}: {exc}", "torch": torch.__version__}
        env.update(probe_steps.environment_extras(dev))
        path.write_text(json.dumps(env, default=str))

    _wait(_child(target), 120)
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
    steps = _steps()
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
    json_path.write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")
    lines = [f"# entropy_kernels GPU probe: {env.get('gpu') or 'CPU (dry run: timings meaningless)'}", "",
             f"- date: {env.get('date')}", f"- command: `{env.get('command')}`",
             f"- torch {env.get('torch')}, triton {env.get('triton')}, CUDA {env.get('cuda')}, "
             f"entropy_kernels {env.get('entropy_kernels')}",
             "- timing: eager = do_bench of an eager call (host time up to ~90 µs hidden); graph = CUDA-graph "
             "replay; wall = back-to-back eager calls, host included; kernel = summed kernel time (profiler)",
             "", "## Summary", "", *summary(rows, env, report, names, max_lines=10_000), "", "## Every row", "",
             markdown_rows(rows), ""]
    md_path.write_text("\n".join(lines))
    return {"json": json_path, "markdown": md_path}


def main(argv=None) -> int:
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
        (out_dir / "warm.json").write_text(json.dumps(result))
        return 0 if result["cut"] == 0 and result["failed"] == 0 else 1
    if args.parallel > 1 and not args.dry_run:
        ap.error("--parallel is for --dry-run only: steps measured at once disturb each other")
    env = _env_in_child(out_dir, args.dry_run)
    report = run_steps(chosen, out_dir, args.dry_run, args.deadline, args.budget_scale, args.parallel)
    rows = [r for name in chosen for r in read_rows(out_dir / "steps" / f"{name}.jsonl")]
    paths = write_outputs(rows, env, report, out_dir, chosen)
    print()
    print("\n".join(summary(rows, env, report, chosen)))
    print(f"\n[probe] wrote {paths['json']} and {paths['markdown']}")
    failed_checks = [r for r in rows if r.get("check") is False]
    return 1 if failed_checks else 0
