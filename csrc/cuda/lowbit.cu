// slimkernels CUDA: weight-only low-bit matmul, int4 group-wise and 2/3/4-bit codebooks.
// Contract: csrc/include/slim/lowbit_cuda.h. Both read the canonical layout directly.
//
// The unit of work is a "span": 32 consecutive codes of one row, which is exactly 4 * BITS whole
// bytes (16 for int4, 8 for 2-bit, 12 for 3-bit) starting at byte 4 * BITS * span. A span never
// crosses an int4 group (group sizes are multiples of 32, or K with a single group), so it has one
// scale and one zero point.
//
// GEMV (M <= 8): a block of kWarps warps owns kRowsPerBlock output rows (kRowsPerWarp per warp) and
// walks K in chunks of kChunk = 32 spans. Per chunk, lane l of a warp handles span (chunk, l) of each
// of its rows: the span's bytes are loaded one chunk ahead into registers (one 16-byte load for
// int4 when rows are 16-byte aligned, byte loads otherwise), x[0..MT) for the chunk is staged in
// shared memory as float32 (zero past K and for m >= M), codes are decoded in registers and FMA'd
// against x, a warp-shuffle reduction finishes each row, the bias is added and the result rounded
// to x's type. int4 uses the exact integer-to-float trick: float(0x4B000000 | q) - (2^23 + z) =
// q - z, and multiplies the span's partial sum by the scale once. Codebooks live in shared memory
// (16 floats per row sit in 16 different banks: lookups never conflict).
//
// Shared x layout: lane l reads its span's 32 floats as 8 float4; stored plainly, the 8 lanes of a
// 128-bit shared-memory phase would read addresses 128 bytes apart (all in banks 0..3, 8-way
// conflict). So float4 q of span l is stored at slot q ^ (l & 7) of the span's 8 slots: 8
// consecutive lanes then hit 8 different 16-byte bank groups.
//
// Dequantize (large M): one thread per 8 codes (BITS whole bytes), written as one or two 16-byte
// stores when the output rows allow it.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "slim/common_cuda.h"
#include "slim/lowbit_cuda.h"

