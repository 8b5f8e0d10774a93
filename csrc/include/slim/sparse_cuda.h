// slimkernels CUDA: 2:4 semi-structured sparse matmul on the sparse tensor cores (mma.sp, sm_80+).
//
// Plain declarations only (no <cuda_runtime.h>): csrc/bind/cuda_*.cpp is compiled by the host compiler.
// The stream is a cudaStream_t passed as void* (0 = the legacy default stream).
//
// The weight W [N, K] comes in the canonical 2:4 layout of slimkernels/quant/sparse.py, contiguous, as
// stored (no device layout):
//   values   [N, K/2] (float32, float16, bfloat16 or int8): the two kept values of each group of 4 columns
//   indices  uint8 [N, ceil(K/8)]: their in-group positions p0 < p1, 2 bits each, a little-endian bit stream
//            per row, so group t of a row is the nibble p0 | p1 << 2 at bits [4t, 4t + 4): exactly the
//            mma.sp metadata nibble of that group
//   scales   float32 [N] for int8 values (w = value * scales[n]), else nullptr
//
// spmm_24_cuda: out[m, n] = sum_k x[m, k] * W[n, k] (* scales[n]) + bias[n] for float16 / bfloat16 x
// (float32 x has no 2:4 tensor-core path: the caller routes it elsewhere). Values are converted to x's
// type in registers (int8 exactly; float32 rounded), products accumulate in float32, and the result is
// rounded once to x's type. bias float32 [N] or nullptr.
//
// Requirements (checked, std::invalid_argument naming the argument): 0 <= M, N, K < 2^30; K % 4 == 0;
// ldx >= K (x has unit stride along K); ldo >= N; pointers non-null where read and aligned to their
// element size (values: to two elements). M == 0 or N == 0 is a no-op; K == 0 writes bias (or 0).
// Errors from the CUDA runtime throw std::runtime_error.
#pragma once

#include <cstdint>

#include "slim/quantize_cuda.h"  // FloatKind

namespace slim {

enum class SparseValueKind { Float32, Float16, BFloat16, Int8 };

void spmm_24_cuda(const void* x, int64_t ldx, int64_t M, int64_t K, FloatKind x_kind, const void* values,
                  SparseValueKind value_kind, const uint8_t* indices, const float* scales, int64_t N,
                  const float* bias, void* out, int64_t ldo, void* stream);

}  // namespace slim
