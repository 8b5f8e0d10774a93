// sparse_conv2d strips on AVX-512 (16 float32 lanes, masked loads and stores for the column tail).
#include <immintrin.h>

#include "slim/sparse_conv_strip.h"

namespace slim {
namespace {

struct Avx512 {
  static constexpr int kLanes = 16;
  using Vec = __m512;
  using Mask = __mmask16;
  static Mask mask(int64_t n) { return n <= 0 ? Mask(0) : n >= 16 ? Mask(0xFFFF) : Mask((1u << n) - 1); }
  static constexpr int kAccumulators = 16;
  static Vec loadu(const float* p) { return _mm512_loadu_ps(p); }
  static Vec set1(float f) { return _mm512_set1_ps(f); }
  static Vec load(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
  static void store(float* p, Vec v, Mask m) { _mm512_mask_storeu_ps(p, m, v); }
};

}  // namespace

void sparse_conv_rows_avx512_vnni(const SparseConvPlan& p, int64_t co0, int64_t co1, int64_t oh0, int64_t oh1) {
  sparse_conv_rows<Avx512>(p, co0, co1, oh0, oh1);
}

}  // namespace slim
