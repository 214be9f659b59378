"""Progress for long benchmark runs: the case being measured, how many are left, and an ETA.

A tqdm bar on stderr when tqdm is installed and stderr is a terminal; otherwise one line per
case (``[3/12] entropy fwd B=64 … (ETA 0:41)``) on a terminal, and nothing when piped, so logs
and CI output stay clean. The measurements themselves are ``runner.run_cases``'s.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, List, Optional, Sequence

from .cases import Case
from .report import Result


def _eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def run_with_progress(cases: Sequence[Case], providers: Optional[Sequence[str]], run_cases: Callable,
                      log: Optional[Callable[[str], None]] = None, stream=None) -> List[Result]:
    """``run_cases`` one case at a time, showing which case runs and the estimated time left.

    Example
    -------
    >>> import io, torch
    >>> from entropy_kernels.benchmarking import cases_for, run_cases
    >>> cases = cases_for(["entropy"], "quick", torch.device("cpu"))[:2]
    >>> rows = run_with_progress(cases, ["entropy_kernels"], run_cases, stream=io.StringIO())
    >>> len(rows)
    2
    """
    stream = sys.stderr if stream is None else stream
    interactive = hasattr(stream, "isatty") and stream.isatty()
    bar = None
    if interactive:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(cases), file=stream, unit="case", dynamic_ncols=True, leave=False)
        except ImportError:
            bar = None
    results: List[Result] = []
    start = time.perf_counter()
    try:
        for i, case in enumerate(cases):
            if bar is not None:
                bar.set_description_str(case.label[:60])
            elif interactive:
                done = time.perf_counter() - start
                eta = f" (ETA {_eta(done / i * (len(cases) - i))})" if i else ""
                print(f"[{i + 1}/{len(cases)}] {case.label}{eta}", file=stream, flush=True)
            results.extend(run_cases([case], providers, log=log or (lambda s: None)))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return results
