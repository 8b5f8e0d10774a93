// int8 GEMM, AVX2. Two exact paths, chosen per call by the range of the activations (the stage scans them):
//
// * full range (any int8 a): vpmaddubsw would saturate, so weights are sign-extended on the fly (vpmovsxbw
//   of 16 packed bytes = 4 columns x 4 k), activations are pre-widened to int16 once per call, and vpmaddwd
//   (exact: |a*b + a*b| <= 2^15) runs against the 4 activations of the k group broadcast as a 64-bit
//   pattern. Lanes hold (column, k01) and (column, k23) partial sums, reduced pairwise once per tile.
//   16 multiply-adds per vpmaddwd: 2 instructions (madd + add) per 16 MACs whatever the tile, so the
//   tile only amortizes the sign extension and the broadcasts.
// * 7-bit (every a in [-64, 63], e.g. act_bits=7 quantization): activations staged unsigned as a + 64 in
//   [0, 127], and vpmaddubsw(a + 64, b) is exact (|127*128 + 127*128| < 2^15), then vpmaddwd with ones
//   sums the 4 k of a column into int32: 3 instructions per 32 MACs, FBGEMM's AVX2 scheme. The offset is
//   removed by acc -= 64 * colsum[n] (column sums stored after the panels by pack_int8_cpu).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "slim/int8_mm_epilogue.h"
#include "slim/int8_mm.h"

