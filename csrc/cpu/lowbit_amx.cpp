// lowbit_mm on AMX-BF16 tiles (compiled with the amx flags; used for larger M): int4 and 2- and 4-bit
// codebooks, on the shared tile machinery of amx_tiles.h (which also holds the numerics). Here: the
// preparation of x and the tile configuration every AMX kernel uses, and the weight decoders.
//
// int4: a weight is (q - z) * s. Exact: q - z is an integer in [-255, 15], exact in bfloat16, and the
// scale s multiplies each group's float32 sum (per row when the group is all of K). Rounded: the
// products (q - z) * s rounded to bfloat16, no groups.
// Codebooks: entries are any float32. Exact: each split into three bfloat16 pieces; rounded: one.
// Decoding stays in bfloat16: per row (and group), a 16-dword table that vpermps indexes with 4 bits of
// codes: for 4-bit codes the weights themselves, looked up for the low and the high nibble and paired;
// for 2-bit codes the pairs (a nibble holds codes 2j and 2j + 1), looked up once.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "slim/amx_tiles.h"
#include "slim/lowbit.h"
#include "slim/scratch.h"

namespace slim {
namespace {

struct alignas(64) TileConfig {
  uint8_t palette, start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// x[m, k0 .. k0 + 32) as float32, zero past K.
inline void load32(const AmxX& a, int64_t m, int64_t k0, __m512& v0, __m512& v1) {
  const int64_t n = std::min<int64_t>(32, a.K - k0);
  const __mmask16 m0 = amx_head_mask(n), m1 = amx_head_mask(n - 16);
  if (a.kind == InKind::kFloat32) {
    const float* p = static_cast<const float*>(a.x) + m * a.ldx + k0;
    v0 = _mm512_maskz_loadu_ps(m0, p);
    v1 = _mm512_maskz_loadu_ps(m1, p + 16);
    return;
  }
  const uint16_t* p = static_cast<const uint16_t*>(a.x) + m * a.ldx + k0;
  const __m256i h0 = _mm256_maskz_loadu_epi16(m0, p), h1 = _mm256_maskz_loadu_epi16(m1, p + 16);
  if (a.kind == InKind::kFloat16) {
    v0 = _mm512_cvtph_ps(h0);
    v1 = _mm512_cvtph_ps(h1);
  } else {
    v0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h0), 16));
    v1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h1), 16));
  }
}

}  // namespace

void amx_load_tile_config() {
  TileConfig cfg{};
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  // GCC sees ldtilecfg read only the first bytes and drops the stores of rows and colsb: a memory
  // barrier keeps them.
  asm volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

void amx_prepare_x(const AmxX& a, uint16_t* xb) {
  const int64_t mtiles = (a.M + 15) / 16, steps = amx_steps(a.K), piece_stride = mtiles * steps * kAmxTileElems;
  const int pieces = amx_x_pieces(a);
  for (int64_t mt = 0; mt < mtiles; ++mt)
    for (int64_t st = 0; st < steps; ++st) {
      __m512i piece[3][16];  // [piece][row of x]: 16 dwords, each a (k even, k odd) pair
      for (int r = 0; r < 16; ++r) {
        const int64_t m = mt * 16 + r;
        __m512 v[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
        if (m < a.M) load32(a, m, st * 32, v[0], v[1]);
        if (a.round) {
          piece[0][r] = (__m512i)_mm512_cvtne2ps_pbh(v[1], v[0]);
          continue;
        }
        __m512 p0[3], p1[3];
        amx_split3(v[0], p0);
        amx_split3(v[1], p1);
        // Every piece is exact in bfloat16, so the converting instruction's rounding never acts, and a
        // NaN stays a NaN (truncating one whose payload sits in the low bits would make it Inf).
        for (int q = 0; q < pieces; ++q) piece[q][r] = (__m512i)_mm512_cvtne2ps_pbh(p1[q], p0[q]);
      }
      for (int q = 0; q < pieces; ++q) {
        amx_transpose16(piece[q]);  // row j: k pair j of the 16 rows of x
        uint16_t* dst = xb + q * piece_stride + (mt * steps + st) * kAmxTileElems;
        for (int j = 0; j < 16; ++j) _mm512_store_si512(dst + j * 32, piece[q][j]);
      }
    }
}

namespace {

// The `n` (8 or 16) code bytes of a 32-code step, of which the row holds `avail` from p on: at the
// row's end the rest read 0 and nothing past the row is touched.
inline __m128i step_bytes(const uint8_t* p, int64_t n, int64_t avail) {
  const auto* v = reinterpret_cast<const __m128i*>(p);
  if (avail >= n) return n == 16 ? _mm_loadu_si128(v) : _mm_loadl_epi64(v);
  return _mm_maskz_loadu_epi8(__mmask16((1u << avail) - 1), p);
}

// The dwords of the last step that hold codes below K (codes past it must weigh 0, not their table
// entry, which may be Inf: Inf * 0 is NaN).
__m512i tail_mask(int64_t K) {
  const int64_t rem = K - (amx_steps(K) - 1) * 32;
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  return _mm512_or_si512(
      _mm512_maskz_set1_epi32(_mm512_cmplt_epi32_mask(even, _mm512_set1_epi32(int(rem))), 0xFFFF),
      _mm512_maskz_set1_epi32(_mm512_cmplt_epi32_mask(_mm512_add_epi32(even, _mm512_set1_epi32(1)),
                                                      _mm512_set1_epi32(int(rem))), int(0xFFFF0000u)));
}

// One 32-code step of 4-bit codes (16 bytes, `avail` of them in the row) through a 16-entry table of
// bfloat16 values (as float32): the (k even, k odd) pairs.
inline __m512i decode4(const uint8_t* codes, int64_t avail, __m512 table) {
  const __m512i b = _mm512_cvtepu8_epi32(step_bytes(codes, 16, avail));
  return amx_pair_halves(_mm512_permutexvar_ps(b, table), _mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), table));
}

// 2-bit codes (8 bytes a step) through a table of pairs (a nibble's two codes).
inline __m512i decode2(const uint8_t* codes, int64_t avail, __m512 pairs) {
  const __m128i bytes = step_bytes(codes, 8, avail);
  // lane j <- byte j / 2, shifted so that nibble j is its low 4 bits
  const __m512i nib = _mm512_srlv_epi32(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(bytes, bytes)),
                                        _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4));
  return _mm512_castps_si512(_mm512_permutexvar_ps(nib, pairs));
}

