// Symmetric per-row (per-token / per-output-channel) int8 quantization:
// scale = amax / qmax (NaN when the row holds NaN/Inf, 1 when it is all zero),
// q = clamp(rint(x / scale), -qmax, qmax) with a true float32 division, round half to even.
// qmax = 127 (int8), or 63 for 7-bit activations (W8A8 act_bits=7: the AVX2 GEMM's vpmaddubsw path).
#pragma once
#include <cstdint>
#include <string>

#include "slim/cpu_isa.h"

namespace slim {

enum class InKind { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };
InKind parse_in_kind(const std::string& name, const char* arg_name);

struct QuantizeArgs {
  const void* x;   // [M, K] row stride ldx (elements), type per x_kind
  int64_t ldx;
  int64_t M, K;
  InKind x_kind;
  int8_t* q;       // [M, K] row stride ldq
  int64_t ldq;
  float* scale;    // [M]
  int qmax = 127;  // 1..127
};

void quantize_per_token_int8(const QuantizeArgs& args, int num_threads, CpuIsa isa);

// Per-ISA row kernels: rows [m0, m1).
void quantize_rows_scalar(const QuantizeArgs& g, int64_t m0, int64_t m1);
#ifdef SLIM_X86
void quantize_rows_avx2(const QuantizeArgs& g, int64_t m0, int64_t m1);
void quantize_rows_avx512_vnni(const QuantizeArgs& g, int64_t m0, int64_t m1);
#endif

}  // namespace slim
