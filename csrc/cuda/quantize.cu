// slimkernels CUDA: dynamic per-token symmetric int8 quantization.
// Contract: csrc/include/slim/quantize_cuda.h.
//
// One warp per row, kWarpsPerBlock rows per block. Pass 1 reads the row for amax (16-byte loads
// when aligned); pass 2 re-reads it (L1/L2-resident) and writes q. All math in float32 with explicit
// round-to-nearest intrinsics so the result is bit-exact with torch.round(x.float() / scale).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <climits>
#include <cstdint>
#include <cstring>
#include <string>

#include "slim/common_cuda.h"
#include "slim/quantize_cuda.h"

namespace slim {
namespace {

using cuda_detail::check;
using cuda_detail::throw_invalid;

constexpr int kWarpsPerBlock = 4;

using cuda_detail::to_float;

// clamp(rint(x / scale), -127, 127); cvt.rni saturates +-inf to INT_MAX/INT_MIN, NaN to 0.
__device__ __forceinline__ int8_t quantize_one(float x, float scale) {
  const int v = __float2int_rn(__fdiv_rn(x, scale));
  return static_cast<int8_t>(max(-127, min(127, v)));
}

template <typename T, bool kVec>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    quantize_per_token_int8_kernel(const T* __restrict__ x, int64_t ldx, int M, int K, int8_t* __restrict__ q,
                                   int64_t ldq, float* __restrict__ scale) {
  constexpr int V = 16 / sizeof(T);  // elements per 16-byte vector
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= M) return;  // whole warp leaves together
  const T* xr = x + row * ldx;
  int8_t* qr = q + row * ldq;

  // ---- pass 1: amax, and whether any element is inf/NaN (fmaxf drops NaN, so track it apart) ----
  float amax = 0.0f;
  bool bad = false;
  const int nvec = kVec ? K / V : 0;
  if constexpr (kVec) {
    const uint4* xv = reinterpret_cast<const uint4*>(xr);
    for (int i = lane; i < nvec; i += 32) {
      const uint4 u = __ldg(xv + i);
      T e[V];
      memcpy(e, &u, sizeof(u));
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float f = fabsf(to_float(e[j]));
        amax = fmaxf(amax, f);
        bad |= !(f <= FLT_MAX);
      }
    }
  }
  for (int k = nvec * V + lane; k < K; k += 32) {
    const float f = fabsf(to_float(xr[k]));
    amax = fmaxf(amax, f);
    bad |= !(f <= FLT_MAX);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  bad = __any_sync(0xffffffffu, bad);

  float s;
  bool zero_row;
  if (bad) {
    s = __int_as_float(0x7fc00000);  // quiet NaN
    zero_row = true;
  } else if (amax == 0.0f) {
    s = 1.0f;
    zero_row = true;
  } else {
    s = __fdiv_rn(amax, 127.0f);
    zero_row = false;
  }
  if (lane == 0) scale[row] = s;

  // ---- pass 2: q ----
  if constexpr (kVec) {
    const uint4* xv = reinterpret_cast<const uint4*>(xr);
    for (int i = lane; i < nvec; i += 32) {
      int8_t o[V];
      if (zero_row) {
#pragma unroll
        for (int j = 0; j < V; ++j) o[j] = 0;
      } else {
        const uint4 u = __ldg(xv + i);
        T e[V];
        memcpy(e, &u, sizeof(u));
#pragma unroll
        for (int j = 0; j < V; ++j) o[j] = quantize_one(to_float(e[j]), s);
      }
      // V bytes at qr + i*V: q and ldq are 16-byte aligned on this path, so this is V-aligned.
      if constexpr (V == 4) {
        uint32_t w;
        memcpy(&w, o, 4);
        *reinterpret_cast<uint32_t*>(qr + static_cast<int64_t>(i) * V) = w;
      } else {
        uint2 w;
        memcpy(&w, o, 8);
        *reinterpret_cast<uint2*>(qr + static_cast<int64_t>(i) * V) = w;
      }
    }
  }
  for (int k = nvec * V + lane; k < K; k += 32) qr[k] = zero_row ? int8_t(0) : quantize_one(to_float(xr[k]), s);
}

template <typename T>
void launch(const void* x, int64_t ldx, int64_t M, int64_t K, int8_t* q, int64_t ldq, float* scale,
            cudaStream_t stream) {
  using cuda_detail::aligned_to;
  const bool vec = aligned_to(x, 16) && (ldx * static_cast<int64_t>(sizeof(T))) % 16 == 0 && aligned_to(q, 16) &&
                   ldq % 16 == 0;
  const int64_t blocks = (M + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const dim3 grid(static_cast<unsigned>(blocks));
  const dim3 block(32 * kWarpsPerBlock);
  const T* xt = static_cast<const T*>(x);
  if (vec) {
    quantize_per_token_int8_kernel<T, true><<<grid, block, 0, stream>>>(xt, ldx, static_cast<int>(M),
                                                                        static_cast<int>(K), q, ldq, scale);
  } else {
    quantize_per_token_int8_kernel<T, false><<<grid, block, 0, stream>>>(xt, ldx, static_cast<int>(M),
                                                                         static_cast<int>(K), q, ldq, scale);
  }
  check(cudaGetLastError(), "quantize_per_token_int8 kernel launch");
}

}  // namespace

void quantize_per_token_int8_cuda(const void* x, int64_t ldx, int64_t M, int64_t K, FloatKind x_kind, int8_t* q,
                                  int64_t ldq, float* scale, void* stream) {
  using cuda_detail::aligned_to;
  if (M < 0 || M >= (int64_t(1) << 30)) throw_invalid("quantize_per_token_int8: M must be in [0, 2^30), got " + std::to_string(M));
  if (K < 0 || K >= (int64_t(1) << 30)) throw_invalid("quantize_per_token_int8: K must be in [0, 2^30), got " + std::to_string(K));
  if (ldx < K) throw_invalid("quantize_per_token_int8: ldx must be >= K, got " + std::to_string(ldx));
  if (ldq < K) throw_invalid("quantize_per_token_int8: ldq must be >= K, got " + std::to_string(ldq));
  const int ik = static_cast<int>(x_kind);
  if (ik < 0 || ik > 2) throw_invalid("quantize_per_token_int8: x_kind out of range");
  if (M == 0) return;
  const size_t esize = x_kind == FloatKind::Float32 ? 4 : 2;
  if (scale == nullptr || !aligned_to(scale, 4)) throw_invalid("quantize_per_token_int8: scale must be a non-null float32 pointer");
  if (K > 0) {
    if (x == nullptr || !aligned_to(x, esize)) throw_invalid("quantize_per_token_int8: x must be non-null and aligned to its element size");
    if (q == nullptr) throw_invalid("quantize_per_token_int8: q is null");
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (x_kind) {
    case FloatKind::Float32: launch<float>(x, ldx, M, K, q, ldq, scale, s); break;
    case FloatKind::Float16: launch<__half>(x, ldx, M, K, q, ldq, scale, s); break;
    case FloatKind::BFloat16: launch<__nv_bfloat16>(x, ldx, M, K, q, ldq, scale, s); break;
  }
}

}  // namespace slim
