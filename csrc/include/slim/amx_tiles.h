// The AMX-BF16 tile machinery of the weight-only kernels (lowbit_amx.cpp: int4 and codebooks;
// dequant_int8_amx.cpp: int8). Include only from *_amx.cpp files: they are compiled with the AMX flags.
//
// Tiles (C += A * B, 16 x 16 float32): A = 16 weight rows x 32 k of decoded weights (bfloat16,
// row-major), B = 16 rows of x in the pair-interleaved layout (16 k pairs x 16 rows x 2), C[n][m].
// A thread decodes a panel of kAmxPanelRows weight rows (four A tiles) over all of K once per block of
// x rows (L2), then runs the block's 16-row x tiles against it one at a time: per 32-k step four C
// tiles, so each x tile (read from L2) feeds four products, and each weight tile is read from L1: the
// steps go in chunks whose weight tiles stay in L1 while the x tiles pass; the sums wait in memory
// between chunks. (Two x tiles x two weight tiles would read x twice as often from L2: measured slower.)
// Tile registers: 0-2 the pieces of x, 3 (and 2 when free) weights, 4-7 the sums of the four n tiles.
//
// Numerics. Exact: x split into P bfloat16 pieces by truncation (hi + mid + lo: 3 for float32, 2 for
// float16, 1 for bfloat16), the weights into Q (1 where they are exact in bfloat16, 3 for float32
// codebook entries); the products of pieces at most 2^-16 apart in scale are kept (q + p <= 2), so the
// result is a float32 GEMM summed in another order. Rounded (the cpu_bf16 kernels' numerics, those of a
// bf16 nn.Linear): x rounded to nearest-even bfloat16, one piece, and the weights one bfloat16 piece.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "slim/quantize.h"  // InKind
#include "slim/scratch.h"
#include "slim/thread_pool.h"

namespace slim {

constexpr int64_t kAmxTileElems = 512;  // bfloat16s per 16 x 64-byte tile
constexpr int64_t kAmxPanelRows = 64;   // weight rows per decoded panel (four A tiles): the unit of the N split
constexpr int64_t kAmxStepElems = 4 * kAmxTileElems;  // one 32-k step of a panel

// x in the B-tile layout: [piece][m tile][step][k pair 16][m 16][2] bfloat16, zero past M and K.
struct AmxX {
  const void* x;  // [M, K] row stride ldx, of kind `kind`
  int64_t ldx;
  InKind kind;
  int64_t M, K;
  bool round;  // one piece rounded to nearest even, instead of the exact split
};
inline int amx_x_pieces(const AmxX& a) {
  return a.round || a.kind == InKind::kBFloat16 ? 1 : a.kind == InKind::kFloat16 ? 2 : 3;
}
inline int64_t amx_steps(int64_t k) { return (k + 31) / 32; }  // 32-k steps, the last one zero-padded
inline int64_t amx_x_elems(const AmxX& a) { return amx_x_pieces(a) * ((a.M + 15) / 16) * amx_steps(a.K) * kAmxTileElems; }
// Defined in lowbit_amx.cpp: x into xb (amx_x_elems(a) uint16s, 64-byte aligned), and the tile
// configuration every kernel here uses (8 tiles of 16 rows x 64 bytes).
void amx_prepare_x(const AmxX& a, uint16_t* xb);
void amx_load_tile_config();

// What a block computes around the tile products: y[m, n] = sum * row_scale[n] + bias[n], where sum
// runs over K, or over the scale groups of gsteps steps, each group's sum times gscale[n, group].
struct AmxGemm {
  const uint16_t* xb;  // prepared x (amx_prepare_x)
  int64_t M, N, K;
  int P, Q;               // bfloat16 pieces of x and of the weights (1..3 each)
  int64_t gsteps;         // steps per scale group, 0: none
  const float* gscale;    // [N, K / (32 gsteps)] when gsteps
  const float* row_scale; // [N] or null
  const float* bias;      // [N] or null
  void* y;                // [M, N] row stride ldy, of kind y_kind
  int64_t ldy;
  InKind y_kind;
};

namespace {

inline __mmask16 amx_head_mask(int64_t n) { return n >= 16 ? 0xFFFF : n <= 0 ? 0 : __mmask16((1u << n) - 1); }

// 16 floats -> 16 float32 whose low 16 bits are zero (bfloat16 values as float32), by truncation.
inline __m512 amx_trunc_bf16(__m512 v) {
  return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(int(0xFFFF0000u))));
}