namespace slim {
namespace {

using cuda_detail::aligned_to;
using cuda_detail::check;
using cuda_detail::throw_invalid;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kRowsPerWarp = 2;
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp;
constexpr int kSpan = 32;               // codes per span
constexpr int kChunk = 32 * kSpan;      // codes of K per chunk (one span per lane)
constexpr int64_t kMaxDim = int64_t(1) << 30;
constexpr int kDequantThreads = 256;
constexpr int kDequantCodes = 8;        // codes per dequantize thread

// ------------------------------------------------------------------------------------------------
// Weight description shared by the kernels
// ------------------------------------------------------------------------------------------------
struct LowbitWeights {
  const uint8_t* codes;   // [N, row_bytes]
  int64_t row_bytes;
  const float* scales;    // int4: [N, groups]
  const uint8_t* zeros;   // int4: [N, groups] or nullptr (8)
  int group_size;
  int groups;
  const float* codebook;  // codebook: [cb_rows, 2^BITS]
  int cb_rows;
};

using cuda_detail::from_float;
using cuda_detail::to_float;

// Code j of a span held as BITS little-endian 32-bit words (j is a constant after unrolling, so
// the shifts fold; a 3-bit code may straddle two words).
template <int BITS>
__device__ __forceinline__ uint32_t code_at(const uint32_t (&w)[BITS], int j) {
  const int p = j * BITS;
  const int wi = p >> 5;
  const int sh = p & 31;
  uint32_t v = w[wi] >> sh;
  if (sh + BITS > 32) v |= w[wi + 1] << (32 - sh);
  return v & ((1u << BITS) - 1u);
}

// Bytes [first, first + 4 * BITS) of a row (zero past row_bytes) as BITS little-endian words.
// kVec: the row is 4*BITS-byte aligned and holds whole spans, so plain vector loads are in bounds.
template <int BITS, bool kVec>
__device__ __forceinline__ void load_span(uint32_t (&w)[BITS], const uint8_t* __restrict__ row, int64_t first,
                                          int64_t row_bytes) {
  if constexpr (kVec && BITS == 4) {
    const uint4 u = __ldg(reinterpret_cast<const uint4*>(row + first));
    w[0] = u.x, w[1] = u.y, w[2] = u.z, w[3] = u.w;
  } else if constexpr (kVec && BITS == 2) {
    const uint2 u = __ldg(reinterpret_cast<const uint2*>(row + first));
    w[0] = u.x, w[1] = u.y;
  } else if constexpr (kVec) {  // 3-bit: 12 bytes, 4-byte aligned
    const uint32_t* p = reinterpret_cast<const uint32_t*>(row + first);
#pragma unroll
    for (int i = 0; i < BITS; ++i) w[i] = __ldg(p + i);
  } else {
#pragma unroll
    for (int i = 0; i < BITS; ++i) w[i] = 0;
#pragma unroll
    for (int b = 0; b < 4 * BITS; ++b) {
      const int64_t at = first + b;
      const uint32_t v = at < row_bytes ? __ldg(row + at) : 0u;
      w[b >> 2] |= v << (8 * (b & 3));
    }
  }
}

// ------------------------------------------------------------------------------------------------
// GEMV: out[m, n] = sum_k x[m, k] w[n, k] + bias[n] for m < M <= MT
// ------------------------------------------------------------------------------------------------
// t[m] += sum_j v(code j) * x[m, span k0 + j] over the span's first `valid` codes (kTail) or all 32.
// xs4: this lane's span of m = 0 in the swizzled shared x; rows of x are kChunk / 4 float4 apart.
template <int BITS, bool LUT, int MT, bool kTail>
__device__ __forceinline__ void span_dot(const uint32_t (&w)[BITS], const float4* xs4, int lane, float offset,
                                         const float* tbl, int valid, float (&t)[MT]) {
#pragma unroll
  for (int q = 0; q < kSpan / 4; ++q) {
    float4 xv[MT];
#pragma unroll
    for (int m = 0; m < MT; ++m) xv[m] = xs4[m * (kChunk / 4) + (q ^ (lane & 7))];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int j = 4 * q + e;
      if (kTail && j >= valid) break;
      const uint32_t c = code_at<BITS>(w, j);
      // int4: (q - z) exactly; codebook: the entry. The int4 scale is applied once per span.
      const float v = LUT ? tbl[c] : __uint_as_float(0x4B000000u | c) - offset;
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        const float xm = e == 0 ? xv[m].x : e == 1 ? xv[m].y : e == 2 ? xv[m].z : xv[m].w;
        t[m] = fmaf(v, xm, t[m]);
      }
    }
  }
}

