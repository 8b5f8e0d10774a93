// slimkernels CUDA: 2:4 semi-structured sparse matmul on the sparse tensor cores.
// Contract: csrc/include/slim/sparse_cuda.h. Reads the canonical layout of quant/sparse.py directly.
//
// y = x @ W.T is computed as y.T = W @ x.T so that the sparse operand of mma.sp is W:
//   mma.sp.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: A = 16 weight rows x 16 columns of K (2:4, 8
//   kept values per row), B = 16 columns of K x 8 tokens, D = 16 weight rows x 8 tokens in float32.
//
// Fragments (PTX ISA, "Matrix fragments for sparse mma.m16n8k16 with .f16 and .bf16"; g = lane >> 2,
// t = lane & 3):
//   A  2 x .b32: a0 = kept values (2t, 2t + 1) of row g, a1 = the same of row g + 8. Kept values 2t, 2t + 1
//      are the two of group t (columns 4t .. 4t + 3), so one 32-bit load of the canonical values each.
//   B  2 x .b32: x[token g][k0 + 2t, + 1] and x[token g][k0 + 2t + 8, + 9].
//   D  4 x f32: (row g, tokens 2t, 2t + 1), (row g + 8, tokens 2t, 2t + 1).
//   metadata: one .b32 from lane 4g + sel of each quad (sel = the sparsity selector, 0..3): bits
//      [4c, 4c + 4) hold group c (c = 0..3) of row g, bits [16 + 4c, 16 + 4c + 4) group c of row g + 8; a
//      group's nibble is p0 | p1 << 2. That nibble is exactly the canonical one (group c of a row sits at
//      bits [4c, 4c + 4) of its index stream), so the 16 bits of one row and one k16 step are bytes
//      2 * step, 2 * step + 1 of the row's indices: the metadata is built with two byte loads per row.
//
// Work split. A block of kWarps warps owns 16 weight rows and 8 * MT tokens; its warps share K out in
// chunks of kChunk = 64 columns (4 k16 steps; warp w takes chunks w, w + kWarps, ...). In a chunk, lane
// 4g + t builds the metadata of step t, so the 4 steps use sparsity selectors 0, 1, 2, 3 and each lane
// loads one metadata word per chunk. The warps' float32 partial tiles are summed in shared memory in a
// fixed order (deterministic), then scale, bias and the rounding to x's type. Token tiles beyond
// gridDim.y are walked by a grid-stride loop.
//
// Tails: rows >= N and groups past K read as zero values with metadata 0b0100 (positions 0, 1: a valid
// pattern; 0b0000 is not), x past K or M as zero, so every mma is well defined and nothing out of
// bounds is read. Not yet tuned (no cp.async staging, no ldmatrix): measured when a GPU session runs
// bench/gpu_session.sh.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "slim/common_cuda.h"
#include "slim/sparse_cuda.h"

