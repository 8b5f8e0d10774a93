// Hashed weight sharing, AVX-512 policy (the avx512_vnni tier's flags; uses F): 16 hashes per step in
// zmm registers, the bucket index from the high halves of two vpmuludq products (the values then by
// scalar loads: hashed_lookup).
#include <immintrin.h>

#include <cstdint>

#include "slim/hashed.h"

namespace slim {
namespace {

struct Avx512Ops {
  using U = __m512i;
  using V = __m512;
  static constexpr int64_t kW = 16;
  static U xor_(U a, U b) { return _mm512_xor_si512(a, b); }
  template <int s>
  static U shr(U a) { return _mm512_srli_epi32(a, s); }
  template <int s>
  static U shl(U a) { return _mm512_slli_epi32(a, s); }
  static U mul(U a, U b) { return _mm512_mullo_epi32(a, b); }
  static U set1(uint32_t v) { return _mm512_set1_epi32(int32_t(v)); }
  static U lane_index(uint32_t base) {
    return _mm512_add_epi32(set1(base), _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  }
  static U add(U a, U b) { return _mm512_add_epi32(a, b); }
  static U sub(U a, U b) { return _mm512_sub_epi32(a, b); }
  static U min(U a, U b) { return _mm512_min_epu32(a, b); }
  static U mulhi(U a, U b) {
    const U even = _mm512_srli_epi64(_mm512_mul_epu32(a, b), 32);
    const U odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), b);
    return _mm512_mask_blend_epi32(__mmask16(0xAAAA), even, odd);
  }
  static void store_u(uint32_t* p, U v) { _mm512_storeu_si512(p, v); }
  static U load_u(const uint32_t* p) { return _mm512_loadu_si512(p); }
  static V flip(V v, U sign) { return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(v), sign)); }
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static float hsum(V v) { return _mm512_reduce_add_ps(v); }
};

}  // namespace

void hashed_rows_avx512_vnni(const HashedArgs& w, int64_t n0, int64_t n1, int64_t k0, int64_t k1, float* out,
                             int64_t ldo) {
  hashed_rows_simd<Avx512Ops>(w, n0, n1, k0, k1, out, ldo);
}

float hashed_dot_avx512_vnni(const float* a, const float* b, int64_t k) {
  return hashed_dot_simd<Avx512Ops>(a, b, k);
}

}  // namespace slim
