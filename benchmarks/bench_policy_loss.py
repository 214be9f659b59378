"""Benchmarks of the Clip-Cov / KL-Cov policy losses (fwd+bwd) vs the verl-style torch baseline."""

from bench_entropy import test_entropy as _run_case

OP = "policy_loss"


def test_policy_loss(benchmark, ek_case):
    _run_case(benchmark, ek_case)
