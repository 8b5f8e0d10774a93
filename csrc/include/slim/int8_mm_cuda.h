// slimkernels CUDA: W8A8 int8 GEMM with a fused dequantizing epilogue.
//
// Plain declarations only (no <cuda_runtime.h>): csrc/bind/cuda_*.cpp is compiled by the host compiler.
// The stream is a cudaStream_t passed as void* (0 = the legacy default stream).
//
//   out[m, n] = sum_k a[m, k] * b[n, k]            (out = a @ b.T, exact int32 accumulation)
//
// a    int8 [M, K] row-major, row stride lda (elements = bytes)
// b    int8 [N, K] row-major, row stride ldb
// out  [M, N] row-major, row stride ldc (elements of the output type)
//
// Requirements (checked; violations throw std::invalid_argument naming the argument):
//   0 <= M, N, K < 2^30, K % 16 == 0, lda % 16 == 0, ldb % 16 == 0, lda >= K, ldb >= K, ldc >= N,
//   a and b 16-byte aligned (when M, N and K are all > 0),
//   out aligned to its element size; a_scale and b_scale non-null for the float kinds.
// M and N are arbitrary (M == 0 or N == 0 is a no-op); K == 0 gives acc = 0.
// No workspace: the small-M path splits K across the warps of one CTA and reduces in shared memory.
//
// Tile configurations (mma.sync m16n8k32, cp.async pipeline; see csrc/cuda/int8_mm.cu):
//   small  16x32,  BK 256, 4 warps splitting K, 5 stages   M <= 16
//   mid    64x32,  BK 128, 2x1 warps x 2 K-groups, 6 stages 16 < M <= 64, or larger tiles underfill
//   wide   128x64, BK 64,  2x2 warps, 4 stages            M > 64 and >= 3/4 wave of these tiles
//   large  128x128, BK 64, 2x4 warps, 4 stages            M > 64 and >= 3/4 wave of these tiles
// (largest tile that fills 3/4 of the SMs wins). All fit 99 KB of shared memory (sm_86/sm_89).
//
// Epilogue (out_kind):
//   Int32    out = acc                                         (a_scale, b_scale, bias ignored)
//   Float32 / Float16 / BFloat16:
//            v = ((float(acc) * a_scale[m]) * b_scale[n]) + bias[n]   (bias == nullptr: no add)
//            each operation float32 round-to-nearest-even, no FMA contraction; then an RNE
//            conversion to the output type. a_scale [M], b_scale [N], bias [N] are float32.
//
// Errors from the CUDA runtime (no GPU, no driver, launch failure) throw std::runtime_error with
// cudaGetErrorString.
#pragma once

#include <cstdint>

namespace slim {

enum class Int8MmOutKind : int { Int32 = 0, Float32 = 1, Float16 = 2, BFloat16 = 3 };

void int8_mm_cuda(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t M, int64_t N,
                  int64_t K, void* out, int64_t ldc, Int8MmOutKind out_kind, const float* a_scale,
                  const float* b_scale, const float* bias, void* stream);

// Name of the tile configuration the launcher picks for this shape on the current device
// ("small", "mid" or "large"); for tests and benchmarks. Throws like int8_mm_cuda when there
// is no device.
const char* int8_mm_cuda_config(int64_t M, int64_t N, int64_t K);

}  // namespace slim
