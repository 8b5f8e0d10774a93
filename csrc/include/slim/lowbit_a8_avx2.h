// The AVX2 policy of dequant_mm_int4_a8's tile loop (lowbit_a8.h), over the int8 dot product D: vpmaddubsw +
// vpmaddwd (DotMaddubs, lowbit_a8_avx2.cpp) or AVX-VNNI's vpdpbusd (lowbit_a8_avx_vnni.cpp). 64 k's a step
// (32 bytes of codes: low nibbles = the 32 even k's, high nibbles = the 32 odd k's) or, for group sizes that
// are no multiple of 64, 32 k's (16 bytes, both halves in one ymm). Include only from files compiled for AVX2.
#pragma once
#include <immintrin.h>

#include <type_traits>

#include "slim/lowbit_a8.h"

namespace slim {
namespace {

struct DotMaddubs {
  static __m256i dot2(__m256i acc, __m256i c0, __m256i x0, __m256i c1, __m256i x1) {
    const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(c0, x0), _mm256_maddubs_epi16(c1, x1));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
  }
  static __m256i dot1(__m256i acc, __m256i c, __m256i x) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(c, x), _mm256_set1_epi16(1)));
  }
};

// BLOCK: 64 or 32 k's a step; D: the int8 dot product (DotMaddubs or DotVnni).
template <int BLOCK, class D>
struct A8Avx2 {
  using IV = __m256i;
  using FV = __m256;
  static constexpr int64_t kBlock = BLOCK;
  static constexpr int kMaxMR = 2, kTile = 4;  // 2 x 2 or 1 x 4: 8 accumulators of 16 registers
  struct Two { __m256i lo, hi; };  // 64 k's: even k's, odd k's
  struct One { __m256i c; };       // 32 k's: even k's in the low half, odd ones in the high half
  using Dec = std::conditional_t<BLOCK == 64, Two, One>;
  static IV lane0(int32_t v) { return _mm256_zextsi128_si256(_mm_cvtsi32_si128(v)); }
  static Dec decode(const uint8_t* p) {
    if constexpr (BLOCK == 64) {
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), low4 = _mm256_set1_epi8(0x0F);
      return {_mm256_and_si256(b, low4), _mm256_and_si256(_mm256_srli_epi16(b, 4), low4)};
    } else {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), low4 = _mm_set1_epi8(0x0F);
      return {_mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), low4), _mm_and_si128(b, low4))};
    }
  }
  static IV dot(IV acc, const Dec& d, const int8_t* x) {
    const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
    if constexpr (BLOCK == 64)
      return D::dot2(acc, d.lo, x0, d.hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32)));
    else
      return D::dot1(acc, d.c, x0);
  }
  static FV fzero() { return _mm256_setzero_ps(); }
  static FV scale_add(FV f, IV acc, float s) { return _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), _mm256_set1_ps(s), f); }
  static float hsum(FV v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
};

template <class D>
void lowbit_a8_avx2_run(const LowbitA8Args& g, const A8Acts& a, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  if (a.block == 64) A8Tiles<A8Avx2<64, D>>::block(g, a, m0, m1, n0, n1);
  else A8Tiles<A8Avx2<32, D>>::block(g, a, m0, m1, n0, n1);
}

}  // namespace
}  // namespace slim
