// sparse_conv2d strips on AVX2 + FMA (8 float32 lanes; vmaskmov for the column tail).
#include <immintrin.h>

#include "slim/sparse_conv_strip.h"

namespace slim {
namespace {

struct Avx2 {
  static constexpr int kLanes = 8;
  using Vec = __m256;
  using Mask = __m256i;
  static Mask mask(int64_t n) {
    const int c = n <= 0 ? 0 : n >= 8 ? 8 : int(n);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(c), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static constexpr int kAccumulators = 8;
  static Vec loadu(const float* p) { return _mm256_loadu_ps(p); }
  static Vec set1(float f) { return _mm256_set1_ps(f); }
  static Vec load(const float* p, Mask m) { return _mm256_maskload_ps(p, m); }
  static Vec fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
  static void store(float* p, Vec v, Mask m) { _mm256_maskstore_ps(p, m, v); }
};

}  // namespace

void sparse_conv_rows_avx2(const SparseConvPlan& p, int64_t co0, int64_t co1, int64_t oh0, int64_t oh1) {
  sparse_conv_rows<Avx2>(p, co0, co1, oh0, oh1);
}

}  // namespace slim
