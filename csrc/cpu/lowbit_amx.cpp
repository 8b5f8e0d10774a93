// lowbit_mm on AMX-BF16 tiles (compiled with the amx flags; used for larger M): int4 here, 2- and
// 4-bit codebooks further down.
//
// Float32 results from bfloat16 tiles: an int4 weight is (q - z) * s, and q - z is an integer in
// [-255, 15], exact in bfloat16; the scale s multiplies each group's float32 partial sum. x is split
// into bfloat16 pieces by truncation, x = hi + mid + lo (8 + 8 + 8 significand bits: exact for normal
// x, which never rounds up into infinity): three pieces for float32 x, two for float16 (11 bits), one
// for bfloat16. The tile products are exact in float32, so the result is a float32 GEMM summed in
// another order; one tile product per piece and step is the price.
//
// Tiles (C += A * B, 16 x 16 float32): A = 16 weight rows x 32 k of decoded weights, B = one piece
// of x in the pair-interleaved layout (16 k pairs x 16 rows of x x 2), C[n][m]. Tile registers:
// 0-2 the pieces of x, 3-4 weights (two, so a load never waits on the products still reading the
// other), 5-7 three weight tiles' sums.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "slim/amx_tiles.h"
#include "slim/lowbit.h"
#include "slim/scratch.h"

namespace slim {
namespace {

constexpr int64_t kTileBytes = 1024;  // 16 rows x 64 bytes
constexpr int64_t kTileElems = 512;   // bfloat16s per tile

int64_t steps_of(int64_t k) { return (k + 31) / 32; }  // 32-k tile steps, the last one zero-padded

// bfloat16 pieces that hold every value of x's kind exactly (float16: 11 significand bits).
int pieces_of(InKind kind) { return kind == InKind::kBFloat16 ? 1 : kind == InKind::kFloat16 ? 2 : 3; }

// One 32-k step of three weight tiles against the P pieces of x: tiles 0..P-1 <- x, 3 and 4 <- weights
// (two, so a load never waits on the products still reading the other), sums in 5, 6, 7.
template <int P>
inline void int4_step(const uint16_t* xt, int64_t piece_stride, const uint16_t* wt, int64_t tile_stride) {
  _tile_loadd(0, xt, 64);
  if constexpr (P > 1) _tile_loadd(1, xt + piece_stride, 64);
  if constexpr (P > 2) _tile_loadd(2, xt + 2 * piece_stride, 64);
  _tile_loadd(3, wt, 64);
  _tile_loadd(4, wt + tile_stride, 64);
  _tile_dpbf16ps(5, 3, 0);
  _tile_dpbf16ps(6, 4, 0);
  if constexpr (P > 1) {
    _tile_dpbf16ps(5, 3, 1);
    _tile_dpbf16ps(6, 4, 1);
  }
  if constexpr (P > 2) {
    _tile_dpbf16ps(5, 3, 2);
    _tile_dpbf16ps(6, 4, 2);
  }
  _tile_loadd(3, wt + 2 * tile_stride, 64);
  _tile_dpbf16ps(7, 3, 0);
  if constexpr (P > 1) _tile_dpbf16ps(7, 3, 1);
  if constexpr (P > 2) _tile_dpbf16ps(7, 3, 2);
}

// 16 floats -> 16 float32 whose low 16 bits are zero (bfloat16 values as float32), by truncation.
inline __m512 trunc_bf16(__m512 v) {
  return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(int(0xFFFF0000u))));
}

inline __mmask16 head_mask(int64_t n) { return n >= 16 ? 0xFFFF : n <= 0 ? 0 : __mmask16((1u << n) - 1); }

// v in three bfloat16 pieces (as float32 with zero low halves), hi + mid + lo = v for normal v.
// Inf and NaN stay whole in hi (v - hi would be NaN for an infinite v).
inline void split3(__m512 v, __m512 (&p)[3]) {
  const __mmask16 finite = _mm512_cmp_ps_mask(_mm512_abs_ps(v), _mm512_set1_ps(INFINITY), _CMP_LT_OQ);
  p[0] = _mm512_mask_blend_ps(finite, v, trunc_bf16(v));
  const __m512 r1 = _mm512_maskz_sub_ps(finite, v, p[0]);
  p[1] = trunc_bf16(r1);
  p[2] = trunc_bf16(_mm512_sub_ps(r1, p[1]));
}

