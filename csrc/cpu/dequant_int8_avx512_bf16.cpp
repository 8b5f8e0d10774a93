// dequant_mm_int8 (W8A16) with bf16 dot products (AVX512-BF16 vdpbf16ps). int8 weights are exact in
// bf16, so only x is rounded: once per call, to bf16 rows padded with zeros to a multiple of 32. A
// tile's 32 int8 weights per row -> 2 x 16 float32 -> 32 bf16, or, from two row tiles of x on, the
// NR weight rows are converted once into bf16 scratch and the tiles read them densely.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "slim/dequant_int8.h"
#include "slim/scratch.h"

namespace slim {
namespace {

inline __m512bh as_bh(__m512i v) { return (__m512bh)v; }
inline __mmask32 tail_mask32(int64_t n) { return n >= 32 ? __mmask32(0xFFFFFFFFu) : __mmask32((1u << n) - 1); }

// 32 int8 weights at p (those at or past `left` read as 0) as 32 bf16, in order.
inline __m512bh w_bf16(const int8_t* p, int64_t left) {
  const __m256i b = _mm256_maskz_loadu_epi8(tail_mask32(left), p);
  const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(b)));
  const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(b, 1)));
  return _mm512_cvtne2ps_pbh(hi, lo);
}

// Calls f(integral_constant<MR'>, integral_constant<NR'>) with the register tile for an mr x nr tail.
template <int MR, int NR, class F>
inline void with_tile(int64_t mr, int64_t nr, F&& f) {
  if constexpr (MR > 1) {
    if (mr < MR) return with_tile<MR - 1, NR>(mr, nr, f);
  }
  if constexpr (NR > 1) {
    if (nr < NR) return with_tile<MR, NR - 1>(mr, nr, f);
  }
  f(std::integral_constant<int, MR>{}, std::integral_constant<int, NR>{});
}

// MR x NR outputs over the padded K; wv(j, k) gives weight row j's 32 bf16 at k.
template <int MR, int NR, class W>
inline void tile(const DequantInt8Args& g, const uint16_t* xb, int64_t ldxb, int64_t m0, int64_t n0, W&& wv) {
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  const uint16_t* x = xb + m0 * ldxb;
  for (int64_t k = 0; k < ldxb; k += 32) {
    __m512bh w[NR];
    for (int j = 0; j < NR; ++j) w[j] = wv(j, k);
    for (int i = 0; i < MR; ++i) {
      const __m512bh xv = as_bh(_mm512_loadu_si512(x + i * ldxb + k));
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, w[j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) dequant_int8_store(g, m0 + i, n0 + j, _mm512_reduce_add_ps(acc[i][j]));
}

}  // namespace

void dequant_int8_convert_avx512_bf16(const DequantInt8Args& g, uint16_t* xb, int64_t ldxb, int64_t m0, int64_t m1) {
  const int64_t esize = g.x_kind == InKind::kFloat32 ? 4 : 2;
  for (int64_t m = m0; m < m1; ++m) {
    const char* row = static_cast<const char*>(g.x) + m * g.ldx * esize;
    uint16_t* o = xb + m * ldxb;
    for (int64_t k = 0; k < ldxb; k += 32) {
      const int64_t left = std::max<int64_t>(0, g.K - k);
      const __mmask32 msk = tail_mask32(left);
      __m512i v;
      if (g.x_kind == InKind::kBFloat16) {
        v = _mm512_maskz_loadu_epi16(msk, row + k * 2);
      } else {
        const __mmask16 lo = __mmask16(msk), hi = __mmask16(msk >> 16);
        __m512 a, b;
        if (g.x_kind == InKind::kFloat32) {
          a = _mm512_maskz_loadu_ps(lo, row + k * 4);
          b = _mm512_maskz_loadu_ps(hi, row + (k + 16) * 4);
        } else {
          a = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lo, row + k * 2));
          b = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(hi, row + (k + 16) * 2));
        }
        v = (__m512i)_mm512_cvtne2ps_pbh(b, a);
      }
      _mm512_storeu_si512(o + k, v);
    }
  }
}

void dequant_int8_block_avx512_bf16(const DequantInt8Args& g, const uint16_t* xb, int64_t ldxb, int64_t m0,
                                    int64_t m1, int64_t n0, int64_t n1) {
  constexpr int MR = kDequantInt8Bf16MR, NR = kDequantInt8Bf16NR;
  const bool dense = m1 - m0 >= 2 * MR;
  auto* wb = dense ? static_cast<uint16_t*>(thread_scratch(1, size_t(NR * ldxb) * sizeof(uint16_t) + 64)) : nullptr;
  for (int64_t n = n0; n < n1; n += NR) {
    const int64_t nr = std::min<int64_t>(NR, n1 - n);
    const int8_t* w = g.w + n * g.ldw;
    if (dense)
      for (int64_t j = 0; j < nr; ++j)
        for (int64_t k = 0; k < ldxb; k += 32)
          _mm512_storeu_si512(wb + j * ldxb + k, (__m512i)w_bf16(w + j * g.ldw + k, g.K - k));
    for (int64_t m = m0; m < m1; m += MR)
      with_tile<MR, NR>(std::min<int64_t>(MR, m1 - m), nr, [&](auto mr, auto nrc) {
        constexpr int TM = decltype(mr)::value, TN = decltype(nrc)::value;
        if (dense)
          tile<TM, TN>(g, xb, ldxb, m, n, [&](int j, int64_t k) { return as_bh(_mm512_loadu_si512(wb + j * ldxb + k)); });
        else
          tile<TM, TN>(g, xb, ldxb, m, n, [&](int j, int64_t k) { return w_bf16(w + j * g.ldw + k, g.K - k); });
      });
  }
}

}  // namespace slim
