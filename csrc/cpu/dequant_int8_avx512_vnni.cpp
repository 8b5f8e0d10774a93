// dequant_mm_int8 (W8A16), AVX-512 (compiled with the avx512_vnni tier's flags; uses F/BW/VL only).
// Register tile: NR weight rows x MR activation rows, one 16-lane float32 accumulator per (m, n),
// reduced horizontally once at the end of K. 16 int8 weights -> vpmovsxbd -> vcvtdq2ps -> FMA with
// x[m, k:k+16]; K tails masked.
#include <immintrin.h>

#include <cstdint>

#include "slim/dequant_int8.h"

namespace slim {
namespace {

constexpr int kNR = 4, kMR = 6;

inline __mmask16 tail_mask(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1); }

// 4 accumulators -> their 4 horizontal sums.
inline __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
  __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
  __m256 b8 = _mm256_add_ps(_mm512_castps512_ps256(b), _mm512_extractf32x8_ps(b, 1));
  __m256 c8 = _mm256_add_ps(_mm512_castps512_ps256(c), _mm512_extractf32x8_ps(c, 1));
  __m256 d8 = _mm256_add_ps(_mm512_castps512_ps256(d), _mm512_extractf32x8_ps(d, 1));
  __m256 ab = _mm256_hadd_ps(a8, b8), cd = _mm256_hadd_ps(c8, d8);
  __m256 abcd = _mm256_hadd_ps(ab, cd);  // lanes: a0 b0 c0 d0 | a1 b1 c1 d1
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

inline __m512 wload(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline __m512 wload_mask(const int8_t* p, __mmask16 k) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k, p)));
}

template <int MR, int NR>
void tile(const DequantInt8Args& g, const float* xf, int64_t ldxf, int64_t m0, int64_t n0) {
  const int8_t* w = g.w + n0 * g.ldw;
  const float* x = xf + m0 * ldxf;
  const int64_t K = g.K, ldw = g.ldw;
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = wload(w + j * ldw + k);
    for (int i = 0; i < MR; ++i) {
      const __m512 xv = _mm512_loadu_ps(x + i * ldxf + k);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  if (k < K) {
    const __mmask16 msk = tail_mask(K - k);
    __m512 wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = wload_mask(w + j * ldw + k, msk);
    for (int i = 0; i < MR; ++i) {
      const __m512 xv = _mm512_maskz_loadu_ps(msk, x + i * ldxf + k);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    alignas(16) float s[4];
    if (NR == 4) {
      _mm_store_ps(s, hsum4(acc[i][0], acc[i][NR > 1 ? 1 : 0], acc[i][NR > 2 ? 2 : 0], acc[i][NR > 3 ? 3 : 0]));
    } else {
      for (int j = 0; j < NR; ++j) s[j] = _mm512_reduce_add_ps(acc[i][j]);
    }
    for (int j = 0; j < NR; ++j) dequant_int8_store(g, m0 + i, n0 + j, s[j]);
  }
}

template <int NR>
void tile_m(const DequantInt8Args& g, const float* xf, int64_t ldxf, int64_t m0, int64_t mr, int64_t n0) {
  switch (mr) {
    case 6: tile<6, NR>(g, xf, ldxf, m0, n0); break;
    case 5: tile<5, NR>(g, xf, ldxf, m0, n0); break;
    case 4: tile<4, NR>(g, xf, ldxf, m0, n0); break;
    case 3: tile<3, NR>(g, xf, ldxf, m0, n0); break;
    case 2: tile<2, NR>(g, xf, ldxf, m0, n0); break;
    default: tile<1, NR>(g, xf, ldxf, m0, n0); break;
  }
}

}  // namespace

void dequant_int8_convert_avx512_vnni(const DequantInt8Args& g, float* xf, int64_t ldxf, int64_t m0, int64_t m1) {
  for (int64_t m = m0; m < m1; ++m) {
    const uint16_t* row = static_cast<const uint16_t*>(g.x) + m * g.ldx;
    float* o = xf + m * ldxf;
    for (int64_t k = 0; k < g.K; k += 16) {
      const __mmask16 msk = tail_mask(g.K - k);
      const __m256i h = _mm256_maskz_loadu_epi16(msk, row + k);
      const __m512 v = g.x_kind == InKind::kFloat16 ? _mm512_cvtph_ps(h)
                                                    : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
      _mm512_mask_storeu_ps(o + k, msk, v);
    }
  }
}

void dequant_int8_block_avx512_vnni(const DequantInt8Args& g, const float* xf, int64_t ldxf, int64_t m0, int64_t m1,
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
