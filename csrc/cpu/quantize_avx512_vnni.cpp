// quantize_per_token_int8, AVX-512 (compiled with the avx512_vnni tier's flags; uses F/BW/VL only).
// Exact: IEEE division (vdivps), round half to even (vrndscaleps), clamp, saturating narrow.
#include <immintrin.h>

#include <cstdint>

#include "slim/quantize.h"
#include "slim/quantize_row.h"

namespace slim {
namespace {

inline __m512 load16(const void* row, InKind kind, int64_t k, __mmask16 m) {
  if (kind == InKind::kFloat32) return _mm512_maskz_loadu_ps(m, static_cast<const float*>(row) + k);
  const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(row) + k);
  if (kind == InKind::kFloat16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

inline __mmask16 tail_mask(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1); }

}  // namespace

void quantize_rows_avx512_vnni(const QuantizeArgs& g, int64_t m0, int64_t m1) {
  const int64_t esize = g.x_kind == InKind::kFloat32 ? 4 : 2;
  const __m512i absmask = _mm512_set1_epi32(0x7FFFFFFF);
  for (int64_t m = m0; m < m1; ++m) {
    const void* row = static_cast<const char*>(g.x) + m * g.ldx * esize;
    int8_t* q = g.q + m * g.ldq;
    // max |x| on the bit patterns (unsigned order = |x| order; NaN sorts above Inf).
    __m512i amax = _mm512_setzero_si512();
    for (int64_t k = 0; k < g.K; k += 16) {
      const __m512 v = load16(row, g.x_kind, k, tail_mask(g.K - k));
      amax = _mm512_max_epu32(amax, _mm512_and_si512(_mm512_castps_si512(v), absmask));
    }
    float scale;
    if (!row_scale(uint32_t(_mm512_reduce_max_epu32(amax)), g.qmax, &scale)) {
      for (int64_t k = 0; k < g.K; k += 64) {
        const int64_t n = g.K - k;
        _mm512_mask_storeu_epi8(q + k, n >= 64 ? ~__mmask64(0) : (__mmask64(1) << n) - 1, _mm512_setzero_si512());
      }
    } else if (scale == 0.0f) {  // amax so tiny that amax / qmax underflowed: rare, keep it simple
      for (int64_t k = 0; k < g.K; ++k) q[k] = quant_one(load_as_f32(row, g.x_kind, k), scale, g.qmax);
    } else {
      const __m512 s = _mm512_set1_ps(scale), lo = _mm512_set1_ps(-float(g.qmax)), hi = _mm512_set1_ps(float(g.qmax));
      for (int64_t k = 0; k < g.K; k += 16) {
        const __mmask16 msk = tail_mask(g.K - k);
        __m512 v = _mm512_div_ps(load16(row, g.x_kind, k, msk), s);
        v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
        _mm_mask_storeu_epi8(q + k, msk, _mm512_cvtsepi32_epi8(_mm512_cvttps_epi32(v)));
      }
    }
    g.scale[m] = scale;
  }
}

}  // namespace slim
