// slimkernels CUDA: dynamic per-token (per-row) symmetric int8 quantization.
//
// Plain declarations only (no <cuda_runtime.h>): csrc/bind/cuda_*.cpp is compiled by the host compiler.
//
// x     [M, K] row-major, row stride ldx (elements), element type x_kind
// q     int8 [M, K] row-major, row stride ldq
// scale float32 [M]
//
// Per row, in float32:
//   amax = max_k |x[m, k]|
//   amax not finite (inf or NaN anywhere in the row)  -> scale = NaN, q row = 0
//   amax == 0                                        -> scale = 1,   q row = 0
//   otherwise scale = amax / 127 (IEEE division, RNE) and
//             q = clamp(rint(x / scale), -127, 127)   (IEEE division, round half to even)
// which is bit-exact with torch.round(x.float() / scale).clamp(-127, 127).
//
// Requirements (checked, std::invalid_argument): 0 <= M, K < 2^30, ldx >= K, ldq >= K, x aligned to its element
// size. 16-byte vector loads are used when x, q, ldx*sizeof(x) and ldq are 16-byte aligned;
// otherwise a scalar path runs. M == 0 is a no-op.
#pragma once

#include <cstdint>

namespace slim {

enum class FloatKind : int { Float32 = 0, Float16 = 1, BFloat16 = 2 };

void quantize_per_token_int8_cuda(const void* x, int64_t ldx, int64_t M, int64_t K, FloatKind x_kind,
                                  int8_t* q, int64_t ldq, float* scale, void* stream);

}  // namespace slim
