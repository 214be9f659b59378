"""Timing and peak-memory measurement, the one implementation every benchmark uses.

GPU: ``triton.testing.do_bench`` (median of many runs after warm-up, L2 flushed between runs);
peak memory = ``max_memory_allocated`` above what was allocated before the call.
CPU: wall-clock median of repeated calls; memory is not measured.

``do_bench`` times each call between two events and zeroes a 256 MB buffer before each one to
flush L2; the host launches the call while that memset runs, so up to ~90 µs of host time per
call (Python, dispatch, launches) is hidden from an eager row. Hence three more views of a cheap
op: :func:`graph_measure` (a CUDA-graph replay: the GPU time alone), :func:`wall_per_call`
(back-to-back calls, the host included: what an eager loop pays) and :func:`kernel_time` (the
summed device time of its kernels, from the profiler).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch


@dataclass
class Measurement:
    p50_ms: float
    p20_ms: float
    p80_ms: float
    peak_mem_bytes: Optional[int]  # above the steady state; None where not measured (CPU)


def _cpu_times(fn: Callable[[], object], warmup: int, rep: int) -> Sequence[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rep):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[idx]


def peak_memory(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Bytes allocated at peak during ``fn()`` above what was allocated before it (CUDA only)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return max(0, torch.cuda.max_memory_allocated(device) - before)


def measure(
    fn: Callable[[], object],
    device: torch.device,
    *,
    grad_to_none: Optional[Sequence[torch.Tensor]] = None,
    warmup_ms: int = 25,
    rep_ms: int = 100,
    cpu_warmup: int = 2,
    cpu_rep: int = 10,
) -> Measurement:
    """Median/p20/p80 time of ``fn()`` in ms and its peak extra memory.

    Example
    -------
    >>> m = measure(lambda: torch.ones(1000).sum(), torch.device("cpu"), cpu_rep=3)
    >>> m.p50_ms > 0
    True
    """

    def call():
        if grad_to_none:
            for t in grad_to_none:
                t.grad = None
        return fn()

    mem = peak_memory(call, device)
    if device.type == "cuda":
        import triton.testing

        p50, p20, p80 = triton.testing.do_bench(
            fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=list(grad_to_none or []), quantiles=[0.5, 0.2, 0.8]
        )
        return Measurement(p50, p20, p80, mem)
    times = sorted(_cpu_times(call, cpu_warmup, cpu_rep))
    return Measurement(statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8), mem)


def cuda_graph_replay(fn: Callable[[], object], grad_to_none: Sequence[torch.Tensor] = (),
                      repeat: int = 1) -> Callable[[], None]:
    """Capture ``fn()`` (e.g. a loss forward + backward), ``repeat`` times back to back, in a
    CUDA graph and return its replay:
    the GPU time of a step without the Python/launch cost, which is what a CUDA-graphed (or
    ``torch.compile(mode="reduce-overhead")``) training step pays. ``fn`` must not synchronise
    with the host; the tensors in ``grad_to_none`` have their ``.grad`` reset before each warm-up
    call and the capture, so the captured backward writes fresh gradients.

    Example (needs a GPU)
    ---------------------
    >>> x = torch.randn(1024, device="cuda", requires_grad=True)    # doctest: +SKIP
    >>> replay = cuda_graph_replay(lambda: (x * x).sum().backward(), [x])  # doctest: +SKIP
    >>> replay(); x.grad.shape                                         # doctest: +SKIP
    torch.Size([1024])
    """

    def call():
        for t in grad_to_none:
            t.grad = None
        fn()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (autotuning, allocator pools) off the capture stream
        for _ in range(3):
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeat):
            call()
    return graph.replay


def graph_measure(
    fn: Callable[[], object],
    grad_to_none: Sequence[torch.Tensor] = (),
    *,
    repeat: int = 10,
    warmup_ms: int = 10,
    rep_ms: int = 50,
) -> Measurement:
    """Per-call time of ``fn`` replayed from a CUDA graph of ``repeat`` calls (the graph's own
    launch, a few µs, is spread over them): the GPU time without host cost. CUDA only.

    Example (needs a GPU)
    ---------------------
    >>> x = torch.randn(1 << 20, device="cuda")                  # doctest: +SKIP
    >>> graph_measure(lambda: x.mul_(1.0)).p50_ms < 0.1           # doctest: +SKIP
    True
    """
    import triton.testing

    replay = cuda_graph_replay(fn, grad_to_none, repeat)
    p50, p20, p80 = triton.testing.do_bench(replay, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
    return Measurement(p50 / repeat, p20 / repeat, p80 / repeat, None)


def wall_per_call(fn: Callable[[], object], device: torch.device, calls: int = 20,
                  grad_to_none: Sequence[torch.Tensor] = ()) -> float:
    """Milliseconds per call of ``calls`` back-to-back calls, one synchronisation at the end:
    what a loop of eager calls pays, host time included (on CPU, plain wall-clock).

    Example
    -------
    >>> wall_per_call(lambda: torch.ones(10).sum(), torch.device("cpu"), calls=3) > 0
    True
    """

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        for t in grad_to_none:
            t.grad = None
        fn()
    sync()
    return (time.perf_counter() - t0) * 1e3 / calls


def kernel_time(fn: Callable[[], object], iters: int = 5, top: Optional[int] = 6):
    """``(ms, kernels)``: the summed device time of the kernels one call of ``fn`` launches, and
    the ``top`` kernels (all for None) as ``(name, ms per call)`` -- torch.profiler, CUDA only. A wall time far
    above it is host time; otherwise the named kernel is where the time goes.

    Example (needs a GPU)
    ---------------------
    >>> ms, kernels = kernel_time(lambda: torch.randn(1024, device="cuda").sum())  # doctest: +SKIP
    """
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    per_kernel = {}
    for e in prof.key_averages():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0:
            per_kernel[e.key] = per_kernel.get(e.key, 0.0) + e.self_device_time_total / iters / 1e3
    ranked = sorted(per_kernel.items(), key=lambda kv: -kv[1])
    return sum(per_kernel.values()), ranked if top is None else ranked[:top]
