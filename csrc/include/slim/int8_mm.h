// int8 x int8 -> int32 GEMM on the CPU packed weight layout (slimkernels/quant/packing.py,
// pack_int8_cpu), with a fused epilogue: int32, or float(acc) * a_scale[m] * b_scale[n] (+ bias[n])
// rounded to float32 / float16 / bfloat16.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "slim/cpu_isa.h"

namespace slim {

enum class OutKind { kInt32 = 0, kFloat32 = 1, kFloat16 = 2, kBFloat16 = 3 };
OutKind parse_out_kind(const std::string& name, const char* arg_name);

struct Int8MmArgs {
  const int8_t* a;        // [M, K] row-major, row stride lda (elements)
  int64_t lda;
  const int8_t* packed;   // pack_int8_cpu(b) for b [N, K]
  int64_t M, N, K;
  void* out;              // [M, N] row stride ldc, element type per out_kind
  int64_t ldc;
  OutKind out_kind;
  const float* a_scale;   // [M]  (float outputs only)
  const float* b_scale;   // [N]  (float outputs only)
  const float* bias;      // [N] or nullptr
};

// Validates (std::invalid_argument naming the argument), then runs on up to num_threads threads.
// amx: whether the AMX-INT8 kernel (int8_mm_amx.cpp) replaces the avx512_vnni one (or the
// avx512_bf16 tier's): kAuto from kInt8AmxMinM rows on where amx_int8_supported(), kOn at every M
// (std::invalid_argument where AMX-INT8 is not usable), kOff never. Same results either way.
void int8_mm(const Int8MmArgs& args, int num_threads, CpuIsa isa, CpuAmx amx = CpuAmx::kAuto);

// Per-ISA kernels. Arguments are already validated.
// stage: converts all M rows of a once per call into the kernel's activation format (row stride
//   Kp = K rounded up to 4, zero-padded), into `staged` of at least stage_bytes(M, K) bytes.
// block: rows [m0, m1) x 16-column panels [p0, p1), full K, epilogue included; any thread.
size_t int8_mm_stage_bytes_scalar(int64_t M, int64_t K);
void int8_mm_stage_scalar(const Int8MmArgs& g, void* staged);
void int8_mm_block_scalar(const Int8MmArgs& g, const void* staged, int64_t m0, int64_t m1, int64_t p0, int64_t p1);
#ifdef SLIM_X86
size_t int8_mm_stage_bytes_avx2(int64_t M, int64_t K);
void int8_mm_stage_avx2(const Int8MmArgs& g, void* staged);
void int8_mm_block_avx2(const Int8MmArgs& g, const void* staged, int64_t m0, int64_t m1, int64_t p0, int64_t p1);
size_t int8_mm_stage_bytes_avx512_vnni(int64_t M, int64_t K);
void int8_mm_stage_avx512_vnni(const Int8MmArgs& g, void* staged);
void int8_mm_block_avx512_vnni(const Int8MmArgs& g, const void* staged, int64_t m0, int64_t m1, int64_t p0,
                               int64_t p1);
#endif
// Rows per AMX step (two 16-row A tiles): the unit of the M split, m0 a multiple of it.
constexpr int64_t kInt8AmxRows = 32;
// Rows of a from which kAuto takes the AMX kernel (measured: bench/results/2026-11-30-w8a8-amx.md).
constexpr int64_t kInt8AmxMinM = 4;
#ifdef SLIM_AMX
// Staged activations: whole 16-row x 64-k A tiles, M rounded to 32 and K to 64 with zeros.
size_t int8_mm_stage_bytes_amx(int64_t M, int64_t K);
void int8_mm_stage_amx(const Int8MmArgs& g, void* staged);
void int8_mm_block_amx(const Int8MmArgs& g, const void* staged, int64_t m0, int64_t m1, int64_t p0, int64_t p1);
#endif

}  // namespace slim