// Two float32 vectors that hold bfloat16 values (zero low halves) -> 16 dwords pairing lane j of lo
// (low half) with lane j of hi (high half): (hi & 0xFFFF0000) | (lo >> 16).
inline __m512i pair_halves(__m512 lo, __m512 hi) {
  return _mm512_ternarylogic_epi32(_mm512_castps_si512(hi), _mm512_set1_epi32(int(0xFFFF0000u)),
                                   _mm512_srli_epi32(_mm512_castps_si512(lo), 16), 0xEA);
}

// The `n` (8 or 16) code bytes of a 32-code step, of which the row holds `avail` from p on: at the
// row's end the rest read 0 and nothing past the row is touched (those codes meet zero x, or a mask).
inline __m128i step_bytes(const uint8_t* p, int64_t n, int64_t avail) {
  const auto* v = reinterpret_cast<const __m128i*>(p);
  if (avail >= n) return n == 16 ? _mm_loadu_si128(v) : _mm_loadl_epi64(v);
  return _mm_maskz_loadu_epi8(__mmask16((1u << avail) - 1), p);
}

// x[m, k0 .. k0 + 32) as float32, zero past K.
inline void load32(const LowbitMmArgs& g, int64_t m, int64_t k0, __m512& v0, __m512& v1) {
  const int64_t n = std::min<int64_t>(32, g.K - k0);
  const __mmask16 m0 = head_mask(n), m1 = head_mask(n - 16);
  if (g.x_kind == InKind::kFloat32) {
    const float* p = static_cast<const float*>(g.x) + m * g.ldx + k0;
    v0 = _mm512_maskz_loadu_ps(m0, p);
    v1 = _mm512_maskz_loadu_ps(m1, p + 16);
    return;
  }
  const uint16_t* p = static_cast<const uint16_t*>(g.x) + m * g.ldx + k0;
  const __m256i h0 = _mm256_maskz_loadu_epi16(m0, p), h1 = _mm256_maskz_loadu_epi16(m1, p + 16);
  if (g.x_kind == InKind::kFloat16) {
    v0 = _mm512_cvtph_ps(h0);
    v1 = _mm512_cvtph_ps(h1);
  } else {
    v0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h0), 16));
    v1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h1), 16));
  }
}

// In-register transpose of a 16 x 16 matrix of 32-bit elements.
inline void transpose16(__m512i (&r)[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  // r[4b + c], 128-bit lane L: column 4L + c of rows 4b .. 4b + 3. Output row 4L + c gathers lane L of
  // r[c], r[4 + c], r[8 + c], r[12 + c]: a 4 x 4 transpose of 128-bit lanes.
  for (int c = 0; c < 4; ++c) {
    const __m512i p = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x44), q = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x44);
    const __m512i u = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xEE), v = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xEE);
    t[c] = _mm512_shuffle_i32x4(p, q, 0x88);
    t[4 + c] = _mm512_shuffle_i32x4(p, q, 0xDD);
    t[8 + c] = _mm512_shuffle_i32x4(u, v, 0x88);
    t[12 + c] = _mm512_shuffle_i32x4(u, v, 0xDD);
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

}  // namespace

// xb: [piece (pieces_of)][m tile][step][k pair 16][m 16][2] bfloat16, zero past M and K.
int64_t lowbit_amx_x_elems(const LowbitMmArgs& g) {
  return pieces_of(g.x_kind) * ((g.M + 15) / 16) * steps_of(g.K) * kTileElems;
}