// 16 floats rounded to nearest-even bfloat16, as float32.
inline __m512 amx_round_bf16(__m512 v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(v)), 16));
}

// v in three bfloat16 pieces (as float32 with zero low halves), hi + mid + lo = v for normal v.
// Inf and NaN stay whole in hi (v - hi would be NaN for an infinite v).
inline void amx_split3(__m512 v, __m512 (&p)[3]) {
  const __mmask16 finite = _mm512_cmp_ps_mask(_mm512_abs_ps(v), _mm512_set1_ps(INFINITY), _CMP_LT_OQ);
  p[0] = _mm512_mask_blend_ps(finite, v, amx_trunc_bf16(v));
  const __m512 r1 = _mm512_maskz_sub_ps(finite, v, p[0]);
  p[1] = amx_trunc_bf16(r1);
  p[2] = amx_trunc_bf16(_mm512_sub_ps(r1, p[1]));
}

// Two float32 vectors that hold bfloat16 values (zero low halves) -> 16 dwords pairing lane j of lo
// (low half) with lane j of hi (high half): (hi & 0xFFFF0000) | (lo >> 16).
inline __m512i amx_pair_halves(__m512 lo, __m512 hi) {
  return _mm512_ternarylogic_epi32(_mm512_castps_si512(hi), _mm512_set1_epi32(int(0xFFFF0000u)),
                                   _mm512_srli_epi32(_mm512_castps_si512(lo), 16), 0xEA);
}

