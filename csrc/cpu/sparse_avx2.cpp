// spmm, AVX2 + FMA + F16C policy. Rows: 8 nonzeros per step, x fetched with vgatherdps; an N:M row's
// 8 kept values span 16 columns of x, two registers that vpermps picks from. Tiles: two ymm per 16
// rows of x. AVX2 has no masked byte / word loads: row tails are copied to a small buffer first.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "slim/scratch.h"
#include "slim/sparse.h"

namespace slim {
namespace {

struct Avx2Policy {
  using V = __m256;
  using Vi = __m256i;
  static constexpr int64_t kW = 8;
  // All-ones in the first n lanes.
  static Vi lanes(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(n < 8 ? n : 8)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  // The first n (< 8) elements of p, zero-padded to 8.
  template <class T>
  static const T* tail(const T* p, int64_t n, T (&buf)[8]) {
    std::memset(buf, 0, sizeof(buf));
    if (n > 0) std::memcpy(buf, p, size_t(n) * sizeof(T));
    return buf;
  }
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V load_n(const float* p, int64_t n) {
    if (n <= 0) return zero();
    return n >= 8 ? load(p) : _mm256_maskload_ps(p, lanes(n));
  }
  static V bcast(float v) { return _mm256_set1_ps(v); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static float hsum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V gather(const float* base, Vi i, int64_t n) {
    if (n >= 8) return _mm256_i32gather_ps(base, i, 4);
    return _mm256_mask_i32gather_ps(zero(), base, i, _mm256_castsi256_ps(lanes(n)), 4);
  }
  static Vi index(const uint16_t* p, int64_t n) {
    uint16_t buf[8];
    if (n < 8) p = tail(p, n, buf);
    return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static Vi index(const int32_t* p, int64_t n) {
    if (n < 8) return _mm256_maskload_epi32(reinterpret_cast<const int*>(p), lanes(n));
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  template <SparseValue VK>
  static V values(const void* base, int64_t j, int64_t n) {
    if constexpr (VK == SparseValue::kFloat32) {
      return load_n(static_cast<const float*>(base) + j, n);
    } else if constexpr (VK == SparseValue::kInt8) {
      const int8_t* p = static_cast<const int8_t*>(base) + j;
      int8_t buf[8];
      if (n < 8) p = tail(p, n, buf);
      return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
    } else {
      const uint16_t* p = static_cast<const uint16_t*>(base) + j;
      uint16_t buf[8];
      if (n < 8) p = tail(p, n, buf);
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
      if constexpr (VK == SparseValue::kFloat16) return _mm256_cvtph_ps(h);
      else return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
  }
  template <SparseValue VK>
  static float value(const void* base, int64_t j) {
    if constexpr (VK == SparseValue::kFloat16) return _cvtsh_ss(static_cast<const uint16_t*>(base)[j]);
    else if constexpr (VK == SparseValue::kBFloat16) return bf16_to_f32(static_cast<const uint16_t*>(base)[j]);
    else if constexpr (VK == SparseValue::kInt8) return float(static_cast<const int8_t*>(base)[j]);
    else return static_cast<const float*>(base)[j];
  }
  static V gather_rows(const float* p, int64_t stride, int64_t n) {
    if (n <= 0) return zero();
    const Vi idx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(int32_t(stride)));
    return _mm256_mask_i32gather_ps(zero(), p, idx, _mm256_castsi256_ps(lanes(n)), 4);
  }

  // Kept values j .. j + 7 of an N:M row (j a multiple of 8): their columns minus 2 j, in [0, 16).
  static Vi nm_offsets(const uint8_t* pos, int64_t pbytes, int64_t j, int group) {
    const uint64_t u = nm_code_bits(pos, pbytes, j, group == 8 ? 3 : 2);
    if (group == 4) {
      const Vi codes = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int32_t(u & 0xFFFF)),
                                                          _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)),
                                        _mm256_set1_epi32(3));
      return _mm256_add_epi32(codes, _mm256_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12));
    }
    const Vi codes = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int32_t(u & 0xFFFFFF)),
                                                        _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21)),
                                      _mm256_set1_epi32(7));
    return _mm256_add_epi32(codes, _mm256_setr_epi32(0, 0, 0, 0, 8, 8, 8, 8));
  }
  // x[off[l]] for offsets in [0, 16) from the two registers x0 = x[0:8], x1 = x[8:16].
  static V pick(V x0, V x1, Vi off) {
    const V lo = _mm256_permutevar8x32_ps(x0, off), hi = _mm256_permutevar8x32_ps(x1, off);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_cmpgt_epi32(off, _mm256_set1_epi32(7))));
  }

  template <SparseValue VK>
  static float nm_dot(const uint8_t* pos, int64_t pbytes, const void* vals, int64_t j0, int64_t half, int group,
                      const float* x) {
    V a0 = zero(), a1 = zero();
    int64_t j = 0;
    for (; j + 16 <= half; j += 16) {
      const float* xs = x + 2 * j;
      a0 = fma(values<VK>(vals, j0 + j, 8), pick(load(xs), load(xs + 8), nm_offsets(pos, pbytes, j, group)), a0);
      a1 = fma(values<VK>(vals, j0 + j + 8, 8), pick(load(xs + 16), load(xs + 24), nm_offsets(pos, pbytes, j + 8, group)),
               a1);
    }
    for (; j < half; j += 8) {
      const int64_t n = half - j < 8 ? half - j : 8;
      const float* xs = x + 2 * j;
      // lanes past n hold no value: zero them, so an Inf of x there cannot turn into 0 * Inf
      const V xv = _mm256_and_ps(pick(load_n(xs, 2 * n), load_n(xs + 8, 2 * n - 8), nm_offsets(pos, pbytes, j, group)),
                                 _mm256_castsi256_ps(lanes(n)));
      a0 = fma(values<VK>(vals, j0 + j, n), xv, a0);
    }
    return hsum(add(a0, a1));
  }

  static void nm_columns(const uint8_t* pos, int64_t pbytes, int64_t half, int group, int32_t* cols) {
    for (int64_t j = 0; j < half; j += 8) {
      const Vi c = _mm256_add_epi32(nm_offsets(pos, pbytes, j, group), _mm256_set1_epi32(int32_t(2 * j)));
      _mm256_maskstore_epi32(reinterpret_cast<int*>(cols + j), lanes(half - j), c);
    }
  }
};

}  // namespace

void spmm_rows_avx2(const SparseMmArgs& g, const float* xf, int64_t ldxf, const float* xt, int64_t n0, int64_t n1) {
  int32_t* cols = g.format == SparseFormat::kNm && xt
                      ? static_cast<int32_t*>(thread_scratch(2, size_t(g.K / 2 + 8) * sizeof(int32_t)))
                      : nullptr;
  sparse_rows_for<Avx2Policy>(g, xf, ldxf, xt, n0, n1, cols);
}

void spmm_transpose_avx2(const float* xf, int64_t ldxf, int64_t M, int64_t K, float* xt, int64_t t0, int64_t t1) {
  sparse_transpose_for<Avx2Policy>(xf, ldxf, M, K, xt, t0, t1);
}

}  // namespace slim