namespace slim {
namespace {

using cuda_detail::aligned_to;
using cuda_detail::check;
using cuda_detail::throw_invalid;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kRows = 16;         // weight rows per block (the mma's M)
constexpr int kChunk = 64;        // columns of K per warp step (4 mma k16 steps)
constexpr int64_t kMaxDim = int64_t(1) << 30;
constexpr uint32_t kPadNibble = 0x4;  // positions (0, 1): metadata of a zero group

// ------------------------------------------------------------------------------------------------
// Register helpers
// ------------------------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

using cuda_detail::to_float;

// Kept values kc, kc + 1 of a row (kc even) as two T in one register; 0 past the row (kept = K / 2 is
// even, so kc < kept covers both). V == T: the bits as stored; else through float32 (int8 exactly).
template <typename T, typename V>
__device__ __forceinline__ uint32_t load_value_pair(const V* __restrict__ row, int64_t kc, int64_t kept, bool valid) {
  if (!valid || kc >= kept) return 0u;
  if constexpr (std::is_same<V, T>::value) {
    return __ldg(reinterpret_cast<const uint32_t*>(row + kc));
  } else if constexpr (std::is_same<V, float>::value) {
    const float2 f = __ldg(reinterpret_cast<const float2*>(row + kc));
    return pack2<T>(f.x, f.y);
  } else if constexpr (std::is_same<V, int8_t>::value) {
    const char2 c = __ldg(reinterpret_cast<const char2*>(row + kc));
    return pack2<T>(static_cast<float>(c.x), static_cast<float>(c.y));
  } else {  // the other 16-bit float type
    const uint32_t bits = __ldg(reinterpret_cast<const uint32_t*>(row + kc));
    V pair[2];
    memcpy(pair, &bits, sizeof(bits));
    return pack2<T>(to_float(pair[0]), to_float(pair[1]));
  }
}

// x[k], x[k + 1] of one token row (k even; K even, so k < K covers both); 0 past K or for m >= M.
template <typename T>
__device__ __forceinline__ uint32_t load_x_pair(const T* __restrict__ xrow, int64_t k, int64_t K, bool valid,
                                                bool vec) {
  if (!valid || k >= K) return 0u;
  if (vec) return __ldg(reinterpret_cast<const uint32_t*>(xrow + k));
  const unsigned short lo = __ldg(reinterpret_cast<const unsigned short*>(xrow + k));
  const unsigned short hi = __ldg(reinterpret_cast<const unsigned short*>(xrow + k + 1));
  return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
}

// The 16 metadata bits of one row for k16 step `step` (groups 4 * step .. 4 * step + 3): bytes 2 * step and
// 2 * step + 1 of the row's indices, with kPadNibble for groups past K (groups = K / 4) and for rows >= N.
__device__ __forceinline__ uint32_t row_metadata(const uint8_t* __restrict__ row, int64_t step, int64_t groups,
                                                 bool valid) {
  if (!valid) return kPadNibble * 0x1111u;
  const int64_t g0 = 4 * step;
  if (g0 + 4 <= groups) return __ldg(row + 2 * step) | (static_cast<uint32_t>(__ldg(row + 2 * step + 1)) << 8);
  uint32_t bits = 0;
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const int64_t grp = g0 + c;
    const uint32_t nib = grp < groups ? (__ldg(row + (grp >> 1)) >> (4 * (grp & 1))) & 0xFu : kPadNibble;
    bits |= nib << (4 * c);
  }
  return bits;
}

// d += A (16x16, 2:4, metadata e from lanes 4g + SEL) * B (16x8), float32 accumulate. CUDA >= 12.5 has
// the ::ordered_metadata form (the one later architectures keep fast); it needs each group's positions in
// increasing order, which the canonical layout guarantees (p0 < p1; the pad nibble is 0, 1).
#if (__CUDACC_VER_MAJOR__ > 12) || (__CUDACC_VER_MAJOR__ == 12 && __CUDACC_VER_MINOR__ >= 5)
#define SLIM_MMA_SP "mma.sp::ordered_metadata.sync.aligned.m16n8k16.row.col.f32."
#else
#define SLIM_MMA_SP "mma.sp.sync.aligned.m16n8k16.row.col.f32."
#endif
template <typename T, int SEL>
__device__ __forceinline__ void mma_sp(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t b0, uint32_t b1,
                                       uint32_t e) {
  if constexpr (std::is_same<T, __half>::value) {
    asm volatile(SLIM_MMA_SP "f16.f16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6, %7}, {%0, %1, %2, %3}, %8, %9;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(b0), "r"(b1), "r"(e), "n"(SEL));
  } else {
    asm volatile(SLIM_MMA_SP "bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6, %7}, {%0, %1, %2, %3}, %8, %9;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(b0), "r"(b1), "r"(e), "n"(SEL));
  }
}
#undef SLIM_MMA_SP

struct Problem {
  const void* x;
  int64_t ldx;
  int M, N, K;
  const void* values;
  const uint8_t* indices;
  const float* scales;
  const float* bias;
  void* out;
  int64_t ldo;
  bool vec_x;  // x rows 4-byte aligned: 32-bit loads of pairs
};

// One k16 step (columns k0 .. k0 + 15) of a warp's 16 x (8 * MT) tile, metadata from lanes 4g + SEL.
template <typename T, typename V, int MT, int SEL>
__device__ __forceinline__ void step(float (&acc)[MT][4], const Problem& p, const V* vrow_lo, const V* vrow_hi,
                                     bool lo_ok, bool hi_ok, const T* const (&xrows)[MT], const bool (&x_ok)[MT],
                                     int64_t k0, int t, uint32_t e) {
  const int64_t kept = p.K / 2;
  const int64_t kc = k0 / 2 + 2 * t;
  const uint32_t a0 = load_value_pair<T, V>(vrow_lo, kc, kept, lo_ok);
  const uint32_t a1 = load_value_pair<T, V>(vrow_hi, kc, kept, hi_ok);
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const uint32_t b0 = load_x_pair<T>(xrows[mt], k0 + 2 * t, p.K, x_ok[mt], p.vec_x);
    const uint32_t b1 = load_x_pair<T>(xrows[mt], k0 + 2 * t + 8, p.K, x_ok[mt], p.vec_x);
    mma_sp<T, SEL>(acc[mt], a0, a1, b0, b1, e);
  }
}

template <typename T, typename V, int MT>
__global__ void __launch_bounds__(kThreads) spmm_24_kernel(Problem p) {
  constexpr int kTokens = 8 * MT;
  __shared__ float partial[kWarps - 1][MT * 4][32];

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int n_lo = blockIdx.x * kRows + g;
  const int n_hi = n_lo + 8;
  const bool lo_ok = n_lo < p.N;
  const bool hi_ok = n_hi < p.N;
  const int64_t kept = p.K / 2;
  const int64_t row_bytes = (p.K + 7) / 8;  // ceil(K/2 * 2 bits / 8)
  const int64_t groups = p.K / 4;
  const V* values = static_cast<const V*>(p.values);
  const V* vrow_lo = values + static_cast<int64_t>(lo_ok ? n_lo : 0) * kept;
  const V* vrow_hi = values + static_cast<int64_t>(hi_ok ? n_hi : 0) * kept;
  const uint8_t* irow_lo = p.indices + static_cast<int64_t>(lo_ok ? n_lo : 0) * row_bytes;
  const uint8_t* irow_hi = p.indices + static_cast<int64_t>(hi_ok ? n_hi : 0) * row_bytes;
  const T* x = static_cast<const T*>(p.x);

  for (int m0 = blockIdx.y * kTokens; m0 < p.M; m0 += gridDim.y * kTokens) {
    const T* xrows[MT];
    bool x_ok[MT];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int m = m0 + mt * 8 + g;
      x_ok[mt] = m < p.M;
      xrows[mt] = x + static_cast<int64_t>(x_ok[mt] ? m : 0) * p.ldx;
    }
    float acc[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][i] = 0.0f;

    for (int64_t c0 = static_cast<int64_t>(warp) * kChunk; c0 < p.K; c0 += kWarps * kChunk) {
      // This lane's metadata word serves step t of the chunk (selector t).
      const int64_t my_step = c0 / 16 + t;
      const uint32_t e =
          row_metadata(irow_lo, my_step, groups, lo_ok) | (row_metadata(irow_hi, my_step, groups, hi_ok) << 16);
      step<T, V, MT, 0>(acc, p, vrow_lo, vrow_hi, lo_ok, hi_ok, xrows, x_ok, c0, t, e);
      if (c0 + 16 < p.K) step<T, V, MT, 1>(acc, p, vrow_lo, vrow_hi, lo_ok, hi_ok, xrows, x_ok, c0 + 16, t, e);
      if (c0 + 32 < p.K) step<T, V, MT, 2>(acc, p, vrow_lo, vrow_hi, lo_ok, hi_ok, xrows, x_ok, c0 + 32, t, e);
      if (c0 + 48 < p.K) step<T, V, MT, 3>(acc, p, vrow_lo, vrow_hi, lo_ok, hi_ok, xrows, x_ok, c0 + 48, t, e);
    }

    // Warps 1.. hand their partial tiles to warp 0, which adds them in warp order.
    if (warp > 0) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int i = 0; i < 4; ++i) partial[warp - 1][mt * 4 + i][lane] = acc[mt][i];
    }
    __syncthreads();
    if (warp == 0) {
#pragma unroll
      for (int w = 0; w < kWarps - 1; ++w)
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int i = 0; i < 4; ++i) acc[mt][i] += partial[w][mt * 4 + i][lane];
      T* out = static_cast<T*>(p.out);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int n = (i < 2 ? n_lo : n_hi);
        if (n >= p.N) continue;
        const float s = p.scales != nullptr ? __ldg(p.scales + n) : 1.0f;
        const float b = p.bias != nullptr ? __ldg(p.bias + n) : 0.0f;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          const int m = m0 + mt * 8 + 2 * t + (i & 1);
          if (m < p.M) out[static_cast<int64_t>(m) * p.ldo + n] = cuda_detail::from_float<T>(acc[mt][i] * s + b);
        }
      }
    }
    __syncthreads();  // partial is rewritten by the next token tile
  }
}