// In-register transpose of a 16 x 16 matrix of 32-bit elements.
inline void amx_transpose16(__m512i (&r)[16]) {
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

// Piece q of the step's weight tile C - 4 (in tile W) against the P pieces of x (tiles 0..P-1), into
// sum tile C. Only the products of pieces at most 2^-16 apart in scale are kept: q + p <= 2. A macro:
// the tile intrinsics take their tile numbers as literal text.
#define SLIM_AMX_TILE_PRODUCTS(C, W)                                  \
  do {                                                                \
    _tile_loadd(W, ws + q * wps + ((C) - 4) * kAmxTileElems, 64);     \
    _tile_dpbf16ps(C, W, 0);                                          \
    if constexpr (P > 1 && q < 2) _tile_dpbf16ps(C, W, 1);            \
    if constexpr (P > 2 && q < 1) _tile_dpbf16ps(C, W, 2);            \
  } while (0)

#define SLIM_AMX_TILE_PRODUCTS_X1(C, W)                               \
  do {                                                                \
    _tile_loadd(W, ws + q * wps + ((C) - 4) * kAmxTileElems, 64);     \
    _tile_dpbf16ps(C, W, 1);                                          \
  } while (0)

// One 32-k step: the weight pieces q.. of the panel's four tiles against the x tile's pieces. The
// weights alternate between tiles 3 and 2 where x leaves 2 free, so a load need not wait on the
// products still reading the other.
template <int P, int Q, int q = 0>
inline void amx_step(const uint16_t* ws, int64_t wps) {
  if constexpr (q < Q) {
    if constexpr (P < 3) {
      SLIM_AMX_TILE_PRODUCTS(4, 3);
      SLIM_AMX_TILE_PRODUCTS(5, 2);
      SLIM_AMX_TILE_PRODUCTS(6, 3);
      SLIM_AMX_TILE_PRODUCTS(7, 2);
    } else {
      SLIM_AMX_TILE_PRODUCTS(4, 3);
      SLIM_AMX_TILE_PRODUCTS(5, 3);
      SLIM_AMX_TILE_PRODUCTS(6, 3);
      SLIM_AMX_TILE_PRODUCTS(7, 3);
    }
    amx_step<P, Q, q + 1>(ws, wps);
  }
}

// One x piece (P = 1) leaves tile 1 free too: x alternates between tiles 0 and 1 (X) from step to step,
// so the next step's x load need not wait on the products still reading this one.
template <int Q, int X, int q = 0>
inline void amx_step1(const uint16_t* ws, int64_t wps) {
  constexpr int P = 1;
  if constexpr (q < Q) {
    if constexpr (X == 0) {
      SLIM_AMX_TILE_PRODUCTS(4, 3);
      SLIM_AMX_TILE_PRODUCTS(5, 2);
      SLIM_AMX_TILE_PRODUCTS(6, 3);
      SLIM_AMX_TILE_PRODUCTS(7, 2);
    } else {
      SLIM_AMX_TILE_PRODUCTS_X1(4, 3);
      SLIM_AMX_TILE_PRODUCTS_X1(5, 2);
      SLIM_AMX_TILE_PRODUCTS_X1(6, 3);
      SLIM_AMX_TILE_PRODUCTS_X1(7, 2);
    }
    amx_step1<Q, X, q + 1>(ws, wps);
  }
}
#undef SLIM_AMX_TILE_PRODUCTS
#undef SLIM_AMX_TILE_PRODUCTS_X1

// ns steps of one x tile (xs: piece 0 of its first step; xps: the piece stride) against the panel
// (ws: its first step; wps: the piece stride). c: the four sums [n tile 4][16 n][16 m], read first
// unless `fresh`, written back at the end.
template <int P, int Q>
void amx_chunk(const uint16_t* xs, int64_t xps, const uint16_t* ws, int64_t wps, int64_t ns, float* c, bool fresh) {
  if (fresh) {
    _tile_zero(4);
    _tile_zero(5);
    _tile_zero(6);
    _tile_zero(7);
  } else {
    _tile_loadd(4, c, 64);
    _tile_loadd(5, c + 256, 64);
    _tile_loadd(6, c + 512, 64);
    _tile_loadd(7, c + 768, 64);
  }
  if constexpr (P == 1) {
    for (int64_t st = 0; st < ns; st += 2) {
      _tile_loadd(0, xs + st * kAmxTileElems, 64);
      amx_step1<Q, 0>(ws + st * kAmxStepElems, wps);
      if (st + 1 == ns) break;
      _tile_loadd(1, xs + (st + 1) * kAmxTileElems, 64);
      amx_step1<Q, 1>(ws + (st + 1) * kAmxStepElems, wps);
    }
  } else {
    for (int64_t st = 0; st < ns; ++st) {
      const uint16_t* x = xs + st * kAmxTileElems;
      _tile_loadd(0, x, 64);
      if constexpr (P > 1) _tile_loadd(1, x + xps, 64);
      if constexpr (P > 2) _tile_loadd(2, x + 2 * xps, 64);
      amx_step<P, Q>(ws + st * kAmxStepElems, wps);
    }
  }
  _tile_stored(4, c, 64);
  _tile_stored(5, c + 256, 64);
  _tile_stored(6, c + 512, 64);
  _tile_stored(7, c + 768, 64);
}

using AmxChunkFn = void (*)(const uint16_t*, int64_t, const uint16_t*, int64_t, int64_t, float*, bool);

inline AmxChunkFn amx_chunk_for(int P, int Q) {
  if (Q == 1) return P == 1 ? amx_chunk<1, 1> : P == 2 ? amx_chunk<2, 1> : amx_chunk<3, 1>;
  return P == 1 ? amx_chunk<1, 3> : P == 2 ? amx_chunk<2, 3> : amx_chunk<3, 3>;
}

// y[m, n .. n + count) from 16 sums (count <= 16), scaled, biased and rounded to y's kind.
inline void amx_store_row(const AmxGemm& a, int64_t m, int64_t n, int64_t count, __m512 v) {
  const __mmask16 k = amx_head_mask(count);
  if (a.row_scale) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(k, a.row_scale + n));
  if (a.bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, a.bias + n));
  const int64_t off = m * a.ldy + n;
  if (a.y_kind == InKind::kFloat32) {
    _mm512_mask_storeu_ps(static_cast<float*>(a.y) + off, k, v);
    return;
  }
  const __m256i h = a.y_kind == InKind::kFloat16 ? _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
                                                 : (__m256i)_mm512_cvtneps_pbh(v);
  _mm256_mask_storeu_epi16(static_cast<uint16_t*>(a.y) + off, k, h);
}

