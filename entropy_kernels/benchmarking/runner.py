"""Run benchmark cases: set up each provider, measure it, keep going past a failing provider."""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

from .cases import Case
from .report import Result
from .timing import measure


def run_cases(
    cases: Sequence[Case],
    providers: Optional[Sequence[str]] = None,
    log: Callable[[str], None] = lambda s: None,
) -> List[Result]:
    """Measure every (case, provider). ``providers`` filters by name: an exact name, or the
    part before ":" (``"floor"`` selects every floor).

    Example
    -------
    >>> import torch
    >>> from entropy_kernels.benchmarking import cases_for
    >>> rows = run_cases(cases_for(["entropy"], "quick", torch.device("cpu"))[:1], ["entropy_kernels"])
    >>> rows[0].provider
    'entropy_kernels'
    """
    results: List[Result] = []
    for case in cases:
        for prov in case.providers:
            if providers and prov.name not in providers and prov.name.split(":")[0] not in providers:
                continue
            row = dict(
                op=case.op, mode=case.mode, shape=" ".join(f"{k}={v}" for k, v in case.shape.items()),
                dtype=str(case.dtype).replace("torch.", ""), device=str(case.device),
                provider=prov.name, kind=prov.kind,
            )
            try:
                fn, grads = prov.setup(case)
                m = measure(fn, case.device, grad_to_none=grads)
                results.append(Result(**row, p50_ms=m.p50_ms, p20_ms=m.p20_ms, p80_ms=m.p80_ms, peak_mem_bytes=m.peak_mem_bytes))
                log(f"{case.label:45s} {prov.name:20s} {m.p50_ms * 1e3:10.1f} us")
            except Exception as exc:  # a broken baseline must not hide the others
                results.append(Result(**row, p50_ms=float("nan"), p20_ms=float("nan"), p80_ms=float("nan"),
                                      peak_mem_bytes=None, error=f"{type(exc).__name__}: {exc}"[:200]))
                log(f"{case.label:45s} {prov.name:20s} ERROR {type(exc).__name__}: {exc}")
            finally:
                if case.device.type == "cuda":
                    import torch

                    torch.cuda.empty_cache()
    return results