namespace slim {
namespace {

// Staged buffer: a 64-byte header (the path), then the activation rows (row stride Kp, zero-padded):
// int16 for the full-range path, uint8 (a + 64) for the 7-bit path.
constexpr int64_t kHeader = 64;
enum StagedPath : int32_t { kWide = 0, kSevenBit = 1 };

inline int64_t load_u64(const int16_t* p) { int64_t v; std::memcpy(&v, p, 8); return v; }
inline int32_t load_u32(const uint8_t* p) { int32_t v; std::memcpy(&v, p, 4); return v; }

// acc holds 4 columns as (col, k01), (col, k23) lane pairs; returns 8 consecutive column sums.
inline __m256i reduce_pairs(__m256i x, __m256i y) {
  return _mm256_permute4x64_epi64(_mm256_hadd_epi32(x, y), 0xD8);
}

// acc0 += vpmaddwd(a, b0), acc1 += vpmaddwd(a, b1) (7-bit path: vpmaddwd(vpmaddubsw(a, b), ones)). Inline
// asm: with the intrinsics GCC 12 keeps the accumulators of these tiles in memory (seen in the
// disassembly); the asm and named accumulators keep each in its register.
inline void madd2(__m256i& acc0, __m256i& acc1, __m256i a, __m256i b0, __m256i b1) {
  __m256i t;
  __asm__("vpmaddwd %[b0], %[a], %[t]\n\tvpaddd %[t], %[c0], %[c0]\n\t"
          "vpmaddwd %[b1], %[a], %[a]\n\tvpaddd %[a], %[c1], %[c1]"
          : [c0] "+x"(acc0), [c1] "+x"(acc1), [t] "=&x"(t), [a] "+x"(a)
          : [b0] "x"(b0), [b1] "x"(b1));
}
inline void maddubs2(__m256i& acc0, __m256i& acc1, __m256i a, __m256i b0, __m256i b1, __m256i ones) {
  __m256i t;
  __asm__("vpmaddubsw %[b0], %[a], %[t]\n\tvpmaddwd %[ones], %[t], %[t]\n\tvpaddd %[t], %[c0], %[c0]\n\t"
          "vpmaddubsw %[b1], %[a], %[a]\n\tvpmaddwd %[ones], %[a], %[a]\n\tvpaddd %[a], %[c1], %[c1]"
          : [c0] "+x"(acc0), [c1] "+x"(acc1), [t] "=&x"(t), [a] "+x"(a)
          : [b0] "x"(b0), [b1] "x"(b1), [ones] "x"(ones));
}

#define SLIM_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)
#define SLIM_DECL(i) __m256i c##i##0 = _mm256_setzero_si256(), c##i##1 = c##i##0, c##i##2 = c##i##0, c##i##3 = c##i##0;
#define SLIM_WIDE(i)                                                          \
  if constexpr (MR > i) {                                                     \
    const __m256i a = _mm256_set1_epi64x(load_u64(A + i * Kp + kg * 4));     \
    madd2(c##i##0, c##i##1, a, b0, b1);                                       \
    if constexpr (CQ == 4) madd2(c##i##2, c##i##3, a, b2, b3);                \
  }
#define SLIM_7BIT(i) \
  if constexpr (MR > i) maddubs2(c##i##0, c##i##1, _mm256_set1_epi32(load_u32(A + i * Kp + kg * 4)), b0, b1, ones);
#define SLIM_PAIRS(i)                                                                                        \
  if constexpr (MR > i) {                                                                                    \
    _mm256_store_si256(reinterpret_cast<__m256i*>(out[i]), reduce_pairs(c##i##0, c##i##1));                 \
    if constexpr (CQ == 4) _mm256_store_si256(reinterpret_cast<__m256i*>(out[i] + 8), reduce_pairs(c##i##2, c##i##3)); \
  }
#define SLIM_OFFSET(i)                                                                               \
  if constexpr (MR > i) {                                                                            \
    _mm256_store_si256(reinterpret_cast<__m256i*>(out[i]), _mm256_sub_epi32(c##i##0, s0));           \
    _mm256_store_si256(reinterpret_cast<__m256i*>(out[i] + 8), _mm256_sub_epi32(c##i##1, s1));       \
  }

// Full-range path: MR rows x 4 * CQ columns (CQ quads of 4 columns from B, 16 bytes apart per k group of
// 64 bytes): CQ = 2 (half a panel) for MR <= 6, CQ = 4 (a whole panel) for MR <= 2; MR * CQ accumulators
// + CQ weight registers + 2 temporaries <= 16 ymm. pf, pf_lines: this tile's share of the next panel's
// cache lines, prefetched into L2 (see NextPanel).
template <int MR, int CQ>
void tile_wide(const Int8MmArgs& g, const int16_t* A, int64_t Kp, const int8_t* B, int64_t m, int64_t n0,
               const int8_t* pf, int64_t pf_lines) {
  SLIM_ROWS(SLIM_DECL)
  const int64_t Kg = Kp / 4;
  for (int64_t kg = 0; kg < Kg; ++kg) {
    if (kg < pf_lines) _mm_prefetch(reinterpret_cast<const char*>(pf + kg * 64), _MM_HINT_T1);
    const __m256i b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(B + kg * 64)));
    const __m256i b1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(B + kg * 64 + 16)));
    __m256i b2 = b0, b3 = b1;
    if constexpr (CQ == 4) {
      b2 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(B + kg * 64 + 32)));
      b3 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(B + kg * 64 + 48)));
    }
    SLIM_ROWS(SLIM_WIDE)
  }
  alignas(32) int32_t out[MR][16];
  SLIM_ROWS(SLIM_PAIRS)
  const int64_t nvalid = std::min<int64_t>(4 * CQ, g.N - n0);
  for (int i = 0; i < MR; ++i) epilogue_row(g, m + i, n0, nvalid, out[i]);
}

// 7-bit path: MR (<= 6) rows x 16 columns; each accumulator holds 8 whole columns (no pair reduction).
template <int MR>
void tile_7bit(const Int8MmArgs& g, const uint8_t* A, int64_t Kp, const int8_t* B, const int32_t* colsum, int64_t m,
               int64_t n0, const int8_t* pf, int64_t pf_lines) {
  SLIM_ROWS(SLIM_DECL)
  const __m256i ones = _mm256_set1_epi16(1);
  const int64_t Kg = Kp / 4;
  for (int64_t kg = 0; kg < Kg; ++kg) {
    if (kg < pf_lines) _mm_prefetch(reinterpret_cast<const char*>(pf + kg * 64), _MM_HINT_T1);
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(B + kg * 64));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(B + kg * 64 + 32));
    SLIM_ROWS(SLIM_7BIT)
  }
  const __m256i s0 = _mm256_slli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(colsum)), 6);
  const __m256i s1 = _mm256_slli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(colsum + 8)), 6);
  alignas(32) int32_t out[MR][16];
  SLIM_ROWS(SLIM_OFFSET)
  const int64_t nvalid = std::min<int64_t>(16, g.N - n0);
  for (int i = 0; i < MR; ++i) epilogue_row(g, m + i, n0, nvalid, out[i]);
}
#undef SLIM_ROWS
#undef SLIM_DECL
#undef SLIM_WIDE
#undef SLIM_7BIT
#undef SLIM_PAIRS
#undef SLIM_OFFSET

