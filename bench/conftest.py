"""pytest-benchmark setup for bench/: collection, shape options, environment in extra_info, the runner.

    python -m pytest bench/ --benchmark-only                     # CPU small shapes; GPU when present
    python -m pytest bench/ --benchmark-only --bench-shapes=full --bench-m=1,32
    python -m pytest bench/ --benchmark-only -k "4096x4096 and M1-"

The cases, weight stacks, byte counts and the closing table come from slimkernels/bench.py, which
`slimkernels bench` runs without pytest; this file only adapts them to pytest-benchmark.
"""
from __future__ import annotations

import dataclasses
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from the source tree: `import slimkernels` is the checkout
    sys.path.insert(0, ROOT)

import slimkernels  # noqa: E402  (registers every op and backend)
from slimkernels import bench  # noqa: E402
from slimkernels.backends import use_backend  # noqa: E402

_ROWS: list[dict] = []


# ---- collection: bench_*.py are the benchmark modules ------------------------------------------------
def pytest_collect_file(file_path, parent):
    # Files named on the command line are collected by pytest itself; don't collect them twice.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_addoption(parser):
    group = parser.getgroup("slimkernels-bench", "slimkernels benchmarks (bench/)")
    group.addoption("--bench-shapes", default=None,
                    help="small | full | NxK list (default: $SLIMKERNELS_BENCH_SHAPES, else small on cpu, full on cuda)")
    group.addoption("--bench-m", default=None, help="comma-separated M (default: $SLIMKERNELS_BENCH_M, else the device's list)")
    group.addoption("--bench-device", default="all", choices=("all", "cpu", "cuda"),
                    help="devices to benchmark (cuda cases are skipped without a CUDA device)")
    group.addoption("--bench-budget", type=float, default=1.0, help="seconds of timed calls per CPU benchmark")
    group.addoption("--bench-include-reference", action="store_true",
                    help="also time the pure-torch reference on large problems (slow)")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")


def _opt(config, name, default=None):
    try:
        return config.getoption(name)
    except ValueError:  # this conftest was not an initial one: options not registered
        return default


# ---- parametrization ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Case:
    suite: str
    device: str
    n: int
    k: int
    m: int
    spec: bench.EntrySpec = dataclasses.field(compare=False)


def pytest_generate_tests(metafunc):
    """Every test taking `case` gets one per (device, shape, M, entry); the module's SUITE says which."""
    if "case" not in metafunc.fixturenames:
        return
    suite = metafunc.module.SUITE
    config = metafunc.config
    which = _opt(config, "--bench-device", "all")
    devices = ["cpu", "cuda"] if which == "all" else [which]
    include_ref = bool(_opt(config, "--bench-include-reference", False))
    params = []
    for device in devices:
        if device == "cuda" and not torch.cuda.is_available():
            params.append(pytest.param(None, id="cuda", marks=[pytest.mark.gpu, pytest.mark.skip(reason="needs a CUDA device")]))
            continue
        shapes = bench.shape_list(_opt(config, "--bench-shapes") or bench.default_shapes(device))
        for n, k in shapes:  # shape outermost: one weight stack alive at a time (bench.get_stack)
            for m in bench.m_list(device, override=_opt(config, "--bench-m")):
                for spec in bench.entry_specs(suite, device, n, k, m, include_ref):
                    marks = [pytest.mark.gpu] if device == "cuda" else []
                    if spec.skip:
                        marks.append(pytest.mark.skip(reason=spec.skip))
                    params.append(pytest.param(Case(suite, device, n, k, m, spec), id=f"{device}-{n}x{k}-M{m}-{spec.id}",
                                               marks=marks))
    metafunc.parametrize("case", params)


# ---- environment in every benchmark's extra_info -----------------------------------------------------
@pytest.fixture(autouse=True)
def _slimkernels_extra_info(request):
    if "benchmark" in request.fixturenames:
        env = bench.environment("cpu")
        for key in ("device", "device_name"):
            env.pop(key)
        request.getfixturevalue("benchmark").extra_info.update(env)
    yield


# ---- the runner --------------------------------------------------------------------------------------
@pytest.fixture
def run_bench(request):
    """run_bench(benchmark, case): time one entry of a case on its weight stack, per layer."""
    budget = float(_opt(request.config, "--bench-budget", 1.0))

    def run(benchmark, case: Case) -> dict:
        spec, device, n, k, m = case.spec, case.device, case.n, case.k, case.m
        stack = bench.get_stack(n, k, device)
        entry = bench.build_entry(spec, stack, m)
        bandwidth = bench.measure_bandwidth(device)
        layers = len(entry.calls)
        benchmark.group = f"{bench.SUITE_OP[case.suite]}@{device} N={n} K={k} M={m}"
        info = benchmark.extra_info
        info.update(device=device, device_name=bench.device_name(device), suite=case.suite, entry=spec.name,
                    kind=spec.kind, backend=spec.backend, N=n, K=k, M=m, layers=layers, bytes=entry.bytes,
                    ops=entry.ops, bandwidth_Bps=bandwidth, floor_us=entry.bytes / bandwidth * 1e6)
        with torch.inference_mode(), use_backend(spec.backend):
            if device == "cpu":
                # a short warm-up, then single-layer calls cycling through the stack
                fn = bench.cycle(entry.calls)
                rounds = bench.plan_rounds(bench.warm_up(fn, layers, budget), budget)
                benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
                calls_per_round = 1
                info["timing"] = "single layer calls cycling through the stack"
            else:
                def step():
                    for call in entry.calls:
                        call()

                def eager():
                    step()
                    torch.cuda.synchronize()

                timed, calls_per_round = eager, layers
                info["timing"] = "one pass over the stack + synchronize"
                if m <= bench.GPU_GRAPH_MAX_M:  # small M: replay a CUDA graph, launch overhead removed
                    reps = bench.graph_reps(layers)
                    try:
                        graph = bench.cuda_graph(step, reps)
                    except Exception as exc:  # not capturable: time the eager passes, say why
                        info["graph_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                        torch.cuda.synchronize()
                    else:
                        def replay():
                            graph.replay()
                            torch.cuda.synchronize()

                        timed, calls_per_round = replay, reps * layers
                        info["timing"] = f"cuda-graph replay of {reps} passes over the stack + synchronize"
                timed()
                benchmark(timed)
        stats = getattr(benchmark, "stats", None)
        if stats is None:  # --benchmark-disable: ran once, nothing to record
            return info
        per_layer_us = stats.stats.median / calls_per_round * 1e6
        info.update(per_layer_us=per_layer_us, x_floor=per_layer_us / info["floor_us"])
        _ROWS.append({"suite": case.suite, "op": bench.SUITE_OP[case.suite], "device": device, "N": n, "K": k, "M": m,
                      "layers": layers, "name": spec.name, "id": spec.id, "kind": spec.kind, "status": "ok",
                      "time_us": per_layer_us, "floor_us": info["floor_us"], "x_floor": info["x_floor"]})
        return info

    return run


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _ROWS:
        return
    bw = {d: bench.measure_bandwidth(d) for d in {r["device"] for r in _ROWS}}
    terminalreporter.write_sep("=", "slimkernels: per-layer medians, speed-up = anchor / ours (same run)")
    terminalreporter.write_line(bench.format_table(_ROWS, bw))
