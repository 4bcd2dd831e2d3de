"""Timing and memory primitives shared by the speed harness and the demo.

On CUDA, times come from ``triton.testing.do_bench`` (CUDA events, L2 flushed between runs, warm-up first);
on CPU from ``time.perf_counter`` around synchronous calls. Both report the median and the 20th / 80th
percentiles in milliseconds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int


def _quantiles(samples: list[float]) -> Timing:
    s = sorted(samples)

    def q(p: float) -> float:
        return s[min(len(s) - 1, max(0, round(p * (len(s) - 1))))]

    return Timing(statistics.median(s), q(0.2), q(0.8), len(s))


def time_fn(
    fn: Callable[[], object],
    device: torch.device,
    *,
    warmup_ms: float = 25,
    rep_ms: float = 100,
    max_reps: int = 50,
    grad_to_none: list[torch.Tensor] | None = None,
    warmed_up: bool = False,
    min_reps: int = 3,
) -> Timing:
    """Median time of ``fn()`` on ``device``. ``grad_to_none``: tensors whose ``.grad`` is cleared before each
    call (so backward timings do not include gradient accumulation). ``warmed_up``: skip the CPU warm-up call.
    ``min_reps``: CPU samples taken even past ``rep_ms`` (shared CPUs stall now and then; the median needs a few)."""
    if device.type == "cuda":
        import triton.testing

        q20, q50, q80 = triton.testing.do_bench(
            fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.2, 0.5, 0.8], grad_to_none=grad_to_none
        )
        return Timing(q50, q20, q80, -1)

    def clear():
        for t in grad_to_none or ():
            t.grad = None

    if not warmed_up:
        clear()
        fn()  # warm-up (first-call allocations)
    samples: list[float] = []
    budget = time.perf_counter() + rep_ms / 1e3
    while len(samples) < max_reps and (len(samples) < min_reps or time.perf_counter() < budget):
        clear()
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return _quantiles(samples)


def time_cuda_graph(fn: Callable[[], object], device: torch.device, *, warmup_ms: float = 25, rep_ms: float = 100) -> Timing:
    """Median time of replaying ``fn()`` captured once as a CUDA graph: the GPU time of one call without the
    host's per-kernel launch cost (a layer's decode step is dozens of small kernels in eager PyTorch, and on the
    H200 host each costs ~10 us to launch). ``fn`` must be capturable (no host synchronisation); it is run
    three times on a side stream first, so autotuning and allocations happen outside the capture. The captured
    call reuses its inputs (replay cannot rotate them). CUDA only; raises what capture raises."""
    import triton.testing

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    try:
        q20, q50, q80 = triton.testing.do_bench(graph.replay, warmup=warmup_ms, rep=rep_ms, quantiles=[0.2, 0.5, 0.8])
    finally:
        torch.cuda.synchronize(device)
        del graph
    return Timing(q50, q20, q80, -1)


def peak_memory_of(fn: Callable[[], object], device: torch.device) -> int | None:
    """Allocator peak (bytes) above what was allocated before ``fn()``; None on CPU."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base
