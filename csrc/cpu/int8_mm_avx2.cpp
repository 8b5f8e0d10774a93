// int8 GEMM, AVX2. vpmaddubsw saturates on full-range int8, so instead: weights sign-extended on the
// fly (vpmovsxbw of 16 packed bytes = 4 columns x 4 k), activations pre-widened to int16 once per
// call, and vpmaddwd (exact: |a*b + a*b| <= 2^15) against the 4 activations of the k group
// broadcast as a 64-bit pattern. Lanes then hold (column, k01) and (column, k23) partial sums,
// reduced pairwise once per tile. Register tile: MR (<= 2) rows x one 16-column panel.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "slim/int8_mm_epilogue.h"
#include "slim/int8_mm.h"

namespace slim {
namespace {

inline int64_t load_u64(const int16_t* p) { int64_t v; std::memcpy(&v, p, 8); return v; }

// acc holds 4 columns as (col, k01), (col, k23) lane pairs; returns 8 consecutive column sums.
inline __m256i reduce_pairs(__m256i x, __m256i y) {
  return _mm256_permute4x64_epi64(_mm256_hadd_epi32(x, y), 0xD8);
}

template <int MR>
void tile(const Int8MmArgs& g, const int16_t* A, int64_t Kp, const int8_t* B, int64_t m, int64_t n0) {
  __m256i acc[MR][4];
  for (int i = 0; i < MR; ++i)
    for (int c = 0; c < 4; ++c) acc[i][c] = _mm256_setzero_si256();
  const int64_t Kg = Kp / 4;
  for (int64_t kg = 0; kg < Kg; ++kg) {
    __m256i a[MR];
    for (int i = 0; i < MR; ++i) a[i] = _mm256_set1_epi64x(load_u64(A + i * Kp + kg * 4));
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      const __m256i b = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(B + kg * 64 + c * 16)));
      for (int i = 0; i < MR; ++i) acc[i][c] = _mm256_add_epi32(acc[i][c], _mm256_madd_epi16(a[i], b));
    }
  }
  alignas(32) int32_t out[16];
  const int64_t nvalid = std::min<int64_t>(16, g.N - n0);
  for (int i = 0; i < MR; ++i) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(out), reduce_pairs(acc[i][0], acc[i][1]));
    _mm256_store_si256(reinterpret_cast<__m256i*>(out + 8), reduce_pairs(acc[i][2], acc[i][3]));
    epilogue_row(g, m + i, n0, nvalid, out);
  }
}

}  // namespace

size_t int8_mm_stage_bytes_avx2(int64_t M, int64_t K) { return size_t(M * ((K + 3) / 4 * 4) * 2); }

// The activation rows as int16, zero-padded to Kp.
void int8_mm_stage_avx2(const Int8MmArgs& g, void* staged) {
  const int64_t Kp = (g.K + 3) / 4 * 4;
  int16_t* A = static_cast<int16_t*>(staged);
  for (int64_t r = 0; r < g.M; ++r) {
    const int8_t* src = g.a + r * g.lda;
    int16_t* dst = A + r * Kp;
    int64_t k = 0;
    for (; k + 16 <= g.K; k += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k),
                          _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k))));
    for (; k < g.K; ++k) dst[k] = src[k];
    for (; k < Kp; ++k) dst[k] = 0;
  }
}

void int8_mm_block_avx2(const Int8MmArgs& g, const void* staged, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  constexpr int MR = 2;
  const int64_t Kp = (g.K + 3) / 4 * 4;
  const int16_t* A = static_cast<const int16_t*>(staged) + m0 * Kp;
  const int64_t pstride = 16 * Kp;
  for (int64_t p = p0; p < p1; ++p) {
    const int8_t* B = g.packed + p * pstride;
    int64_t m = m0;
    for (; m + MR <= m1; m += MR) tile<MR>(g, A + (m - m0) * Kp, Kp, B, m, p * 16);
    if (m < m1) tile<1>(g, A + (m - m0) * Kp, Kp, B, m, p * 16);
  }
}

}  // namespace slim
