"""One pytest-benchmark test per suite of the registry (slimkernels/bench/suites/<family>.py):
`test_<suite>[<device>-<N>x<K>-M<M>-<entry>]`, e.g. test_int8_mm[cpu-4096x4096-M1-ours_native].

Entries, weight stacks and byte counts come from the suite; bench/conftest.py parametrizes and times
them. A suite added to the registry appears here without an edit. See bench/README.md.
"""
from slimkernels.bench import registry


def _benchmark(suite: registry.Suite):
    def test(benchmark, case, run_bench):
        run_bench(benchmark, case)

    test.suite = suite.name
    test.__name__ = test.__qualname__ = f"test_{suite.name}"
    test.__doc__ = suite.description
    return test


for _suite in registry.suites():
    globals()[f"test_{_suite.name}"] = _benchmark(_suite)
del _suite
