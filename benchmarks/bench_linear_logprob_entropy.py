"""Benchmarks of linear_logprob_entropy (and high_entropy_mask) vs torch, torch.compile, GEMM floors."""

from bench_entropy import test_entropy as _run_case

OP = "linear_logprob_entropy"


def test_linear_logprob_entropy(benchmark, ek_case):
    _run_case(benchmark, ek_case)
