"""How a stack of layer calls is timed: CPU medians of single calls, GPU do_bench medians over whole
stack passes, CUDA-graph replays for small M. `slimkernels bench` and the pytest-benchmark files
(bench/conftest.py) share these pieces; pytest-benchmark takes the clock itself."""
from __future__ import annotations

import itertools
import math
import statistics
import time
from typing import Callable, Optional

import torch

MIN_SAMPLES = 5
GPU_GRAPH_MAX_M = 128  # CUDA-graph replays are timed for M up to this (launch overhead matters)


# ---- CPU ---------------------------------------------------------------------------------------------
def median_call_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of fn() in ms, after `warmup` untimed calls (first-call allocations, packing).
    The quick whole-model figure of the demo and of `slimkernels compress`; kernels use time_calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def cycle(calls: list[Callable[[], object]]) -> Callable[[], object]:
    """One callable that runs the next layer of the stack each time it is called."""
    it = itertools.cycle(calls)
    return lambda: next(it)()


def warm_up(fn: Callable[[], object], layers: int, budget_s: float) -> float:
    """Call fn (a cycle over the stack) a few times, up to one pass; return seconds per call.

    A full pass is not needed: cycling, every later call reads a weight last touched `layers`
    calls earlier, which the cache no longer holds, however many calls are timed.
    """
    deadline = time.perf_counter() + budget_s / 4
    times = []
    while len(times) < layers:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 2 and time.perf_counter() >= deadline:
            break
    return statistics.median(times[1:]) if len(times) > 1 else times[0]


def plan_rounds(seconds_per_call: float, budget_s: float, max_rounds: int = 20000) -> int:
    """Single-call rounds for a CPU timing: about budget_s of calls, at least MIN_SAMPLES."""
    return max(MIN_SAMPLES, min(max_rounds, math.ceil(budget_s / max(seconds_per_call, 1e-7))))


def time_cpu(calls: list[Callable[[], object]], budget_s: float = 1.0) -> list[float]:
    """Seconds of single layer calls, cycling through the stack, after a short warm-up."""
    fn = cycle(calls)
    rounds = plan_rounds(warm_up(fn, len(calls), budget_s), budget_s)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


# ---- GPU ---------------------------------------------------------------------------------------------
def do_bench(fn: Callable[[], object], quick: bool) -> float:
    """Median milliseconds of fn on the current CUDA stream (CUDA events)."""
    warmup, rep = (10, 40) if quick else (25, 100)
    try:
        from triton.testing import do_bench as triton_do_bench
    except ImportError:
        triton_do_bench = None
    if triton_do_bench is not None:
        return float(triton_do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
    fn()  # fallback without triton: events around each call, median
    torch.cuda.synchronize()
    times = []
    deadline = time.perf_counter() + rep / 1e3
    while time.perf_counter() < deadline or len(times) < MIN_SAMPLES:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def stack_pass(calls: list[Callable[[], object]]) -> Callable[[], None]:
    """One callable that runs every layer of the stack once."""
    def step():
        for call in calls:
            call()

    return step


def cuda_graph(step: Callable[[], object], reps: int) -> "torch.cuda.CUDAGraph":
    """Capture `reps` runs of step (a pass over the stack) into one graph, after side-stream warm-up."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            step()
    torch.cuda.synchronize()
    return graph


def graph_reps(layers: int) -> int:
    return max(1, math.ceil(40 / layers))


def try_graph(step: Callable[[], object], layers: int) -> tuple[Optional["torch.cuda.CUDAGraph"], int, Optional[str]]:
    """(graph of graph_reps(layers) passes, reps, None), or (None, 0, why) when a kernel cannot be
    captured: that is reported, not fatal."""
    reps = graph_reps(layers)
    try:
        return cuda_graph(step, reps), reps, None
    except Exception as exc:
        torch.cuda.synchronize()
        return None, 0, f"{type(exc).__name__}: {str(exc)[:200]}"


# ---- one entry, as `slimkernels bench` times it ------------------------------------------------------
def time_calls(calls: list[Callable[[], object]], device: str, m: int, budget_s: float, quick: bool) -> dict:
    """Time a stack of layer calls; per-layer microseconds in 'time_us' (graph replay on GPU where
    taken). The caller sets the switches (backend, ISA, AMX) and inference mode."""
    layers = len(calls)
    out: dict = {}
    if device == "cpu":
        times = time_cpu(calls, budget_s)
        out.update(time_us=statistics.median(times) * 1e6, min_us=min(times) * 1e6, samples=len(times),
                   timing="median of single calls")
        return out
    step = stack_pass(calls)
    plain = do_bench(step, quick) * 1e3 / layers
    out.update(plain_us=plain, time_us=plain, timing="do_bench median")
    if m <= GPU_GRAPH_MAX_M:
        graph, reps, error = try_graph(step, layers)
        if graph is None:
            out["graph_error"] = error
        else:
            out["graph_us"] = do_bench(graph.replay, quick) * 1e3 / (reps * layers)
            out.update(time_us=out["graph_us"], timing="cuda-graph replay, do_bench median")
            del graph
    return out
