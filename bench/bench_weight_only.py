"""Low-bit weight-only layers: QuantLinear w4a16 (int4 g128) and 4-bit codebook against float
nn.Linear, torch's int4 weight-only kernel (tinygemm) and the int8 paths, per layer.

The same stacks and method as bench_quant_linear.py (weights beyond the last-level cache, one run,
ratios against anchors timed in it); the entries are defined in slimkernels/bench.py, suite
"weight_only".
"""
SUITE = "weight_only"


def test_weight_only(benchmark, case, run_bench):
    run_bench(benchmark, case)
