// slimkernels CUDA: weight-only low-bit matmul (W4A16 int4 group-wise, 2/3/4-bit codebooks).
//
// Plain declarations only (no <cuda_runtime.h>): csrc/bind/cuda_*.cpp is compiled by the host compiler.
// The stream is a cudaStream_t passed as void* (0 = the legacy default stream).
//
// Weights come in the canonical layouts of slimkernels/quant/lowbit.py, contiguous:
//   codes     uint8 [N, ceil(K * bits / 8)], a little-endian bit stream per row (code k at bits
//             [k*bits, k*bits + bits) of its row; for int4, byte j = k 2j (low nibble), 2j+1 (high))
//   int4      scales float32 [N, G], zeros uint8 [N, G] or nullptr (zero point 8), G = K / group_size,
//             w[n, k] = (q - z[n, k / g]) * s[n, k / g]  in float32
//   codebook  float32 [R, 2^bits] with R = 1 (per layer) or R = N (per row), w[n, k] = cb[R == N ? n : 0][q]
//
// Two kernels per format (csrc/cuda/lowbit.cu):
//   *_gemv_cuda       out[m, n] = sum_k x[m, k] * w[n, k] + bias[n], for 1 <= M <= kLowbitGemvMaxM:
//                     weights streamed once, dequantized in registers, float32 accumulation, result
//                     converted (RNE) to x's type. bias float32 [N] or nullptr.
//   dequantize_*_cuda w[n, k] (float32, converted RNE to w_kind) into a caller-allocated [N, K]
//                     buffer (row stride ldw): the large-M path (then a dense GEMM by the caller).
//
// Requirements (checked, std::invalid_argument naming the argument):
//   0 <= M, N, K < 2^30; group_size == K, or a positive multiple of 32 dividing K; bits in {2, 3, 4};
//   codebook_rows 1 or N; ldx >= K (x has unit stride along K); ldo >= N; ldw >= K; pointers
//   non-null where read and aligned to their element size. M == 0, N == 0 or K == 0 are no-ops
//   (K == 0 leaves out untouched: callers answer empty problems themselves).
// Errors from the CUDA runtime throw std::runtime_error with cudaGetErrorString.
#pragma once

#include <cstdint>

#include "slim/quantize_cuda.h"  // FloatKind

namespace slim {

// Largest M the GEMV kernels take (compile-time tile of activation rows).
constexpr int64_t kLowbitGemvMaxM = 8;

void dequant_mm_int4_gemv_cuda(const void* x, int64_t ldx, int64_t M, int64_t K, FloatKind x_kind,
                               const uint8_t* qweight, const float* scales, const uint8_t* zeros,
                               int64_t group_size, int64_t N, const float* bias, void* out, int64_t ldo,
                               void* stream);

void lut_mm_gemv_cuda(const void* x, int64_t ldx, int64_t M, int64_t K, FloatKind x_kind, const uint8_t* indices,
                      const float* codebook, int64_t codebook_rows, int64_t bits, int64_t N, const float* bias,
                      void* out, int64_t ldo, void* stream);

void dequantize_int4_cuda(const uint8_t* qweight, const float* scales, const uint8_t* zeros, int64_t group_size,
                          int64_t N, int64_t K, void* w, int64_t ldw, FloatKind w_kind, void* stream);

void dequantize_codebook_cuda(const uint8_t* indices, const float* codebook, int64_t codebook_rows, int64_t bits,
                              int64_t N, int64_t K, void* w, int64_t ldw, FloatKind w_kind, void* stream);

}  // namespace slim
