"""int8 GEMM with fused dequantize epilogue: ours vs the anchors of BENCHMARKING.md, per layer.

ours    slimkernels.ops.int8_scaled_mm_packed on a weight from ops.int8_prepack, once per
        implementation usable on the device (slimkernels.backends.implementations; the pure-torch
        reference only on small problems). Activations are quantized beforehand: GEMM + epilogue.
CPU     fp32 F.linear (MKL); FBGEMM dynamic int8 (torch.ao quantize_dynamic, qint8, no bias; it
        quantizes its activations inside the call).
GPU     bf16 F.linear (cuBLAS); torch._int_mm (int8 GEMM, int32 out, no epilogue; skipped M <= 16).

Cases, weight stacks and byte counts come from slimkernels/bench.py; see bench/README.md.
"""
SUITE = "int8_mm"


def test_int8_scaled_mm_packed(benchmark, case, run_bench):
    run_bench(benchmark, case)