template <int BITS, bool LUT, typename T, int MT, bool kVec>
__global__ void __launch_bounds__(kThreads)
    lowbit_gemv_kernel(const T* __restrict__ x, int64_t ldx, int M, int K, LowbitWeights wt, int N,
                       const float* __restrict__ bias, T* __restrict__ out, int64_t ldo) {
  static_assert(!LUT ? BITS == 4 : (BITS >= 2 && BITS <= 4), "int4 or a 2/3/4-bit codebook");
  constexpr int kEntries = 1 << BITS;
  __shared__ float4 xs4[MT * kChunk / 4];
  __shared__ float lut[LUT ? kRowsPerBlock * kEntries : 1];

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int block_row0 = blockIdx.x * kRowsPerBlock;
  const int row0 = block_row0 + warp * kRowsPerWarp;
  const int nspans = (K + kSpan - 1) / kSpan;

  if constexpr (LUT) {  // published by the first __syncthreads of the chunk loop
    for (int i = tid; i < kRowsPerBlock * kEntries; i += kThreads) {
      const int n = block_row0 + i / kEntries;
      const int cb_row = wt.cb_rows == 1 ? 0 : n;
      lut[i] = n < N ? __ldg(wt.codebook + static_cast<int64_t>(cb_row) * kEntries + (i % kEntries)) : 0.0f;
    }
  }

  auto load_chunk = [&](uint32_t (&w)[kRowsPerWarp][BITS], int c0) {
    const int s = c0 / kSpan + lane;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int n = row0 + r;
      if (n < N && s < nspans) {
        load_span<BITS, kVec>(w[r], wt.codes + static_cast<int64_t>(n) * wt.row_bytes,
                              static_cast<int64_t>(s) * (4 * BITS), wt.row_bytes);
      } else {
#pragma unroll
        for (int i = 0; i < BITS; ++i) w[r][i] = 0;
      }
    }
  };

  float acc[kRowsPerWarp][MT];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[r][m] = 0.0f;

  uint32_t cur[kRowsPerWarp][BITS];
  uint32_t nxt[kRowsPerWarp][BITS];
  load_chunk(cur, 0);

  for (int c0 = 0; c0 < K; c0 += kChunk) {
    // Next chunk's weights go in flight before this chunk's x is staged and used.
    if (c0 + kChunk < K) load_chunk(nxt, c0 + kChunk);

    __syncthreads();  // every warp is done reading the previous chunk's x
    for (int i = tid; i < MT * kChunk; i += kThreads) {
      const int m = i / kChunk;
      const int kk = i % kChunk;
      const int k = c0 + kk;
      const float v = (m < M && k < K) ? to_float(x[static_cast<int64_t>(m) * ldx + k]) : 0.0f;
      const int span = kk / kSpan;
      const int q = (kk / 4) % (kSpan / 4);
      float* slot = reinterpret_cast<float*>(&xs4[m * (kChunk / 4) + span * (kSpan / 4) + (q ^ (span & 7))]);
      slot[kk & 3] = v;
    }
    __syncthreads();

    const int s = c0 / kSpan + lane;
    if (s < nspans) {
      const int k0 = s * kSpan;
      const int valid = min(kSpan, K - k0);
      const float4* xs_lane = xs4 + lane * (kSpan / 4);
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const int n = row0 + r;
        if (n >= N) continue;  // warp-uniform
        float scale = 1.0f;
        float offset = 0.0f;
        const float* tbl = nullptr;
        if constexpr (LUT) {
          tbl = lut + (warp * kRowsPerWarp + r) * kEntries;
        } else {
          const int64_t g = static_cast<int64_t>(n) * wt.groups + k0 / wt.group_size;
          scale = __ldg(wt.scales + g);
          const float z = wt.zeros != nullptr ? static_cast<float>(__ldg(wt.zeros + g)) : 8.0f;
          offset = 8388608.0f + z;  // 2^23 + z, exact
        }
        float t[MT];
#pragma unroll
        for (int m = 0; m < MT; ++m) t[m] = 0.0f;
        if (valid == kSpan) {
          span_dot<BITS, LUT, MT, false>(cur[r], xs_lane, lane, offset, tbl, kSpan, t);
        } else {  // the last span of a row with K % 32 != 0: codes past K are padding
          span_dot<BITS, LUT, MT, true>(cur[r], xs_lane, lane, offset, tbl, valid, t);
        }
#pragma unroll
        for (int m = 0; m < MT; ++m) acc[r][m] = fmaf(scale, t[m], acc[r][m]);
      }
    }
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
      for (int i = 0; i < BITS; ++i) cur[r][i] = nxt[r][i];
  }

#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int n = row0 + r;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      float v = acc[r][m];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      if (lane == 0 && n < N && m < M) {
        if (bias != nullptr) v += __ldg(bias + n);
        out[static_cast<int64_t>(m) * ldo + n] = from_float<T>(v);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Dequantize: w[n, k] for every k < K, one thread per 8 codes
