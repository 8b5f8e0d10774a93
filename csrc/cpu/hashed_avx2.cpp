// Hashed weight sharing, AVX2 + FMA policy: 8 hashes per step in ymm registers (vpmulld), the bucket
// index from the high halves of two vpmuludq products (the values then by scalar loads: hashed_lookup).
#include <immintrin.h>

#include <cstdint>

#include "slim/hashed.h"

namespace slim {
namespace {

struct Avx2Ops {
  using U = __m256i;
  using V = __m256;
  static constexpr int64_t kW = 8;
  static U xor_(U a, U b) { return _mm256_xor_si256(a, b); }
  template <int s>
  static U shr(U a) { return _mm256_srli_epi32(a, s); }
  template <int s>
  static U shl(U a) { return _mm256_slli_epi32(a, s); }
  static U mul(U a, U b) { return _mm256_mullo_epi32(a, b); }
  static U set1(uint32_t v) { return _mm256_set1_epi32(int32_t(v)); }
  static U lane_index(uint32_t base) {
    return _mm256_add_epi32(set1(base), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static U add(U a, U b) { return _mm256_add_epi32(a, b); }
  static U sub(U a, U b) { return _mm256_sub_epi32(a, b); }
  static U min(U a, U b) { return _mm256_min_epu32(a, b); }
  static U mulhi(U a, U b) {
    const U even = _mm256_srli_epi64(_mm256_mul_epu32(a, b), 32);          // lanes 0, 2, ... in the low halves
    const U odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), b);           // lanes 1, 3, ... in the high halves
    return _mm256_blend_epi32(even, odd, 0xAA);
  }
  static void store_u(uint32_t* p, U v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
  static U load_u(const uint32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static V flip(V v, U sign) { return _mm256_xor_ps(v, _mm256_castsi256_ps(sign)); }
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static float hsum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
};

}  // namespace

void hashed_rows_avx2(const HashedArgs& w, int64_t n0, int64_t n1, int64_t k0, int64_t k1, float* out, int64_t ldo) {
  hashed_rows_simd<Avx2Ops>(w, n0, n1, k0, k1, out, ldo);
}

float hashed_dot_avx2(const float* a, const float* b, int64_t k) { return hashed_dot_simd<Avx2Ops>(a, b, k); }

}  // namespace slim
