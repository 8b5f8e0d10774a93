"""End-to-end layers: QuantLinear vs float nn.Linear vs FBGEMM dynamic int8, per layer.

Each case cycles through a stack of layers with distinct weights whose int8 copies exceed the
last-level cache (CPU: 8 x 4096x4096 = 134 MB in fp32; GPU: several times L2), so that every call
reads its weight from memory, as BENCHMARKING.md demands; the reported time is per layer.

ours    QuantLinear "w8a8" (per-token activation quantization + int8 GEMM with fused epilogue) and
        "w8a16" (int8 weights, float activations), through the default dispatch (what a user gets;
        the implementation chosen is in the test id).
CPU     fp32 nn.Linear (MKL); FBGEMM dynamic int8 (quantize_dynamic, qint8, with bias).
GPU     bf16 nn.Linear (cuBLAS); activations bf16 for every entry.
"""
SUITE = "quant_linear"


def test_quant_linear(benchmark, case, run_bench):
    run_bench(benchmark, case)
