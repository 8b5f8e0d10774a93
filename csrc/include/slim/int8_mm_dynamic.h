// W8A8 dynamic linear in one native call: per-token int8 quantization of the float activations
// into a per-thread scratch buffer, then the int8 GEMM with the fused dequantize epilogue, output
// in the activations' float type. The same math as quantize_per_token_int8 + int8_mm, minus the
// Python round trips and allocations between them (which cost more than the quantization at small M).
#pragma once
#include <cstdint>

#include "slim/cpu_isa.h"
#include "slim/quantize.h"

namespace slim {

struct Int8DynamicLinearArgs {
  const void* x;         // [M, K] row stride ldx, float type per x_kind
  int64_t ldx;
  InKind x_kind;         // also the output type
  const int8_t* packed;  // pack_int8_cpu(w) for w [N, K]
  const float* w_scale;  // [N]
  const float* bias;     // [N] or nullptr
  int64_t M, N, K;
  void* out;             // [M, N] row stride ldc
  int64_t ldc;
  int act_qmax = 127;    // activations to |q| <= act_qmax: 127, or 63 (7-bit, act_bits=7)
};

// amx: as int8_mm's.
void int8_dynamic_linear(const Int8DynamicLinearArgs& args, int num_threads, CpuIsa isa, CpuAmx amx = CpuAmx::kAuto);

}  // namespace slim
