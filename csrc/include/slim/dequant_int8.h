// W8A16 (weight-only int8) matmul on the CPU:
//   y[m, n] = (sum_k x[m, k] * w[n, k]) * scale[n] + bias[n]
// x float32 / float16 / bfloat16 [M, K] (row stride ldx), w int8 [N, K] row-major plain (row stride
// ldw; the QuantLinear `qweight` buffer as is), scale float32 [N], bias float32 [N] or null,
// y [M, N] in x's kind (row stride ldy). float32 accumulation, round-to-nearest-even output.
#pragma once
#include <cstddef>
#include <cstdint>

#include "slim/cpu_convert.h"
#include "slim/cpu_isa.h"
#include "slim/lowbit.h"  // CpuAmx, amx_chosen: the one AMX switch of the weight-only kernels
#include "slim/quantize.h"  // InKind, parse_in_kind

namespace slim {

struct DequantInt8Args {
  const void* x;      // [M, K] row stride ldx (elements), type per x_kind
  int64_t ldx;
  InKind x_kind;      // also the kind of y
  const int8_t* w;    // [N, K] row stride ldw
  int64_t ldw;
  const float* scale; // [N]
  const float* bias;  // [N] or nullptr
  void* y;            // [M, N] row stride ldy
  int64_t ldy;
  int64_t M, N, K;
};

// Validates (std::invalid_argument naming the argument), then runs on up to num_threads threads;
// amx: as for lowbit_mm (AMX-BF16 tiles from kDequantInt8AmxMinM rows of x under kAuto).
void dequant_mm_int8(const DequantInt8Args& args, int num_threads, CpuIsa isa, CpuAmx amx = CpuAmx::kAuto);
// Measured on 4096 x 4096 (bench/results/2026-11-30-weight-only-amx.md): the float32-exact tiles (three
// pieces of float32 x, int8 weights exact in bfloat16) lose to the AVX-512 kernel at M = 8 (0.8x) and
// win from 16 (1.15x; 1.65x at 32).
constexpr int64_t kDequantInt8AmxMinM = 16;

// Per-ISA kernels; arguments already validated, K > 0.
// convert: rows [m0, m1) of x -> float32 xf (row stride ldxf).
// block: output rows [m0, m1) x columns [n0, n1), full K, epilogue included, reading activations
//   from xf (float32, row stride ldxf); callable from any thread.
void dequant_int8_convert_scalar(const DequantInt8Args& g, float* xf, int64_t ldxf, int64_t m0, int64_t m1);
void dequant_int8_block_scalar(const DequantInt8Args& g, const float* xf, int64_t ldxf, int64_t m0, int64_t m1,
                               int64_t n0, int64_t n1);
#ifdef SLIM_X86
void dequant_int8_convert_avx2(const DequantInt8Args& g, float* xf, int64_t ldxf, int64_t m0, int64_t m1);
void dequant_int8_block_avx2(const DequantInt8Args& g, const float* xf, int64_t ldxf, int64_t m0, int64_t m1,
                             int64_t n0, int64_t n1);
void dequant_int8_convert_avx512_vnni(const DequantInt8Args& g, float* xf, int64_t ldxf, int64_t m0, int64_t m1);
void dequant_int8_block_avx512_vnni(const DequantInt8Args& g, const float* xf, int64_t ldxf, int64_t m0, int64_t m1,
                                    int64_t n0, int64_t n1);
#endif
#ifdef SLIM_AVX512_BF16
// isa kAvx512Bf16 (dequant_int8_avx512_bf16.cpp): bf16 dot products. convert: rows [m0, m1) of x ->
// bf16 xb (row stride ldxb, a multiple of 32, zero past K). block: as above, reading xb.
// Register tile: kDequantInt8Bf16MR rows of x x kDequantInt8Bf16NR weight rows (the unit of the N split).
constexpr int kDequantInt8Bf16MR = 6, kDequantInt8Bf16NR = 4;
void dequant_int8_convert_avx512_bf16(const DequantInt8Args& g, uint16_t* xb, int64_t ldxb, int64_t m0, int64_t m1);
void dequant_int8_block_avx512_bf16(const DequantInt8Args& g, const uint16_t* xb, int64_t ldxb, int64_t m0,
                                    int64_t m1, int64_t n0, int64_t n1);
#endif

#ifdef SLIM_AMX
// The AMX path (dequant_int8_amx.cpp on amx_tiles.h); round: x rounded to bfloat16 (isa
// kAvx512Bf16's numerics), else float32-exact. Arguments already validated, K > 0.
void dequant_int8_amx_mm(const DequantInt8Args& g, bool round, int num_threads);
#endif

namespace {
// y[m, n] = acc * scale[n] + bias[n] rounded to y's kind (internal linkage: see cpu_convert.h).
inline void dequant_int8_store(const DequantInt8Args& g, int64_t m, int64_t n, float acc) {
  float v = acc * g.scale[n];
  if (g.bias) v += g.bias[n];
  store_as(g.y, g.x_kind, m * g.ldy + n, v);
}
}  // namespace

}  // namespace slim