void lowbit_amx_prepare_x(const LowbitMmArgs& g, uint16_t* xb) {
  const int64_t mtiles = (g.M + 15) / 16, steps = steps_of(g.K), piece_stride = mtiles * steps * kTileElems;
  const int pieces = pieces_of(g.x_kind);
  for (int64_t mt = 0; mt < mtiles; ++mt)
    for (int64_t st = 0; st < steps; ++st) {
      __m512i piece[3][16];  // [piece][row of x]: 16 dwords, each a (k even, k odd) pair
      for (int r = 0; r < 16; ++r) {
        const int64_t m = mt * 16 + r;
        __m512 v[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
        if (m < g.M) load32(g, m, st * 32, v[0], v[1]);
        __m512 p0[3], p1[3];
        split3(v[0], p0);
        split3(v[1], p1);
        // Every piece is exact in bfloat16, so the converting instruction's rounding never acts, and a
        // NaN stays a NaN (truncating one whose payload sits in the low bits would make it Inf).
        for (int q = 0; q < 3; ++q) piece[q][r] = (__m512i)_mm512_cvtne2ps_pbh(p1[q], p0[q]);
      }
      for (int q = 0; q < pieces; ++q) {
        transpose16(piece[q]);  // row j: k pair j of the 16 rows of x
        uint16_t* dst = xb + q * piece_stride + (mt * steps + st) * kTileElems;
        for (int j = 0; j < 16; ++j) _mm512_store_si512(dst + j * 32, piece[q][j]);
      }
    }
}

void lowbit_amx_block_int4(const LowbitMmArgs& g, const uint16_t* xb, int64_t m0, int64_t m1, int64_t n0,
                           int64_t n1) {
  const int64_t K = g.K, steps = steps_of(K), rb = lowbit_row_bytes(g);
  const int64_t groups = K / g.group_size;
  const int64_t gsteps = groups == 1 ? steps : g.group_size / 32;  // group sizes are K or multiples of 32
  const int64_t mtiles = (g.M + 15) / 16, piece_stride = mtiles * steps * kTileElems;
  const int64_t mt0 = m0 / 16, mt1 = (m1 + 15) / 16;
  const int pieces = pieces_of(g.x_kind);
  // decoded weights of one group: [tile 3][step][row 16][32 bfloat16]; sums: [m tile][tile 3][16 x 16]
  auto* w = static_cast<uint16_t*>(thread_scratch(1, size_t(3 * gsteps) * kTileBytes));
  auto* acc = static_cast<float*>(thread_scratch(2, size_t((mt1 - mt0) * 3) * 256 * sizeof(float)));

  load_tile_config();
  alignas(64) float sums[3][16][16];
  for (int64_t n = n0; n < n1; n += kLowbitAmxInt4Rows) {
    std::fill(acc, acc + (mt1 - mt0) * 3 * 256, 0.f);
    for (int64_t grp = 0; grp < groups; ++grp) {
      const int64_t s0 = grp * gsteps, ns = std::min(gsteps, steps - s0);
      // Decode: a step of a row is 16 code bytes -> 16 dwords (bfloat16 of codes 2j, 2j + 1, minus z).
      for (int t = 0; t < 3; ++t)
        for (int r = 0; r < 16; ++r) {
          const int64_t row = n + t * 16 + r;
          uint16_t* dst = w + (t * gsteps * 16 + r) * 32;
          if (row >= n1) {
            for (int64_t st = 0; st < ns; ++st) _mm512_store_si512(dst + st * 512, _mm512_setzero_si512());
            continue;
          }
          const int64_t at = row * groups + grp;
          const __m512 table = _mm512_load_ps(kCodeMinusZero.v[g.zeros ? g.zeros[at] : 8]);
          const uint8_t* codes = g.codes + row * rb + s0 * 16;
          for (int64_t st = 0; st < ns; ++st) {
            const __m512i b = _mm512_cvtepu8_epi32(step_bytes(codes + st * 16, 16, rb - (s0 + st) * 16));
            const __m512 lo = _mm512_permutexvar_ps(b, table);
            const __m512 hi = _mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), table);
            _mm512_store_si512(dst + st * 512, pair_halves(lo, hi));  // both exact in bfloat16
          }
        }
      for (int64_t mt = mt0; mt < mt1; ++mt) {
        _tile_zero(5);
        _tile_zero(6);
        _tile_zero(7);
        const uint16_t* xs = xb + (mt * steps + s0) * kTileElems;
        for (int64_t st = 0; st < ns; ++st) {
          const uint16_t *xt = xs + st * kTileElems, *wt = w + st * kTileElems;
          if (pieces == 1) int4_step<1>(xt, piece_stride, wt, gsteps * kTileElems);
          else if (pieces == 2) int4_step<2>(xt, piece_stride, wt, gsteps * kTileElems);
          else int4_step<3>(xt, piece_stride, wt, gsteps * kTileElems);
        }
        _tile_stored(5, sums[0], 64);
        _tile_stored(6, sums[1], 64);
        _tile_stored(7, sums[2], 64);
        float* a = acc + (mt - mt0) * 3 * 256;
        for (int t = 0; t < 3; ++t)
          for (int r = 0; r < 16; ++r) {
            const int64_t row = n + t * 16 + r;
            const float s = row < n1 ? g.scales[row * groups + grp] : 0.f;
            float* ar = a + (t * 16 + r) * 16;
            _mm512_storeu_ps(ar, _mm512_fmadd_ps(_mm512_load_ps(sums[t][r]), _mm512_set1_ps(s), _mm512_loadu_ps(ar)));
          }
      }
    }
    for (int64_t mt = mt0; mt < mt1; ++mt)
      for (int t = 0; t < 3; ++t)
        for (int r = 0; r < 16; ++r) {
          const int64_t row = n + t * 16 + r;
          if (row >= n1) break;
          const float* ar = acc + ((mt - mt0) * 3 + t) * 256 + r * 16;
          for (int c = 0; c < 16; ++c) {
            const int64_t m = mt * 16 + c;
            if (m >= m0 && m < m1) lowbit_store(g, m, row, ar[c]);
          }
        }
  }
  _tile_release();
}

}  // namespace slim

