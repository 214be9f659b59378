"""Benchmarks of top_h_mask / top_h_sample vs transformers' warper and the torch.sort exact rule."""

from bench_entropy import test_entropy as _run_case

OP = "top_h"


def test_top_h(benchmark, ek_case):
    _run_case(benchmark, ek_case)