// The next panel's cache lines, shared out over the row tiles of the current one: while the tiles
// after the first compute on a panel already in L2, the next one streams in, so that memory and
// compute overlap (at M = 8 the former kernel took 1.9x the time of FBGEMM's AVX2 path, which there
// takes its memory-bound M = 1 time: bench/results/2026-11-30-peer-cpu.md, AVX2 section).
struct NextPanel {
  const int8_t* at;
  int64_t left, share;
  const int8_t* take(int64_t* lines) {
    *lines = std::min(share, left);
    const int8_t* p = at;
    at += *lines * 64;
    left -= *lines;
    return p;
  }
};

// Rows [m, m1) in tiles of MR rows, the remainder in one smaller tile.
template <int MR, int CQ>
void rows_wide(const Int8MmArgs& g, const int16_t* A, int64_t Kp, const int8_t* B, int64_t m, int64_t m1, int64_t n0,
               NextPanel* next) {
  int64_t lines;
  for (; m + MR <= m1; m += MR, A += MR * Kp) {
    const int8_t* pf = next->take(&lines);
    tile_wide<MR, CQ>(g, A, Kp, B, m, n0, pf, lines);
  }
  if constexpr (MR > 1)
    if (m < m1) rows_wide<MR - 1, CQ>(g, A, Kp, B, m, m1, n0, next);
}
template <int MR>
void rows_7bit(const Int8MmArgs& g, const uint8_t* A, int64_t Kp, const int8_t* B, const int32_t* colsum, int64_t m,
               int64_t m1, int64_t n0, NextPanel* next) {
  int64_t lines;
  for (; m + MR <= m1; m += MR, A += MR * Kp) {
    const int8_t* pf = next->take(&lines);
    tile_7bit<MR>(g, A, Kp, B, colsum, m, n0, pf, lines);
  }
  if constexpr (MR > 1)
    if (m < m1) rows_7bit<MR - 1>(g, A, Kp, B, colsum, m, m1, n0, next);
}
// Rows per tile (the M split unit of kernels_for in int8_mm.cpp). Measured on 36 x 256 x 4096, one
// thread: full-range 6 rows 1.15x the former 2-row x 16-column tile (4 rows: 1.09x; the bound is 2
// instructions per 16 MACs); 7-bit 1.6x the former full-range tile with 4 to 6 rows alike.
constexpr int kRows = 6;

// True when every a[m, k] lies in [-64, 63].
bool fits_7bit(const Int8MmArgs& g) {
  const __m256i lo = _mm256_set1_epi8(-64), hi = _mm256_set1_epi8(63);
  __m256i out = _mm256_setzero_si256();
  for (int64_t r = 0; r < g.M; ++r) {
    const int8_t* src = g.a + r * g.lda;
    int64_t k = 0;
    for (; k + 32 <= g.K; k += 32) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + k));
      out = _mm256_or_si256(out, _mm256_or_si256(_mm256_cmpgt_epi8(v, hi), _mm256_cmpgt_epi8(lo, v)));
    }
    for (; k < g.K; ++k)
      if (src[k] < -64 || src[k] > 63) return false;
  }
  return _mm256_testz_si256(out, out);
}

}  // namespace

