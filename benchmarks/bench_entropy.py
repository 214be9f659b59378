"""Benchmarks of entropy_kernels.entropy vs torch eager, torch.compile and the memory floors."""

import torch

from entropy_kernels.benchmarking import measure

OP = "entropy"


def test_entropy(benchmark, ek_case):
    case, provider = ek_case
    fn, grads = provider.setup(case)

    def call():
        for t in grads:
            t.grad = None
        fn()
        if case.device.type == "cuda":
            torch.cuda.synchronize()

    m = measure(fn, case.device, grad_to_none=grads)
    benchmark.extra_info.update(
        case=case.label, provider=provider.name, kind=provider.kind,
        p50_ms=m.p50_ms, p20_ms=m.p20_ms, p80_ms=m.p80_ms, peak_mem_bytes=m.peak_mem_bytes,
    )
    benchmark.pedantic(call, rounds=10, warmup_rounds=2, iterations=1)