// ---- codebooks (2- and 4-bit codes) ----
// Entries are any float32, so each is split into three bfloat16 pieces like x, and the products whose
// pieces are at most 2^-16 apart in scale are kept: w_hi x_hi, w_mid x_hi, w_lo x_hi, w_hi x_mid,
// w_mid x_mid, w_hi x_lo (those with a piece x does not have drop out: three for bfloat16 x, five
// for float16); the three left out are each below 2^-24 |w x|. Decoding stays in bfloat16: per row
// and piece, a 16-dword table that vpermps indexes with 4 bits of codes: for 4-bit codes the entries
// themselves, looked up for the low and the high nibble and paired; for 2-bit codes the pairs (a
// nibble holds codes 2j and 2j + 1), looked up once.
namespace slim {
namespace {

struct PieceTables {
  __m512 t[3];
};

PieceTables codebook_tables(const LowbitMmArgs& g, int64_t row) {
  alignas(64) float lut[16];
  lowbit_codebook_lut16(g, row, lut);  // entries repeat past 2^bits
  PieceTables pt;
  split3(_mm512_load_ps(lut), pt.t);
  if (g.bits == 2) {
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i first = _mm512_and_si512(iota, _mm512_set1_epi32(3)), second = _mm512_srli_epi32(iota, 2);
    for (__m512& t : pt.t)
      t = _mm512_castsi512_ps(pair_halves(_mm512_permutexvar_ps(first, t), _mm512_permutexvar_ps(second, t)));
  }
  return pt;
}

// One 32-code step of a row: the (k even, k odd) pairs of each piece. codes: the step's bytes (16 of
// 4-bit codes, 8 of 2-bit ones), of which the row holds `avail` (fewer at its end: the rest read 0).
inline void decode_step(int bits, const PieceTables& pt, const uint8_t* codes, int64_t avail, __m512i (&out)[3]) {
  if (bits == 4) {
    const __m512i b = _mm512_cvtepu8_epi32(step_bytes(codes, 16, avail)), bh = _mm512_srli_epi32(b, 4);
    for (int q = 0; q < 3; ++q)
      out[q] = pair_halves(_mm512_permutexvar_ps(b, pt.t[q]), _mm512_permutexvar_ps(bh, pt.t[q]));
    return;
  }
  const __m128i bytes = step_bytes(codes, 8, avail);
  // lane j <- byte j / 2, shifted so that nibble j is its low 4 bits
  const __m512i nib = _mm512_srlv_epi32(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(bytes, bytes)),
                                        _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4));
  for (int q = 0; q < 3; ++q) out[q] = _mm512_castps_si512(_mm512_permutexvar_ps(nib, pt.t[q]));
}

// One step of one weight tile (pieces in tiles 3, 4, 5) into sum tile C against the P pieces of x.
// A macro: the tile intrinsics take their tile numbers as literal text.
#define SLIM_CODEBOOK_TILE_STEP(C, P, wt, piece_w) \
  do {                                            \
    _tile_loadd(3, (wt), 64);                     \
    _tile_loadd(4, (wt) + (piece_w), 64);         \
    _tile_loadd(5, (wt) + 2 * (piece_w), 64);     \
    _tile_dpbf16ps(C, 3, 0);                      \
    _tile_dpbf16ps(C, 4, 0);                      \
    _tile_dpbf16ps(C, 5, 0);                      \
    if constexpr ((P) > 1) {                      \
      _tile_dpbf16ps(C, 3, 1);                    \
      _tile_dpbf16ps(C, 4, 1);                    \
    }                                             \
    if constexpr ((P) > 2) _tile_dpbf16ps(C, 3, 2); \
  } while (0)

