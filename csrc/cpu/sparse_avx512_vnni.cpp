// spmm, AVX-512 policy (compiled with the avx512_vnni tier's flags; uses F/BW/VL/DQ). Rows: 16 nonzeros
// per step, their x values fetched with vgatherdps; an N:M row's 16 kept values span 32 columns of x,
// two registers that vpermt2ps picks from (no gather). Tiles: one zmm per 16 rows of x.
#include <immintrin.h>

#include <cstdint>

#include "slim/scratch.h"
#include "slim/sparse.h"

namespace slim {
namespace {

struct Avx512Policy {
  using V = __m512;
  using Vi = __m512i;
  static constexpr int64_t kW = 16;
  static __mmask16 mask(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1); }
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load_n(const float* p, int64_t n) { return n <= 0 ? zero() : _mm512_maskz_loadu_ps(mask(n), p); }
  static V bcast(float v) { return _mm512_set1_ps(v); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static float hsum(V v) { return _mm512_reduce_add_ps(v); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V gather(const float* base, Vi i, int64_t n) {
    return n >= 16 ? _mm512_i32gather_ps(i, base, 4) : _mm512_mask_i32gather_ps(zero(), mask(n), i, base, 4);
  }
  static Vi index(const uint16_t* p, int64_t n) {
    const __m256i h = n >= 16 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)) : _mm256_maskz_loadu_epi16(mask(n), p);
    return _mm512_cvtepu16_epi32(h);
  }
  static Vi index(const int32_t* p, int64_t n) {
    return n >= 16 ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi32(mask(n), p);
  }
  template <SparseValue VK>
  static V values(const void* base, int64_t j, int64_t n) {
    const __mmask16 k = mask(n);
    if constexpr (VK == SparseValue::kFloat32) {
      return _mm512_maskz_loadu_ps(k, static_cast<const float*>(base) + j);
    } else if constexpr (VK == SparseValue::kInt8) {
      return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k, static_cast<const int8_t*>(base) + j)));
    } else {
      const __m256i h = _mm256_maskz_loadu_epi16(k, static_cast<const uint16_t*>(base) + j);
      if constexpr (VK == SparseValue::kFloat16) return _mm512_cvtph_ps(h);
      else return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
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
    const Vi idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                      _mm512_set1_epi32(int32_t(stride)));
    return _mm512_mask_i32gather_ps(zero(), mask(n), idx, p, 4);
  }

  // Kept values j .. j + 15 of an N:M row (j a multiple of 16): their columns minus 2 j, in [0, 32).
  static Vi nm_offsets(const uint8_t* pos, int64_t pbytes, int64_t j, int group) {
    const uint64_t u = nm_code_bits(pos, pbytes, j, group == 8 ? 3 : 2);
    if (group == 4) {  // 16 two-bit codes in 32 bits; lane l is in group l / 2, at 4 (l / 2)
      const Vi codes = _mm512_and_si512(
          _mm512_srlv_epi32(_mm512_set1_epi32(int32_t(uint32_t(u))),
                            _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)),
          _mm512_set1_epi32(3));
      return _mm512_add_epi32(codes, _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28));
    }
    // 16 three-bit codes in 48 bits: lanes 0-7 from the low 24, lanes 8-15 from the next 24.
    const Vi words = _mm512_mask_blend_epi32(__mmask16(0xFF00), _mm512_set1_epi32(int32_t(u & 0xFFFFFF)),
                                             _mm512_set1_epi32(int32_t((u >> 24) & 0xFFFFFF)));
    const Vi codes = _mm512_and_si512(
        _mm512_srlv_epi32(words, _mm512_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21, 0, 3, 6, 9, 12, 15, 18, 21)),
        _mm512_set1_epi32(7));
    return _mm512_add_epi32(codes, _mm512_setr_epi32(0, 0, 0, 0, 8, 8, 8, 8, 16, 16, 16, 16, 24, 24, 24, 24));
  }

  template <SparseValue VK>
  static float nm_dot(const uint8_t* pos, int64_t pbytes, const void* vals, int64_t j0, int64_t half, int group,
                      const float* x) {
    V a0 = zero(), a1 = zero();
    int64_t j = 0;
    for (; j + 32 <= half; j += 32) {
      const float* xs = x + 2 * j;
      const V x0 = _mm512_permutex2var_ps(load(xs), nm_offsets(pos, pbytes, j, group), load(xs + 16));
      const V x1 = _mm512_permutex2var_ps(load(xs + 32), nm_offsets(pos, pbytes, j + 16, group), load(xs + 48));
      a0 = fma(values<VK>(vals, j0 + j, 16), x0, a0);
      a1 = fma(values<VK>(vals, j0 + j + 16, 16), x1, a1);
    }
    for (; j < half; j += 16) {
      const int64_t n = half - j < 16 ? half - j : 16;  // kept values; they span 2 n columns
      const float* xs = x + 2 * j;
      // lanes past n hold no value: zero them, so an Inf of x there cannot turn into 0 * Inf
      const V xv = _mm512_maskz_permutex2var_ps(mask(n), load_n(xs, 2 * n), nm_offsets(pos, pbytes, j, group),
                                                load_n(xs + 16, 2 * n - 16));
      a0 = fma(values<VK>(vals, j0 + j, n), xv, a0);
    }
    return hsum(add(a0, a1));
  }

  static void nm_columns(const uint8_t* pos, int64_t pbytes, int64_t half, int group, int32_t* cols) {
    for (int64_t j = 0; j < half; j += 16) {
      const Vi c = _mm512_add_epi32(nm_offsets(pos, pbytes, j, group), _mm512_set1_epi32(int32_t(2 * j)));
      _mm512_mask_storeu_epi32(cols + j, mask(half - j), c);
    }
  }
};

}  // namespace

void spmm_rows_avx512_vnni(const SparseMmArgs& g, const float* xf, int64_t ldxf, const float* xt, int64_t n0,
                           int64_t n1) {
  int32_t* cols = g.format == SparseFormat::kNm && xt
                      ? static_cast<int32_t*>(thread_scratch(2, size_t(g.K / 2 + 16) * sizeof(int32_t)))
                      : nullptr;
  sparse_rows_for<Avx512Policy>(g, xf, ldxf, xt, n0, n1, cols);
}

void spmm_transpose_avx512_vnni(const float* xf, int64_t ldxf, int64_t M, int64_t K, float* xt, int64_t t0,
                                int64_t t1) {
  sparse_transpose_for<Avx512Policy>(xf, ldxf, M, K, xt, t0, t1);
}

}  // namespace slim
