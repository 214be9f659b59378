"""Benchmark harness shared by ``entropy-kernels bench`` and the pytest-benchmark suite in
``benchmarks/``: one timing implementation (:mod:`.timing`), one set of cases per op
(:mod:`.cases`), one report format (:mod:`.report`)."""

from .cases import CASES, Case, Provider, cases_for
from .report import Result, environment, write_results
from .runner import run_cases
from .timing import Measurement, measure

__all__ = [
    "CASES", "Case", "Provider", "cases_for", "Result", "environment", "write_results",
    "run_cases", "Measurement", "measure",
]