// ------------------------------------------------------------------------------------------------
template <int BITS, bool LUT, typename T, bool kVecOut>
__global__ void __launch_bounds__(kDequantThreads)
    lowbit_dequant_kernel(LowbitWeights wt, int N, int K, T* __restrict__ w, int64_t ldw) {
  constexpr int kEntries = 1 << BITS;
  const int64_t pieces_per_row = (K + kDequantCodes - 1) / kDequantCodes;
  const int64_t total = static_cast<int64_t>(N) * pieces_per_row;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int n = static_cast<int>(p / pieces_per_row);
    const int k0 = static_cast<int>(p % pieces_per_row) * kDequantCodes;
    // 8 codes = BITS whole bytes starting at byte k0 * BITS / 8 (zero past the row).
    const uint8_t* row = wt.codes + static_cast<int64_t>(n) * wt.row_bytes;
    const int64_t first = static_cast<int64_t>(k0 / kDequantCodes) * BITS;
    uint32_t word[1] = {0};
#pragma unroll
    for (int b = 0; b < BITS; ++b) {
      const int64_t at = first + b;
      word[0] |= (at < wt.row_bytes ? static_cast<uint32_t>(__ldg(row + at)) : 0u) << (8 * b);
    }
    float scale = 1.0f, z = 0.0f;
    const float* tbl = nullptr;
    if constexpr (LUT) {
      tbl = wt.codebook + static_cast<int64_t>(wt.cb_rows == 1 ? 0 : n) * kEntries;
    } else {
      const int64_t g = static_cast<int64_t>(n) * wt.groups + k0 / wt.group_size;  // 8 | 32 | group_size
      scale = __ldg(wt.scales + g);
      z = wt.zeros != nullptr ? static_cast<float>(__ldg(wt.zeros + g)) : 8.0f;
    }
    T v[kDequantCodes];
#pragma unroll
    for (int j = 0; j < kDequantCodes; ++j) {
      const uint32_t c = (word[0] >> (j * BITS)) & ((1u << BITS) - 1u);
      // Same float32 operations as the reference: (float(q) - float(z)) * s.
      const float f = LUT ? __ldg(tbl + c) : __fmul_rn(static_cast<float>(c) - z, scale);
      v[j] = from_float<T>(f);
    }
    T* dst = w + static_cast<int64_t>(n) * ldw + k0;
    if (kVecOut && k0 + kDequantCodes <= K) {
      static_assert(sizeof(v) % 16 == 0, "8 elements are 16 or 32 bytes");
#pragma unroll
      for (int i = 0; i < static_cast<int>(sizeof(v) / 16); ++i) {
        uint4 u;
        memcpy(&u, reinterpret_cast<const char*>(v) + 16 * i, 16);
        reinterpret_cast<uint4*>(dst)[i] = u;
      }
    } else {
      const int valid = min(kDequantCodes, K - k0);
#pragma unroll
      for (int j = 0; j < kDequantCodes; ++j)
        if (j < valid) dst[j] = v[j];
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Launchers
// ------------------------------------------------------------------------------------------------
template <typename T>
struct Tag {
  using type = T;
};

template <class F>
void with_float_type(FloatKind kind, F&& f) {
  switch (kind) {
    case FloatKind::Float32: f(Tag<float>{}); return;
    case FloatKind::Float16: f(Tag<__half>{}); return;
    case FloatKind::BFloat16: f(Tag<__nv_bfloat16>{}); return;
  }
  throw_invalid("low-bit matmul: float kind out of range");
}

// f(integral_constant<int, BITS>, bool_constant<LUT>)
template <class F>
void with_format(int bits, bool lut, F&& f) {
  if (!lut) return f(std::integral_constant<int, 4>{}, std::false_type{});
  switch (bits) {
    case 2: return f(std::integral_constant<int, 2>{}, std::true_type{});
    case 3: return f(std::integral_constant<int, 3>{}, std::true_type{});
    case 4: return f(std::integral_constant<int, 4>{}, std::true_type{});
  }
  throw_invalid("lut_mm: bits must be 2, 3 or 4, got " + std::to_string(bits));
}

void check_dim(const char* op, const char* name, int64_t v) {
  if (v < 0 || v >= kMaxDim)
    throw_invalid(std::string(op) + ": " + name + " must be in [0, 2^30), got " + std::to_string(v));
}

// Validates the weight arguments and fills the descriptor. bits == 4 && !lut is int4.
LowbitWeights describe(const char* op, const uint8_t* codes, const float* scales, const uint8_t* zeros,
                       int64_t group_size, const float* codebook, int64_t cb_rows, int64_t bits, bool lut, int64_t N,
                       int64_t K) {
  check_dim(op, "N", N);
  check_dim(op, "K", K);
  if (bits != 2 && bits != 3 && bits != 4) throw_invalid(std::string(op) + ": bits must be 2, 3 or 4, got " + std::to_string(bits));
  LowbitWeights wt{};
  wt.codes = codes;
  wt.row_bytes = (K * bits + 7) / 8;
  const bool work = N > 0 && K > 0;
  if (work && codes == nullptr) throw_invalid(std::string(op) + ": the packed codes pointer is null");
  if (lut) {
    if (cb_rows != 1 && cb_rows != N)
      throw_invalid(std::string(op) + ": codebook_rows must be 1 or N=" + std::to_string(N) + ", got " + std::to_string(cb_rows));
    if (work && (codebook == nullptr || !aligned_to(codebook, 4)))
      throw_invalid(std::string(op) + ": codebook must be a non-null float32 pointer");
    wt.codebook = codebook;
    wt.cb_rows = static_cast<int>(cb_rows);
    wt.group_size = 1;
  } else {
    if (K > 0 && !(group_size == K || (group_size > 0 && group_size % 32 == 0 && K % group_size == 0)))
      throw_invalid(std::string(op) + ": group_size must be K=" + std::to_string(K) +
                    " or a positive multiple of 32 dividing K, got " + std::to_string(group_size));
    if (work && (scales == nullptr || !aligned_to(scales, 4)))
      throw_invalid(std::string(op) + ": scales must be a non-null float32 pointer");
    wt.scales = scales;
    wt.zeros = zeros;
    wt.group_size = K > 0 ? static_cast<int>(group_size) : 1;
    wt.groups = K > 0 ? static_cast<int>(K / group_size) : 0;
  }
  return wt;
}

// Vector loads need every span of every row in bounds and naturally aligned: rows a whole number of
// spans (4 * bits bytes) and the base aligned to the load width (16, 8, or 4 bytes for 3-bit).
bool spans_vectorizable(const LowbitWeights& wt, int bits) {
  const int width = bits == 3 ? 4 : 4 * bits;
  return wt.row_bytes % (4 * bits) == 0 && aligned_to(wt.codes, width);
}

void gemv(const char* op, const void* x, int64_t ldx, int64_t M, int64_t K, FloatKind x_kind, const LowbitWeights& wt,
          int bits, bool lut, int64_t N, const float* bias, void* out, int64_t ldo, void* stream) {
  check_dim(op, "M", M);
  if (M > kLowbitGemvMaxM)
    throw_invalid(std::string(op) + ": the GEMV kernel takes M <= " + std::to_string(kLowbitGemvMaxM) + ", got M=" +
                  std::to_string(M) + " (use the dequantize path)");
  if (ldx < K) throw_invalid(std::string(op) + ": ldx must be >= K, got " + std::to_string(ldx));
  if (ldo < N) throw_invalid(std::string(op) + ": ldo must be >= N, got " + std::to_string(ldo));
  if (bias != nullptr && !aligned_to(bias, 4)) throw_invalid(std::string(op) + ": bias must be 4-byte aligned");
  if (M == 0 || N == 0 || K == 0) return;
  const size_t esize = x_kind == FloatKind::Float32 ? 4 : 2;
  if (x == nullptr || !aligned_to(x, esize)) throw_invalid(std::string(op) + ": x must be non-null and aligned to its element size");
  if (out == nullptr || !aligned_to(out, esize)) throw_invalid(std::string(op) + ": out must be non-null and aligned to its element size");

  const bool vec = spans_vectorizable(wt, bits);
  const dim3 grid(static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock));
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int m = static_cast<int>(M), n = static_cast<int>(N), k = static_cast<int>(K);
  with_float_type(x_kind, [&](auto tag) {
    using T = typename decltype(tag)::type;
    with_format(bits, lut, [&](auto b, auto l) {
      constexpr int B = decltype(b)::value;
      constexpr bool L = decltype(l)::value;
      auto go = [&](auto mt) {
        constexpr int MT = decltype(mt)::value;
        const T* xt = static_cast<const T*>(x);
        T* ot = static_cast<T*>(out);
        if (vec)
          lowbit_gemv_kernel<B, L, T, MT, true><<<grid, kThreads, 0, s>>>(xt, ldx, m, k, wt, n, bias, ot, ldo);
        else
          lowbit_gemv_kernel<B, L, T, MT, false><<<grid, kThreads, 0, s>>>(xt, ldx, m, k, wt, n, bias, ot, ldo);
      };
      if (M == 1) go(std::integral_constant<int, 1>{});
      else if (M == 2) go(std::integral_constant<int, 2>{});
      else if (M <= 4) go(std::integral_constant<int, 4>{});
      else go(std::integral_constant<int, 8>{});
    });
  });
  check(cudaGetLastError(), (std::string(op) + " GEMV kernel launch").c_str());
}

void dequantize(const char* op, const LowbitWeights& wt, int bits, bool lut, int64_t N, int64_t K, void* w, int64_t ldw,
                FloatKind w_kind, void* stream) {
  if (ldw < K) throw_invalid(std::string(op) + ": ldw must be >= K, got " + std::to_string(ldw));
  if (N == 0 || K == 0) return;
  const size_t esize = w_kind == FloatKind::Float32 ? 4 : 2;
  if (w == nullptr || !aligned_to(w, esize)) throw_invalid(std::string(op) + ": w must be non-null and aligned to its element size");
  const bool vec_out = aligned_to(w, 16) && (ldw * static_cast<int64_t>(esize)) % 16 == 0;
  const int64_t pieces = N * ((K + kDequantCodes - 1) / kDequantCodes);
  const int dev = cuda_detail::current_device();
  const int64_t max_blocks = static_cast<int64_t>(cuda_detail::sm_count(dev)) * 32;  // grid-stride beyond this
  const dim3 grid(static_cast<unsigned>(std::min((pieces + kDequantThreads - 1) / kDequantThreads, max_blocks)));
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int n = static_cast<int>(N), k = static_cast<int>(K);
  with_float_type(w_kind, [&](auto tag) {
    using T = typename decltype(tag)::type;
    with_format(bits, lut, [&](auto b, auto l) {
      constexpr int B = decltype(b)::value;
      constexpr bool L = decltype(l)::value;
      T* wt_out = static_cast<T*>(w);
      if (vec_out)
        lowbit_dequant_kernel<B, L, T, true><<<grid, kDequantThreads, 0, s>>>(wt, n, k, wt_out, ldw);
      else
        lowbit_dequant_kernel<B, L, T, false><<<grid, kDequantThreads, 0, s>>>(wt, n, k, wt_out, ldw);
    });
  });
  check(cudaGetLastError(), (std::string(op) + " dequantize kernel launch").c_str());
}

}  // namespace