// Output rows [m0, m1) (m0 a multiple of 16) x weight rows [n0, n1). decode(row, dst, wps) writes
// weight row `row` over all K steps: piece q of step st, 32 bfloat16 (zero past K), at
// dst + q * wps + st * kAmxStepElems.
template <class Decode>
void amx_gemm_block(const AmxGemm& a, Decode&& decode, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const int64_t steps = amx_steps(a.K), xps = ((a.M + 15) / 16) * steps * kAmxTileElems;
  const int64_t mt0 = m0 / 16, mt1 = (m1 + 15) / 16;
  const int64_t wps = steps * kAmxStepElems;  // one piece of the panel: [step][tile 4][row 16][32]
  auto* w = static_cast<uint16_t*>(thread_scratch(1, size_t(a.Q * wps) * sizeof(uint16_t)));
  // sums: [m tile][n tile 4][16 n][16 m]
  auto* acc = static_cast<float*>(thread_scratch(2, size_t((mt1 - mt0) * 4 * 256) * sizeof(float)));
  // Steps per chunk: a scale group, or those whose weight tiles (4 KB per piece and step) stay in L1
  // (three pieces: half of them; the sums' trips to memory cost more than L2's latency).
  const int64_t cs = a.gsteps ? a.gsteps : a.Q == 1 ? 8 : 4;
  const int64_t groups = a.gsteps ? steps / a.gsteps : 1;
  const AmxChunkFn chunk = amx_chunk_for(a.P, a.Q);
  alignas(64) float part[4][256];  // a group's sums before its scales
  amx_load_tile_config();
  for (int64_t n = n0; n < n1; n += kAmxPanelRows) {
    for (int64_t r = 0; r < kAmxPanelRows; ++r) {
      uint16_t* dst = w + (r / 16) * kAmxTileElems + (r % 16) * 32;
      if (n + r < n1) {
        decode(n + r, dst, wps);
        continue;
      }
      for (int64_t q = 0; q < a.Q; ++q)
        for (int64_t st = 0; st < steps; ++st) _mm512_store_si512(dst + q * wps + st * kAmxStepElems, _mm512_setzero_si512());
    }
    for (int64_t s0 = 0; s0 < steps; s0 += cs) {
      const int64_t ns = std::min(cs, steps - s0);
      for (int64_t mt = mt0; mt < mt1; ++mt) {
        float* c = acc + (mt - mt0) * 1024;
        chunk(a.xb + (mt * steps + s0) * kAmxTileElems, xps, w + s0 * kAmxStepElems, wps, ns,
              a.gsteps ? part[0] : c, a.gsteps || s0 == 0);
        if (!a.gsteps) continue;
        // c (+)= part * the group's scale of each weight row
        const int64_t grp = s0 / a.gsteps;
        for (int t = 0; t < 4; ++t)
          for (int r = 0; r < 16; ++r) {
            const int64_t row = n + t * 16 + r;
            const __m512 s = _mm512_set1_ps(row < n1 ? a.gscale[row * groups + grp] : 0.f);
            float* cr = c + t * 256 + r * 16;
            const __m512 p = _mm512_mul_ps(_mm512_load_ps(part[t] + r * 16), s);
            _mm512_store_ps(cr, s0 == 0 ? p : _mm512_add_ps(_mm512_load_ps(cr), p));
          }
      }
    }
    for (int64_t mt = mt0; mt < mt1; ++mt)
      for (int t = 0; t < 4; ++t) {
        const int64_t nn = n + t * 16;
        if (nn >= n1) break;
        __m512i rows[16];
        const float* c = acc + ((mt - mt0) * 4 + t) * 256;
        for (int r = 0; r < 16; ++r) rows[r] = _mm512_load_si512(c + r * 16);
        amx_transpose16(rows);  // rows[j]: row mt * 16 + j of x against the tile's 16 weight rows
        for (int j = 0; j < 16 && mt * 16 + j < m1; ++j)
          amx_store_row(a, mt * 16 + j, nn, std::min<int64_t>(16, n1 - nn), _mm512_castsi512_ps(rows[j]));
      }
  }
  _tile_release();
}

// A whole call: x prepared once (scratch 0, shared by all threads), then blocks of rows whose x
// pieces stay in L2 next to the decoded panel, each thread taking panels of weight rows.
template <class Block>
void amx_gemm(const AmxX& xa, AmxGemm a, int num_threads, const Block& block) {
  const int64_t xb_elems = amx_x_elems(xa);
  auto* xb = static_cast<uint16_t*>(thread_scratch(0, size_t(xb_elems) * sizeof(uint16_t) + 64));
  amx_prepare_x(xa, xb);
  a.xb = xb;
  const int64_t tile_bytes = xb_elems * 2 / ((a.M + 15) / 16);  // all pieces of one 16-row tile of x
  const int64_t panel_bytes = a.Q * amx_steps(a.K) * kAmxStepElems * 2;
  const int64_t budget = std::max<int64_t>(0, (3 << 19) - panel_bytes);  // ~1.5 MB of L2 for both
  const int64_t mblock = 16 * std::max<int64_t>(4, budget / tile_bytes);  // >= 4 tiles per decode
  parallel_tiles(a.M, a.N, a.K, mblock, kAmxPanelRows, num_threads,
                 [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) { block(a, m0, m1, n0, n1); });
}

}  // namespace
}  // namespace slim
