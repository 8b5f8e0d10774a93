// lowbit_mm, AVX2 + FMA policy. A 16-entry float table is two registers: vpermps looks up the low
// 3 bits of an index in each half and a blend on bit 3 (shifted into the sign bit) picks the half.
// 2- and 4-bit codes are zero-extended a byte per lane and shifted; 3-bit codes (8 in 3 bytes) are
// broadcast and shifted per lane.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "slim/lowbit.h"

namespace slim {
namespace {

struct Avx2Policy {
  using V = __m256;
  static constexpr int64_t kLanes = 8;
  static constexpr int kMaxAcc = 6;
  struct Lut { __m256 lo, hi; };
  static V zero() { return _mm256_setzero_ps(); }
  static V loadx(const float* p) { return _mm256_loadu_ps(p); }
  static void storew(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V masked(V w, const uint32_t* mask) {
    return _mm256_and_ps(w, _mm256_castsi256_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(mask))));
  }
  static float hsum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  static Lut lut(const float* t) { return {_mm256_loadu_ps(t), _mm256_loadu_ps(t + 8)}; }
  static Lut lut_int4(float s, int z) {
    const __m256 sv = _mm256_set1_ps(s);
    return {_mm256_mul_ps(_mm256_load_ps(kCodeMinusZero.v[z]), sv), _mm256_mul_ps(_mm256_load_ps(kCodeMinusZero.v[z] + 8), sv)};
  }
  static V lookup(__m256i idx, const Lut& t) {
    const __m256 lo = _mm256_permutevar8x32_ps(t.lo, idx), hi = _mm256_permutevar8x32_ps(t.hi, idx);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
  }

  // 2 and 4 bits: 8 bytes -> 8 lanes of 8 / BITS codes; sub-vector s is the lanes >> (s * BITS).
  template <int BITS>
  struct Codes {
    static constexpr int64_t kSubs = 8 / BITS, kChunkBytes = 8, kLoadBytes = 8;
    using Raw = __m256i;
    static Raw load(const uint8_t* p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))); }
    template <int S>
    static V weight(Raw r, const Lut& t) { return lookup(S == 0 ? r : _mm256_srli_epi32(r, S * BITS), t); }
  };
};

// 3 bits: 8 codes in 3 bytes (4 loaded); lane j is the word >> 3j.
template <>
struct Avx2Policy::Codes<3> {
  static constexpr int64_t kSubs = 1, kChunkBytes = 3, kLoadBytes = 4;
  using Raw = __m256i;
  static Raw load(const uint8_t* p) {
    int u;
    std::memcpy(&u, p, 4);
    return _mm256_srlv_epi32(_mm256_set1_epi32(u), _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21));
  }
  template <int S>
  static V weight(Raw r, const Lut& t) { return lookup(r, t); }
};

}  // namespace

LowbitLayout lowbit_layout_avx2(int bits) { return lowbit_layout_for<Avx2Policy>(bits); }
void lowbit_block_avx2(const LowbitMmArgs& g, const float* xp, int64_t ldxp, int64_t m0, int64_t m1, int64_t n0,
                       int64_t n1) {
  lowbit_block_for<Avx2Policy, 3, 2>(g, xp, ldxp, m0, m1, n0, n1);
}

}  // namespace slim