// ------------------------------------------------------------------------------------------------
// Launcher
// ------------------------------------------------------------------------------------------------
template <typename T>
struct Tag {
  using type = T;
};

void check_dim(const char* name, int64_t v) {
  if (v < 0 || v >= kMaxDim)
    throw_invalid(std::string("spmm_24: ") + name + " must be in [0, 2^30), got " + std::to_string(v));
}

size_t value_size(SparseValueKind kind) {
  switch (kind) {
    case SparseValueKind::Float32: return 4;
    case SparseValueKind::Float16:
    case SparseValueKind::BFloat16: return 2;
    case SparseValueKind::Int8: return 1;
  }
  throw_invalid("spmm_24: value kind out of range");
  return 0;
}

template <class F>
void with_value_type(SparseValueKind kind, F&& f) {
  switch (kind) {
    case SparseValueKind::Float32: return f(Tag<float>{});
    case SparseValueKind::Float16: return f(Tag<__half>{});
    case SparseValueKind::BFloat16: return f(Tag<__nv_bfloat16>{});
    case SparseValueKind::Int8: return f(Tag<int8_t>{});
  }
  throw_invalid("spmm_24: value kind out of range");
}

}  // namespace

void spmm_24_cuda(const void* x, int64_t ldx, int64_t M, int64_t K, FloatKind x_kind, const void* values,
                  SparseValueKind value_kind, const uint8_t* indices, const float* scales, int64_t N,
                  const float* bias, void* out, int64_t ldo, void* stream) {
  check_dim("M", M);
  check_dim("N", N);
  check_dim("K", K);
  if (K % 4) throw_invalid("spmm_24: K must be a multiple of 4 (2:4 groups), got " + std::to_string(K));
  if (x_kind != FloatKind::Float16 && x_kind != FloatKind::BFloat16)
    throw_invalid("spmm_24: x must be float16 or bfloat16 (no 2:4 tensor-core path for float32)");
  const size_t vsize = value_size(value_kind);
  if (ldx < K) throw_invalid("spmm_24: ldx must be >= K, got " + std::to_string(ldx));
  if (ldo < N) throw_invalid("spmm_24: ldo must be >= N, got " + std::to_string(ldo));
  if (M == 0 || N == 0) return;
  if (out == nullptr || !aligned_to(out, 2)) throw_invalid("spmm_24: out must be non-null and 2-byte aligned");
  if (bias != nullptr && !aligned_to(bias, 4)) throw_invalid("spmm_24: bias must be 4-byte aligned");
  if (K > 0) {
    if (x == nullptr || !aligned_to(x, 2)) throw_invalid("spmm_24: x must be non-null and 2-byte aligned");
    if (values == nullptr || !aligned_to(values, 2 * vsize))
      throw_invalid("spmm_24: values must be non-null and aligned to two elements");
    if (indices == nullptr) throw_invalid("spmm_24: indices must be non-null");
  }
  if (value_kind == SparseValueKind::Int8) {
    if (scales == nullptr || !aligned_to(scales, 4)) throw_invalid("spmm_24: int8 values need float32 scales");
  } else if (scales != nullptr) {
    throw_invalid("spmm_24: scales go with int8 values only");
  }

  Problem p{};
  p.x = x;
  p.ldx = ldx;
  p.M = static_cast<int>(M);
  p.N = static_cast<int>(N);
  p.K = static_cast<int>(K);
  p.values = values;
  p.indices = indices;
  p.scales = scales;
  p.bias = bias;
  p.out = out;
  p.ldo = ldo;
  p.vec_x = ldx % 2 == 0 && aligned_to(x, 4);

  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const unsigned row_blocks = static_cast<unsigned>((N + kRows - 1) / kRows);
  auto launch = [&](auto act, auto val, auto mt) {
    using T = typename decltype(act)::type;
    using V = typename decltype(val)::type;
    constexpr int MT = decltype(mt)::value;
    const int64_t token_tiles = (M + 8 * MT - 1) / (8 * MT);
    const dim3 grid(row_blocks, static_cast<unsigned>(std::min<int64_t>(token_tiles, 65535)));
    spmm_24_kernel<T, V, MT><<<grid, kThreads, 0, s>>>(p);
  };
  // Token tile: one n8 mma per step for decode, up to four (A fragments reused) for larger M.
  auto with_mt = [&](auto act, auto val) {
    if (M <= 8) return launch(act, val, std::integral_constant<int, 1>{});
    if (M <= 16) return launch(act, val, std::integral_constant<int, 2>{});
    launch(act, val, std::integral_constant<int, 4>{});
  };
  with_value_type(value_kind, [&](auto val) {
    if (x_kind == FloatKind::Float16) with_mt(Tag<__half>{}, val);
    else with_mt(Tag<__nv_bfloat16>{}, val);
  });
  check(cudaGetLastError(), "spmm_24 launch");
}

}  // namespace slim
