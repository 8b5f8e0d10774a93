// int8 GEMM, AVX-512 VNNI: vpdpbusd (u8 x s8, 4-way dot into int32, non-saturating).
// Activations are made unsigned (a ^ 0x80 = a + 128) in a per-thread staging buffer padded to Kp
// (so no read past a row end when K % 4 != 0); the result is corrected by acc -= 128 * colsum[n],
// with the column sums stored after the panels. All int32 arithmetic wraps mod 2^32 exactly.
// Register tile: MR rows x NR panels of 16 columns (8 x 3 = 24 zmm accumulators); per group of 4 k
// one 64-byte load per panel and one 4-byte broadcast per row.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "slim/int8_mm_epilogue.h"
#include "slim/int8_mm.h"

namespace slim {
namespace {

inline int32_t load_u32(const uint8_t* p) { int32_t v; std::memcpy(&v, p, 4); return v; }

// acc += dot4(u8 a, s8 b) per int32 lane (vpdpbusd). Inline asm rather than _mm512_dpbusd_epi32: with
// the intrinsic GCC 12 copies every accumulator twice per use and spills a 24-accumulator tile
// (measured in the disassembly); the asm ties the accumulator in place.
inline __m512i dpbusd(__m512i acc, __m512i a, __m512i b) {
  __asm__("vpdpbusd %[b], %[a], %[acc]" : [acc] "+v"(acc) : [a] "v"(a), [b] "v"(b));
  return acc;
}

// Named accumulators, not an array: GCC keeps an array of zmm partly in memory (measured: stack
// stores in the inner loop); unused ones (MR < 8 or NR < 3) are compiled away by the if constexpr.
#define SLIM_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define SLIM_DECL(i) __m512i c##i##0 = _mm512_setzero_si512(), c##i##1 = c##i##0, c##i##2 = c##i##0;
#define SLIM_FMA(i)                                                                                \
  if constexpr (MR > i) {                                                                          \
    const __m512i a = _mm512_set1_epi32(load_u32(A + i * Kp + kg * 4));                            \
    c##i##0 = dpbusd(c##i##0, a, b0);                                                              \
    if constexpr (NR > 1) c##i##1 = dpbusd(c##i##1, a, b1);                                        \
    if constexpr (NR > 2) c##i##2 = dpbusd(c##i##2, a, b2);                                        \
  }
#define SLIM_STORE(i)                                                                              \
  if constexpr (MR > i) {                                                                          \
    _mm512_store_si512(&out[i][0], _mm512_sub_epi32(c##i##0, s0));                                 \
    if constexpr (NR > 1) _mm512_store_si512(&out[i][16], _mm512_sub_epi32(c##i##1, s1));          \
    if constexpr (NR > 2) _mm512_store_si512(&out[i][32], _mm512_sub_epi32(c##i##2, s2));          \
  }

// An MR x (NR*16) tile over all Kg groups of 4 k, then the epilogue.
// A: staged unsigned activations (row stride Kp); B: first panel; pstride: bytes between panels.
template <int MR, int NR>
void tile(const Int8MmArgs& g, const uint8_t* A, int64_t Kp, const int8_t* B, int64_t pstride, int64_t Kg,
          const int32_t* colsum, int64_t m, int64_t n0) {
  SLIM_ROWS(SLIM_DECL)
  const int8_t* B1 = B + (NR > 1 ? pstride : 0);
  const int8_t* B2 = B + (NR > 2 ? 2 * pstride : 0);
  for (int64_t kg = 0; kg < Kg; ++kg) {
    const __m512i b0 = _mm512_loadu_si512(B + kg * 64);
    const __m512i b1 = NR > 1 ? _mm512_loadu_si512(B1 + kg * 64) : b0;
    const __m512i b2 = NR > 2 ? _mm512_loadu_si512(B2 + kg * 64) : b0;
    SLIM_ROWS(SLIM_FMA)
  }
  // acc - 128 * colsum, then the shared epilogue row by row.
  alignas(64) int32_t out[MR][NR * 16];
  const __m512i s0 = _mm512_slli_epi32(_mm512_loadu_si512(colsum), 7);
  const __m512i s1 = NR > 1 ? _mm512_slli_epi32(_mm512_loadu_si512(colsum + 16), 7) : s0;
  const __m512i s2 = NR > 2 ? _mm512_slli_epi32(_mm512_loadu_si512(colsum + 32), 7) : s0;
  SLIM_ROWS(SLIM_STORE)
  const int64_t nvalid = std::min<int64_t>(NR * 16, g.N - n0);
  for (int i = 0; i < MR; ++i) epilogue_row(g, m + i, n0, nvalid, out[i]);
}
#undef SLIM_ROWS
#undef SLIM_DECL
#undef SLIM_FMA
#undef SLIM_STORE

using TileFn = void (*)(const Int8MmArgs&, const uint8_t*, int64_t, const int8_t*, int64_t, int64_t, const int32_t*,
                        int64_t, int64_t);

template <int NR>
TileFn pick_mr(int mr) {
  switch (mr) {
    case 1: return tile<1, NR>;
    case 2: return tile<2, NR>;
    case 3: return tile<3, NR>;
    case 4: return tile<4, NR>;
    case 5: return tile<5, NR>;
    case 6: return tile<6, NR>;
    case 7: return tile<7, NR>;
    default: return tile<8, NR>;
  }
}

TileFn pick(int mr, int nr) {
  if (nr == 1) return pick_mr<1>(mr);
  if (nr == 2) return pick_mr<2>(mr);
  return pick_mr<3>(mr);
}

}  // namespace

size_t int8_mm_stage_bytes_avx512_vnni(int64_t M, int64_t K) { return size_t(M * ((K + 3) / 4 * 4)); }

// a ^ 0x80 (= a + 128 as u8); pad bytes are 0x80 too (they meet zero weights anyway).
void int8_mm_stage_avx512_vnni(const Int8MmArgs& g, void* staged) {
  const int64_t Kp = (g.K + 3) / 4 * 4;
  uint8_t* A = static_cast<uint8_t*>(staged);
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  for (int64_t r = 0; r < g.M; ++r) {
    const int8_t* src = g.a + r * g.lda;
    uint8_t* dst = A + r * Kp;
    for (int64_t k = 0; k < Kp; k += 64) {
      const int64_t nk = std::min<int64_t>(64, g.K - k);
      const __mmask64 lm = nk >= 64 ? ~__mmask64(0) : nk <= 0 ? __mmask64(0) : (__mmask64(1) << nk) - 1;
      const int64_t ns = std::min<int64_t>(64, Kp - k);
      const __mmask64 sm = ns >= 64 ? ~__mmask64(0) : (__mmask64(1) << ns) - 1;
      _mm512_mask_storeu_epi8(dst + k, sm, _mm512_xor_si512(_mm512_maskz_loadu_epi8(lm, src + k), flip));
    }
  }
}

void int8_mm_block_avx512_vnni(const Int8MmArgs& g, const void* staged, int64_t m0, int64_t m1, int64_t p0,
                               int64_t p1) {
  constexpr int MR = 8, NR = 3;
  const int64_t Kp = (g.K + 3) / 4 * 4, Np = (g.N + 15) / 16 * 16;
  const uint8_t* A = static_cast<const uint8_t*>(staged) + m0 * Kp;
  const int32_t* colsum = reinterpret_cast<const int32_t*>(g.packed + Np * Kp);
  const int64_t pstride = 16 * Kp, Kg = Kp / 4;
  // Panel group outer: its weights (3 x 16 x Kp bytes, 192 KB at K = 4096) stay in L2 while all the
  // row tiles pass over them; each tile runs the full K in registers. (Measured: blocking K so the
  // block sits in L1, with partial sums spilled between blocks, was ~8% slower at M = 32..128.)
  for (int64_t p = p0; p < p1; p += NR) {
    const int nr = int(std::min<int64_t>(NR, p1 - p));
    const int8_t* B = g.packed + p * pstride;
    for (int64_t m = m0; m < m1; m += MR) {
      const int mr = int(std::min<int64_t>(MR, m1 - m));
      pick(mr, nr)(g, A + (m - m0) * Kp, Kp, B, pstride, Kg, colsum + p * 16, m, p * 16);
    }
  }
}

}  // namespace slim
