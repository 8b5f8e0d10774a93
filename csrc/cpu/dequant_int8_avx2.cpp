// dequant_mm_int8 (W8A16), AVX2 + FMA + F16C. Register tile: NR weight rows x MR activation rows,
// one 8-lane float32 accumulator per (m, n), reduced horizontally once at the end of K.
// 8 int8 weights -> vpmovsxbd -> vcvtdq2ps -> FMA with x[m, k:k+8]; the K tail (< 8) is scalar.
#include <immintrin.h>

#include <cstdint>

#include "slim/dequant_int8.h"

namespace slim {
namespace {

constexpr int kNR = 4, kMR = 2;  // 8 accumulators + 4 weight vectors + 1 x vector of 16 ymm

// 4 accumulators -> their 4 horizontal sums.
inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
  __m256 abcd = _mm256_hadd_ps(ab, cd);
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

inline __m256 wload(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

template <int MR, int NR>
void tile(const DequantInt8Args& g, const float* xf, int64_t ldxf, int64_t m0, int64_t n0) {
  const int8_t* w = g.w + n0 * g.ldw;
  const float* x = xf + m0 * ldxf;
  const int64_t K = g.K, ldw = g.ldw;
  __m256 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = wload(w + j * ldw + k);
    for (int i = 0; i < MR; ++i) {
      const __m256 xv = _mm256_loadu_ps(x + i * ldxf + k);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    alignas(16) float s[4];
    const __m256 z = _mm256_setzero_ps();
    _mm_store_ps(s, hsum4(acc[i][0], NR > 1 ? acc[i][NR > 1 ? 1 : 0] : z, NR > 2 ? acc[i][NR > 2 ? 2 : 0] : z,
                          NR > 3 ? acc[i][NR > 3 ? 3 : 0] : z));
    for (int j = 0; j < NR; ++j) {
      float t = s[j];
      for (int64_t kk = k; kk < K; ++kk) t += x[i * ldxf + kk] * float(w[j * ldw + kk]);
      dequant_int8_store(g, m0 + i, n0 + j, t);
    }
  }
}

template <int NR>
void tile_m(const DequantInt8Args& g, const float* xf, int64_t ldxf, int64_t m0, int64_t mr, int64_t n0) {
  if (mr >= 2) tile<2, NR>(g, xf, ldxf, m0, n0);
  else tile<1, NR>(g, xf, ldxf, m0, n0);
}

}  // namespace

void dequant_int8_convert_avx2(const DequantInt8Args& g, float* xf, int64_t ldxf, int64_t m0, int64_t m1) {
  for (int64_t m = m0; m < m1; ++m) {
    const uint16_t* row = static_cast<const uint16_t*>(g.x) + m * g.ldx;
    float* o = xf + m * ldxf;
    int64_t k = 0;
    for (; k + 8 <= g.K; k += 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k));
      const __m256 v = g.x_kind == InKind::kFloat16 ? _mm256_cvtph_ps(h)
                                                    : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
      _mm256_storeu_ps(o + k, v);
    }
    for (; k < g.K; ++k) o[k] = g.x_kind == InKind::kFloat16 ? f16_to_f32(row[k]) : bf16_to_f32(row[k]);
  }
}

void dequant_int8_block_avx2(const DequantInt8Args& g, const float* xf, int64_t ldxf, int64_t m0, int64_t m1,
                             int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; n += kNR) {
    const int64_t nr = n1 - n;
    for (int64_t m = m0; m < m1; m += kMR) {
      const int64_t mr = m1 - m < kMR ? m1 - m : kMR;
      if (nr >= 4) tile_m<4>(g, xf, ldxf, m, mr, n);
      else if (nr == 3) tile_m<3>(g, xf, ldxf, m, mr, n);
      else if (nr == 2) tile_m<2>(g, xf, ldxf, m, mr, n);
      else tile_m<1>(g, xf, ldxf, m, mr, n);
    }
  }
}

}  // namespace slim
