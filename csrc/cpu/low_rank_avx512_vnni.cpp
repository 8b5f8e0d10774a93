// Low-rank linear layer, AVX-512 blocks: register tiles of 4 rows of A by 4 rows of B (16 zmm
// accumulators, 4 for B, 1 for A, of the 32 registers).
#include <immintrin.h>

#include <cstdint>

#include "slim/low_rank.h"

namespace slim {
namespace {

struct Avx512Ops {
  using V = __m512;
  static constexpr int64_t kW = 16;
  static constexpr int kMR = 4, kNR = 4;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static float hsum(V v) { return _mm512_reduce_add_ps(v); }
};

}  // namespace

void low_rank_abt_avx512_vnni(const float* a, int64_t lda, const float* b, int64_t ldb, const float* bias, float* c,
                              int64_t ldc, int64_t M, int64_t j0, int64_t j1, int64_t L) {
  low_rank_abt_simd<Avx512Ops>(a, lda, b, ldb, bias, c, ldc, M, j0, j1, L);
}

}  // namespace slim
