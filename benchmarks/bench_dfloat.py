"""Benchmarks of EKDF decoding (DFloatTensor.decompress) vs dfloat11's kernel and a bf16 copy."""

from bench_entropy import test_entropy as _run_case

OP = "dfloat"


def test_dfloat(benchmark, ek_case):
    _run_case(benchmark, ek_case)
