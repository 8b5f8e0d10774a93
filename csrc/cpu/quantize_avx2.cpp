// quantize_per_token_int8, AVX2 + F16C. Exact: IEEE division (vdivps), round half to even
// (vroundps), clamp; the row tail (K % 8) goes through the same scalar formula.
#include <immintrin.h>

#include <cstdint>

#include "slim/quantize.h"
#include "slim/quantize_row.h"

namespace slim {
namespace {

inline __m256 load8(const void* row, InKind kind, int64_t k) {
  if (kind == InKind::kFloat32) return _mm256_loadu_ps(static_cast<const float*>(row) + k);
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + k));
  if (kind == InKind::kFloat16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

}  // namespace

void quantize_rows_avx2(const QuantizeArgs& g, int64_t m0, int64_t m1) {
  const int64_t esize = g.x_kind == InKind::kFloat32 ? 4 : 2;
  const __m256i absmask = _mm256_set1_epi32(0x7FFFFFFF);
  const int64_t K8 = g.K / 8 * 8;
  for (int64_t m = m0; m < m1; ++m) {
    const void* row = static_cast<const char*>(g.x) + m * g.ldx * esize;
    int8_t* q = g.q + m * g.ldq;
    __m256i amax = _mm256_setzero_si256();
    for (int64_t k = 0; k < K8; k += 8)
      amax = _mm256_max_epu32(amax, _mm256_and_si256(_mm256_castps_si256(load8(row, g.x_kind, k)), absmask));
    alignas(32) uint32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), amax);
    uint32_t amax_bits = 0;
    for (int i = 0; i < 8; ++i) amax_bits = lanes[i] > amax_bits ? lanes[i] : amax_bits;
    for (int64_t k = K8; k < g.K; ++k) {
      const uint32_t b = abs_bits(load_as_f32(row, g.x_kind, k));
      amax_bits = b > amax_bits ? b : amax_bits;
    }
    float scale;
    if (!row_scale(amax_bits, g.qmax, &scale)) {
      for (int64_t k = 0; k < g.K; ++k) q[k] = 0;
    } else if (scale == 0.0f) {
      for (int64_t k = 0; k < g.K; ++k) q[k] = quant_one(load_as_f32(row, g.x_kind, k), scale, g.qmax);
    } else {
      const __m256 s = _mm256_set1_ps(scale), lo = _mm256_set1_ps(-float(g.qmax)), hi = _mm256_set1_ps(float(g.qmax));
      int64_t k = 0;
      for (; k < K8; k += 8) {
        __m256 v = _mm256_div_ps(load8(row, g.x_kind, k), s);
        v = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
        const __m256i i32 = _mm256_cvttps_epi32(v);
        const __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(q + k), _mm_packs_epi16(i16, i16));
      }
      for (; k < g.K; ++k) q[k] = quant_one(load_as_f32(row, g.x_kind, k), scale, g.qmax);
    }
    g.scale[m] = scale;
  }
}

}  // namespace slim