void dequant_mm_int4_gemv_cuda(const void* x, int64_t ldx, int64_t M, int64_t K, FloatKind x_kind,
                               const uint8_t* qweight, const float* scales, const uint8_t* zeros,
                               int64_t group_size, int64_t N, const float* bias, void* out, int64_t ldo,
                               void* stream) {
  const char* op = "dequant_mm_int4";
  const LowbitWeights wt = describe(op, qweight, scales, zeros, group_size, nullptr, 0, 4, false, N, K);
  gemv(op, x, ldx, M, K, x_kind, wt, 4, false, N, bias, out, ldo, stream);
}

void lut_mm_gemv_cuda(const void* x, int64_t ldx, int64_t M, int64_t K, FloatKind x_kind, const uint8_t* indices,
                      const float* codebook, int64_t codebook_rows, int64_t bits, int64_t N, const float* bias,
                      void* out, int64_t ldo, void* stream) {
  const char* op = "lut_mm";
  const LowbitWeights wt = describe(op, indices, nullptr, nullptr, 0, codebook, codebook_rows, bits, true, N, K);
  gemv(op, x, ldx, M, K, x_kind, wt, static_cast<int>(bits), true, N, bias, out, ldo, stream);
}

void dequantize_int4_cuda(const uint8_t* qweight, const float* scales, const uint8_t* zeros, int64_t group_size,
                          int64_t N, int64_t K, void* w, int64_t ldw, FloatKind w_kind, void* stream) {
  const char* op = "dequantize_int4";
  const LowbitWeights wt = describe(op, qweight, scales, zeros, group_size, nullptr, 0, 4, false, N, K);
  dequantize(op, wt, 4, false, N, K, w, ldw, w_kind, stream);
}

void dequantize_codebook_cuda(const uint8_t* indices, const float* codebook, int64_t codebook_rows, int64_t bits,
                              int64_t N, int64_t K, void* w, int64_t ldw, FloatKind w_kind, void* stream) {
  const char* op = "dequantize_codebook";
  const LowbitWeights wt = describe(op, indices, nullptr, nullptr, 0, codebook, codebook_rows, bits, true, N, K);
  dequantize(op, wt, static_cast<int>(bits), true, N, K, w, ldw, w_kind, stream);
}

}  // namespace slim