size_t int8_mm_stage_bytes_avx2(int64_t M, int64_t K) { return size_t(kHeader + M * ((K + 3) / 4 * 4) * 2); }

void int8_mm_stage_avx2(const Int8MmArgs& g, void* staged) {
  const int64_t Kp = (g.K + 3) / 4 * 4;
  const bool seven = fits_7bit(g);
  *static_cast<int32_t*>(staged) = seven ? kSevenBit : kWide;
  if (seven) {  // a + 64 as uint8; the pad holds 0 (it meets zero weights, and colsum has no pad term).
    uint8_t* A = static_cast<uint8_t*>(staged) + kHeader;
    const __m256i off = _mm256_set1_epi8(64);
    for (int64_t r = 0; r < g.M; ++r) {
      const int8_t* src = g.a + r * g.lda;
      uint8_t* dst = A + r * Kp;
      int64_t k = 0;
      for (; k + 32 <= g.K; k += 32)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k),
                            _mm256_add_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + k)), off));
      for (; k < g.K; ++k) dst[k] = uint8_t(src[k] + 64);
      for (; k < Kp; ++k) dst[k] = 0;
    }
    return;
  }
  int16_t* A = reinterpret_cast<int16_t*>(static_cast<char*>(staged) + kHeader);
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
  const int64_t Kp = (g.K + 3) / 4 * 4, Np = (g.N + 15) / 16 * 16;
  const int64_t pstride = 16 * Kp, Kg = Kp / 4;  // a panel is Kg cache lines
  const char* data = static_cast<const char*>(staged) + kHeader;
  const bool seven = *static_cast<const int32_t*>(staged) == kSevenBit;
  // Up to 2 rows (decode): whole-panel tiles, one pass per panel. More: half-panel tiles of 6 rows.
  const bool few = m1 - m0 <= 2;
  const int64_t row_tiles = (m1 - m0 + kRows - 1) / kRows, tiles = row_tiles * (seven || few ? 1 : 2);
  // Only when the rows pass over a panel more than once: a single pass streams well without it, and
  // the prefetches cost time there (measured at M = 1: 0.83x without this condition).
  const bool prefetch = row_tiles > 1;
  auto next_panel = [&](int64_t p) {
    const bool none = !prefetch || p + 1 >= p1;
    return NextPanel{g.packed + (p + 1) * pstride, none ? 0 : Kg, (Kg + tiles - 1) / tiles};
  };
  if (seven) {
    const uint8_t* A = reinterpret_cast<const uint8_t*>(data) + m0 * Kp;
    const int32_t* colsum = reinterpret_cast<const int32_t*>(g.packed + Np * Kp);
    for (int64_t p = p0; p < p1; ++p) {
      NextPanel next = next_panel(p);
      rows_7bit<kRows>(g, A, Kp, g.packed + p * pstride, colsum + p * 16, m0, m1, p * 16, &next);
    }
    return;
  }
  const int16_t* A = reinterpret_cast<const int16_t*>(data) + m0 * Kp;
  if (few) {
    for (int64_t p = p0; p < p1; ++p) {
      NextPanel next = next_panel(p);
      rows_wide<2, 4>(g, A, Kp, g.packed + p * pstride, m0, m1, p * 16, &next);
    }
    return;
  }
  for (int64_t p = p0; p < p1; ++p) {
    NextPanel next = next_panel(p);
    for (int64_t half = 0; half < 2; ++half) {  // the second half of the last panel may be all padding
      const int64_t n0 = p * 16 + half * 8;
      if (n0 < g.N) rows_wide<kRows, 2>(g, A, Kp, g.packed + p * pstride + half * 32, m0, m1, n0, &next);
    }
  }
}

}  // namespace slim
