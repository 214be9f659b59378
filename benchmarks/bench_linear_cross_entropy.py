"""Benchmarks of entropy_kernels.linear_cross_entropy vs torch, torch.compile, peers and GEMM floors."""

from bench_entropy import test_entropy as _run_case

OP = "linear_cross_entropy"


def test_linear_cross_entropy(benchmark, ek_case):
    _run_case(benchmark, ek_case)