template <int P>
inline void codebook_step(const uint16_t* xt, int64_t piece_stride, const uint16_t* wt, int64_t piece_w,
                          int64_t tile_stride) {
  _tile_loadd(0, xt, 64);
  if constexpr (P > 1) _tile_loadd(1, xt + piece_stride, 64);
  if constexpr (P > 2) _tile_loadd(2, xt + 2 * piece_stride, 64);
  SLIM_CODEBOOK_TILE_STEP(6, P, wt, piece_w);
  SLIM_CODEBOOK_TILE_STEP(7, P, wt + tile_stride, piece_w);
}
#undef SLIM_CODEBOOK_TILE_STEP

}  // namespace

void lowbit_amx_block_codebook(const LowbitMmArgs& g, const uint16_t* xb, int64_t m0, int64_t m1, int64_t n0,
                               int64_t n1) {
  const int64_t K = g.K, steps = steps_of(K), rb = lowbit_row_bytes(g), step_bytes = 4 * g.bits;
  const int64_t mtiles = (g.M + 15) / 16, piece_stride = mtiles * steps * kTileElems;
  const int pieces = pieces_of(g.x_kind);
  // decoded pieces of a unit, all of K: [tile 2][piece 3][step][row 16][32 bfloat16]
  const int64_t piece_w = steps * kTileElems, tile_stride = 3 * piece_w;
  auto* w = static_cast<uint16_t*>(thread_scratch(1, size_t(2 * tile_stride) * sizeof(uint16_t)));
  // Codes past K (the last step's padding) must weigh 0, not their entry (which may be Inf: Inf * 0).
  const int64_t rem = K - (steps - 1) * 32;
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i tail = _mm512_or_si512(
      _mm512_maskz_set1_epi32(_mm512_cmplt_epi32_mask(even, _mm512_set1_epi32(int(rem))), 0xFFFF),
      _mm512_maskz_set1_epi32(_mm512_cmplt_epi32_mask(_mm512_add_epi32(even, _mm512_set1_epi32(1)),
                                                      _mm512_set1_epi32(int(rem))), int(0xFFFF0000u)));
  load_tile_config();
  alignas(64) float sums[2][16][16];
  for (int64_t n = n0; n < n1; n += kLowbitAmxCodebookRows) {
    for (int t = 0; t < 2; ++t)
      for (int r = 0; r < 16; ++r) {
        const int64_t row = n + t * 16 + r;
        uint16_t* dst = w + t * tile_stride + r * 32;
        if (row >= n1) {
          for (int64_t i = 0; i < 3 * steps; ++i) _mm512_store_si512(dst + i * kTileElems, _mm512_setzero_si512());
          continue;
        }
        const PieceTables pt = codebook_tables(g, row);
        const uint8_t* codes = g.codes + row * rb;
        for (int64_t st = 0; st < steps; ++st) {
          __m512i out[3];
          decode_step(g.bits, pt, codes + st * step_bytes, rb - st * step_bytes, out);
          for (int q = 0; q < 3; ++q)
            _mm512_store_si512(dst + q * piece_w + st * kTileElems,
                               st == steps - 1 ? _mm512_and_si512(out[q], tail) : out[q]);
        }
      }
    for (int64_t mt = m0 / 16; mt < (m1 + 15) / 16; ++mt) {
      _tile_zero(6);
      _tile_zero(7);
      const uint16_t* xs = xb + mt * steps * kTileElems;
      for (int64_t st = 0; st < steps; ++st) {
        const uint16_t *xt = xs + st * kTileElems, *wt = w + st * kTileElems;
        if (pieces == 1) codebook_step<1>(xt, piece_stride, wt, piece_w, tile_stride);
        else if (pieces == 2) codebook_step<2>(xt, piece_stride, wt, piece_w, tile_stride);
        else codebook_step<3>(xt, piece_stride, wt, piece_w, tile_stride);
      }
      _tile_stored(6, sums[0], 64);
      _tile_stored(7, sums[1], 64);
      for (int t = 0; t < 2; ++t)
        for (int r = 0; r < 16; ++r) {
          const int64_t row = n + t * 16 + r;
          if (row >= n1) break;
          for (int c = 0; c < 16; ++c) {
            const int64_t m = mt * 16 + c;
            if (m >= m0 && m < m1) lowbit_store(g, m, row, sums[t][r][c]);
          }
        }
    }
  }
  _tile_release();
}

}  // namespace slim
