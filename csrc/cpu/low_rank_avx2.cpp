// Low-rank linear layer, AVX2 + FMA blocks: register tiles of 4 rows of A by 3 rows of B (12 ymm
// accumulators, 3 for B, 1 for A: the 16 registers).
#include <immintrin.h>

#include <cstdint>

#include "slim/low_rank.h"

namespace slim {
namespace {

struct Avx2Ops {
  using V = __m256;
  static constexpr int64_t kW = 8;
  static constexpr int kMR = 4, kNR = 3;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static float hsum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
};

}  // namespace

void low_rank_abt_avx2(const float* a, int64_t lda, const float* b, int64_t ldb, const float* bias, float* c,
                       int64_t ldc, int64_t M, int64_t j0, int64_t j1, int64_t L) {
  low_rank_abt_simd<Avx2Ops>(a, lda, b, ldb, bias, c, ldc, M, j0, j1, L);
}

}  // namespace slim