// round: the table holds (q - z) * s rounded to bfloat16; else q - z (the scales apply to the sums).
void int4_block(const LowbitMmArgs& g, bool round, const AmxGemm& a, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const int64_t steps = amx_steps(g.K), rb = lowbit_row_bytes(g), groups = g.K / g.group_size;
  const int64_t gsteps = groups == 1 ? steps : g.group_size / 32;  // group sizes are K or multiples of 32
  const __m512i tail = tail_mask(g.K);
  amx_gemm_block(a, [&](int64_t row, uint16_t* dst, int64_t) {
    const uint8_t* codes = g.codes + row * rb;
    for (int64_t grp = 0; grp < groups; ++grp) {
      const int64_t at = row * groups + grp;
      __m512 table = _mm512_load_ps(kCodeMinusZero.v[g.zeros ? g.zeros[at] : 8]);
      if (round) table = amx_round_bf16(_mm512_mul_ps(table, _mm512_set1_ps(g.scales[at])));
      for (int64_t st = grp * gsteps; st < std::min(steps, (grp + 1) * gsteps); ++st) {
        __m512i v = decode4(codes + st * 16, rb - st * 16, table);
        if (st == steps - 1) v = _mm512_and_si512(v, tail);
        _mm512_store_si512(dst + st * kAmxStepElems, v);
      }
    }
  }, m0, m1, n0, n1);
}

void codebook_block(const LowbitMmArgs& g, const AmxGemm& a, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const int64_t steps = amx_steps(g.K), rb = lowbit_row_bytes(g), step_bytes = 4 * g.bits;
  const __m512i tail = tail_mask(g.K);
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i first = _mm512_and_si512(iota, _mm512_set1_epi32(3)), second = _mm512_srli_epi32(iota, 2);
  amx_gemm_block(a, [&](int64_t row, uint16_t* dst, int64_t wps) {
    alignas(64) float lut[16];
    lowbit_codebook_lut16(g, row, lut);  // entries repeat past 2^bits
    __m512 t[3];
    if (a.Q == 1) t[0] = amx_round_bf16(_mm512_load_ps(lut));
    else amx_split3(_mm512_load_ps(lut), t);
    if (g.bits == 2)
      for (int q = 0; q < a.Q; ++q)
        t[q] = _mm512_castsi512_ps(amx_pair_halves(_mm512_permutexvar_ps(first, t[q]), _mm512_permutexvar_ps(second, t[q])));
    const uint8_t* codes = g.codes + row * rb;
    for (int64_t st = 0; st < steps; ++st)
      for (int q = 0; q < a.Q; ++q) {
        const uint8_t* c = codes + st * step_bytes;
        __m512i v = g.bits == 4 ? decode4(c, rb - st * step_bytes, t[q]) : decode2(c, rb - st * step_bytes, t[q]);
        if (st == steps - 1) v = _mm512_and_si512(v, tail);
        _mm512_store_si512(dst + q * wps + st * kAmxStepElems, v);
      }
  }, m0, m1, n0, n1);
}

}  // namespace

void lowbit_amx_mm(const LowbitMmArgs& g, bool round, int num_threads) {
  const AmxX xa{g.x, g.ldx, g.x_kind, g.M, g.K, round};
  AmxGemm a{};
  a.M = g.M, a.N = g.N, a.K = g.K, a.P = amx_x_pieces(xa), a.Q = 1;
  a.bias = g.bias, a.y = g.y, a.ldy = g.ldy, a.y_kind = g.x_kind;
  if (g.kind == LutKind::kInt4) {
    const int64_t groups = g.K / g.group_size;
    if (!round && groups == 1) a.row_scale = g.scales;  // one group: the row's scale on the output
    if (!round && groups > 1) a.gsteps = g.group_size / 32, a.gscale = g.scales;
    return amx_gemm(xa, a, num_threads, [&](const AmxGemm& b, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
      int4_block(g, round, b, m0, m1, n0, n1);
    });
  }
  a.Q = round ? 1 : 3;
  amx_gemm(xa, a, num_threads, [&](const AmxGemm& b, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    codebook_block(g, b, m0, m1, n0, n1);
  });
}

}  // namespace slim
