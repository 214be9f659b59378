"""What a GPU-probe step measures with: :class:`Ctx` (device, dry/warm mode, timers, row output)
and :class:`Step` (a step's run function, time budget and summary).

Rows are flat dicts: ``step, op, mode, shape, dtype, provider, kind, timing, variant, p50_ms,
p20_ms, p80_ms, check, info, status``. ``timing`` says what a time is: ``eager`` (do_bench:
the GPU time of an eagerly launched call; up to ~90 µs of host time hides behind its L2-flush
memset), ``graph`` (a CUDA-graph replay), ``wall`` (back-to-back eager calls, host included),
``kernel`` (the profiler's summed kernel time). ``check`` is a correctness verdict measured in
the same run (None: not checked); ``status`` is ``ok``, ``error: …``, ``skipped: …`` or
``cut: …``. Each row is appended to the step's ``.jsonl`` file the moment it is measured, so a
step killed later keeps it.

Example
-------
>>> ctx = Ctx("demo", torch.device("cpu"), dry=False, out=None)
>>> ctx.row(op="demo", provider="p", p50_ms=1.0)["kind"]
'ours'
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch


class NeedsCuda(Exception):
    """A measurement that only exists on a CUDA device (graph replay, profiler, ncu)."""


@dataclass
class Step:
    """One probe step: ``run(ctx)`` writes its rows, ``budget_s`` bounds its wall time,
    ``summary(rows)`` turns its rows into the lines printed at the end, ``what`` says what it
    measures (printed as it starts).

    Example
    -------
    >>> Step("demo", lambda ctx: None, 5, lambda rows: [], "nothing").budget_s
    5
    """

    name: str
    run: Callable[["Ctx"], None]
    budget_s: float  # wall budget on an H100 with the kernels already compiled
    summary: Callable[[List[dict]], List[str]]
    what: str


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
            self._out.write(json.dumps(row, default=json_default) + "\n")
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


def json_default(obj):
    """What ``json.dumps`` writes for the values a row's ``info`` may hold: tensors as lists,
    sets and tuples as lists, anything else as its ``str``.

    Example
    -------
    >>> json.dumps({"t": torch.tensor([1, 2]), "s": {3}}, default=json_default)
    '{"t": [1, 2], "s": [3]}'
    """
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)
