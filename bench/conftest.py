"""pytest-benchmark setup for bench/: collection, options, environment in extra_info, the runner.

    python -m pytest bench/ --benchmark-only                     # CPU small shapes; GPU when present
    python -m pytest bench/ --benchmark-only --bench-shapes=full --bench-m=1,32
    python -m pytest bench/ --benchmark-only -k "4096x4096 and M1-"

Suites, cases, weight stacks, byte counts, timing pieces and the closing table all come from
slimkernels.bench (the registry `slimkernels bench` runs without pytest); this file only adapts them
to pytest-benchmark, which takes the clock.
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

import slimkernels  # noqa: E402,F401  (registers every op and backend)
from slimkernels.bench import machine, registry, runner, shapes, stacks, table, timing  # noqa: E402

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
    group.addoption("--bench-suite", default="default",
                    help="default | all | comma-separated suites (as `slimkernels bench --suite`)")
    group.addoption("--bench-budget", type=float, default=1.0, help="seconds of timed calls per CPU benchmark")
    group.addoption("--bench-layers", type=int, default=None, help="layers per weight stack (default: beyond the cache)")
    group.addoption("--bench-isa", default=None, help="CPU ISAs of our native entries (as `slimkernels bench --isa`)")
    group.addoption("--bench-amx", default=None, help="AMX modes of our native low-bit entries (as --amx)")
    group.addoption("--bench-act-dtype", default=None, help="activation dtypes of our entries (as --act-dtype)")
    group.addoption("--bench-include-reference", action="store_true",
                    help="also time the pure-torch reference on large problems (slow)")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")


def _opt(config, name, default=None):
    try:
        return config.getoption(name)
    except ValueError:  # this conftest was not an initial one: options not registered
        return default


def _options(config) -> registry.Options:
    return registry.parse_options(_opt(config, "--bench-isa"), _opt(config, "--bench-amx"),
                                  _opt(config, "--bench-act-dtype"), bool(_opt(config, "--bench-include-reference", False)))


# ---- parametrization ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BenchCase:
    suite: str
    device: str
    n: int
    k: int
    m: int
    spec: registry.EntrySpec = dataclasses.field(compare=False)


def pytest_generate_tests(metafunc):
    """A test with `case` and a `suite` attribute (bench_suites.py) gets one per (device, shape, M, entry)."""
    if "case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    suite = registry.get(metafunc.function.suite)
    selected = registry.select(_opt(config, "--bench-suite", "default"))
    if suite not in selected:
        metafunc.parametrize("case", [pytest.param(None, id="not-selected", marks=pytest.mark.skip(
            reason=f"suite {suite.name} is not selected (--bench-suite; default: the default suites)"))])
        return
    which = _opt(config, "--bench-device", "all")
    devices = ["cpu", "cuda"] if which == "all" else [which]
    options = _options(config)
    params = []
    for device in devices:
        if device == "cuda" and not torch.cuda.is_available():
            params.append(pytest.param(None, id="cuda", marks=[pytest.mark.gpu, pytest.mark.skip(reason="needs a CUDA device")]))
            continue
        seen = set()
        for n, k in shapes.shape_list(_opt(config, "--bench-shapes") or shapes.default_shapes(device)):
            if suite.shape_key(n, k) in seen:  # a suite without weights: once per K
                continue
            seen.add(suite.shape_key(n, k))
            for m in shapes.m_list(device, override=_opt(config, "--bench-m")):  # shape outermost: one stack alive
                for spec in suite.entries(device, n, k, m, options):
                    marks = [pytest.mark.gpu] if device == "cuda" else []
                    if spec.skip:
                        marks.append(pytest.mark.skip(reason=spec.skip))
                    params.append(pytest.param(BenchCase(suite.name, device, n, k, m, spec),
                                               id=f"{device}-{n}x{k}-M{m}-{spec.id}", marks=marks))
    metafunc.parametrize("case", params)


# ---- environment in every benchmark's extra_info -----------------------------------------------------
@pytest.fixture(autouse=True)
def _slimkernels_extra_info(request):
    if "benchmark" in request.fixturenames:
        env = machine.environment("cpu")
        for key in ("device", "device_name"):
            env.pop(key)
        request.getfixturevalue("benchmark").extra_info.update(env)
    yield


# ---- the runner --------------------------------------------------------------------------------------
@pytest.fixture
def run_bench(request):
    """run_bench(benchmark, case): time one entry of a case on its weight stack, per layer."""
    budget = float(_opt(request.config, "--bench-budget", 1.0))
    layers_opt = _opt(request.config, "--bench-layers")

    def run(benchmark, case: BenchCase) -> dict:
        spec, device, n, k, m = case.spec, case.device, case.n, case.k, case.m
        suite = registry.get(case.suite)
        stack = stacks.get_stack(n, k, device, layers_opt)
        entry = suite.build(spec, stack, m)
        bandwidth = machine.measure_bandwidth(device)
        layers = len(entry.calls)
        benchmark.group = f"{suite.op}@{device} N={n} K={k} M={m}"
        info = benchmark.extra_info
        info.update(device=device, device_name=machine.device_name(device), suite=suite.name, entry=spec.name,
                    kind=spec.kind, backend=spec.backend, isa=spec.isa, amx=spec.amx,
                    dtype=str(spec.dtype or stack.dtype), N=n, K=k, M=m, layers=layers, bytes=entry.bytes,
                    ops=entry.ops, bandwidth_Bps=bandwidth, floor_us=entry.bytes / bandwidth * 1e6)
        with spec.switches():
            if device == "cpu":
                # a short warm-up, then single-layer calls cycling through the stack
                fn = timing.cycle(entry.calls)
                rounds = timing.plan_rounds(timing.warm_up(fn, layers, budget), budget)
                benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
                calls_per_round = 1
                info["timing"] = "single layer calls cycling through the stack"
            else:
                step = timing.stack_pass(entry.calls)

                def eager():
                    step()
                    torch.cuda.synchronize()

                timed, calls_per_round = eager, layers
                info["timing"] = "one pass over the stack + synchronize"
                if m <= timing.GPU_GRAPH_MAX_M:  # small M: replay a CUDA graph, launch overhead removed
                    graph, reps, error = timing.try_graph(step, layers)
                    if graph is None:  # not capturable: time the eager passes, say why
                        info["graph_error"] = error
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
        row = runner.base_row(suite, spec, stack, m)
        _ROWS.append(runner.ok_row(row, entry, {"time_us": per_layer_us, "timing": info["timing"]}, bandwidth))
        return info

    return run


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _ROWS:
        return
    bw = {d: machine.measure_bandwidth(d) for d in {r["device"] for r in _ROWS}}
    terminalreporter.write_sep("=", "slimkernels: per-layer medians, speed-up = anchor / ours (same run)")
    terminalreporter.write_line(table.format_table(_ROWS, bw))
