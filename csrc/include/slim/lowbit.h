// Weight-only low-bit matmul on the CPU, one kernel family for both formats of quant/lowbit.py:
//   y[m, n] = sum_k x[m, k] * LUT[n, k / gs][code[n, k]] + bias[n]
// int4 is a codebook too: its 16-entry table for row n, group g is (c - z[n, g]) * s[n, g] in float32
// (z = 8 when zeros is null), exactly the reference's expression; a codebook's table is its row n (or
// row 0 of a per-layer codebook) and its one "group" is the whole K.
// codes: uint8 [N, ceil(K * bits / 8)], each row an LSB-first bit stream of `bits`-bit codes.
// x float32 / float16 / bfloat16 [M, K] (row stride ldx), y [M, N] in x's kind (row stride ldy).
// float32 accumulation, round-to-nearest-even output.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>

#include "slim/cpu_convert.h"
#include "slim/cpu_isa.h"
#include "slim/quantize.h"  // InKind, parse_in_kind
#include "slim/scratch.h"

// The tile loops pass their accumulators to walk()'s callback by reference: unless both are inlined,
// the accumulators live on the stack and every FMA waits on a store-to-load round trip (measured 1.5x
// slower at M = 1).
#if defined(__GNUC__)
#define SLIM_FORCE_INLINE inline __attribute__((always_inline))
#define SLIM_FORCE_INLINE_LAMBDA __attribute__((always_inline))
#else
#define SLIM_FORCE_INLINE inline
#define SLIM_FORCE_INLINE_LAMBDA
#endif

namespace slim {

enum class LutKind { kInt4 = 0, kCodebook = 1 };
LutKind parse_lut_kind(const std::string& name, const char* arg_name);

struct LowbitMmArgs {
  const void* x;           // [M, K] row stride ldx (elements), type per x_kind
  int64_t ldx;
  InKind x_kind;           // also the kind of y
  const uint8_t* codes;    // [N, ceil(K * bits / 8)], rows back to back
  int bits;                // 2, 3 or 4 (int4: 4)
  LutKind kind;
  const float* scales;     // int4: [N, K / group_size]
  const uint8_t* zeros;    // int4: [N, K / group_size] or nullptr (zero point 8)
  int64_t group_size;      // int4: K or a multiple of 32 dividing K; codebook: K
  const float* codebook;   // codebook: [codebook_rows, 2^bits]
  int64_t codebook_rows;   // 1 (per layer) or N (per row)
  const float* bias;       // [N] or nullptr
  void* y;                 // [M, N] row stride ldy
  int64_t ldy;
  int64_t M, N, K;
};

// Whether int4 and 2- and 4-bit codebooks (and dequant_mm_int8) run on AMX-BF16 tiles (CpuAmx, the
// switch int8_mm shares): kAuto from a minimum number of rows of x on (kLowbitAmxMinM for int4,
// kLowbitAmxCodebook(Exact)MinM for codebooks), when the avx512_vnni or avx512_bf16 tier is in use
// and amx_bf16_supported(); kOn at any M (an error where AMX is not supported); kOff never. 3-bit
// codebooks never do. Under the avx512_bf16 tier the tiles take x and the weights rounded to bfloat16
// (that tier's numerics), else they are float32-exact.
// Measured on 4096 x 4096 (bench/results/2026-11-23-cpu-lowbit.md, 2026-11-30-weight-only-amx.md): AMX
// wins from M = 6 for int4 g128 and from M = 12-16 for 4-bit codebooks in bfloat16 (kAvx512Bf16);
// float32-exact codebooks (three pieces of each entry against up to three of x: six products a tile)
// only break even with the float32 kernel from M = 256.
constexpr int64_t kLowbitAmxMinM = 6;
constexpr int64_t kLowbitAmxCodebookMinM = 16;
constexpr int64_t kLowbitAmxCodebookExactMinM = 256;
// Whether a call with M rows of x takes the tiles (min_m: the kAuto threshold); amx kOn where they
// cannot run throws std::invalid_argument prefixed with `op`.
bool amx_chosen(CpuIsa isa, CpuAmx amx, int64_t M, int64_t min_m, const char* op);

// Validates (std::invalid_argument naming the argument), then runs on up to num_threads threads.
void lowbit_mm(const LowbitMmArgs& args, int num_threads, CpuIsa isa, CpuAmx amx = CpuAmx::kAuto);

// ---- what the per-ISA kernels share --------------------------------------------------------------
// A kernel walks each code row in chunks of `lanes * subs` codes. Lane j of sub-vector s of chunk c
// holds code k = c * lanes * subs + j * subs + s (that is how the codes sit in the packed bytes), so
// x is rearranged once per call into that order ("xp": float32, zero past K, row stride ldxp).
struct LowbitLayout {
  int64_t lanes, subs;  // codes per chunk = lanes * subs
  int64_t chunk_bytes;  // packed bytes one chunk advances
  int64_t load_bytes;   // bytes a chunk's load touches (>= chunk_bytes; the tail is copied before)
};

// Per-ISA kernels; arguments already validated, K > 0.
// layout: how that ISA walks codes of g.bits bits. block: output rows [m0, m1) x columns [n0, n1),
// full K, epilogue included, reading x from xp (see LowbitLayout); callable from any thread.
LowbitLayout lowbit_layout_scalar(int bits);
void lowbit_block_scalar(const LowbitMmArgs& g, const float* xp, int64_t ldxp, int64_t m0, int64_t m1, int64_t n0,
                         int64_t n1);
#ifdef SLIM_X86
LowbitLayout lowbit_layout_avx2(int bits);
void lowbit_block_avx2(const LowbitMmArgs& g, const float* xp, int64_t ldxp, int64_t m0, int64_t m1, int64_t n0,
                       int64_t n1);
LowbitLayout lowbit_layout_avx512_vnni(int bits);
void lowbit_block_avx512_vnni(const LowbitMmArgs& g, const float* xp, int64_t ldxp, int64_t m0, int64_t m1,
                              int64_t n0, int64_t n1);
#endif
#ifdef SLIM_AVX512_BF16
// bf16 dot products (isa kAvx512Bf16; lowbit_avx512_bf16.cpp), int4 and 2- and 4-bit codebooks: the
// avx512_vnni layout, x rearranged like xp but rounded to bf16 (xb, row stride ldxp, a multiple of 32).
// Register tile: kLowbitBf16MR rows of x x kLowbitBf16NR weight rows (the unit of the N split).
constexpr int kLowbitBf16MR = 4, kLowbitBf16NR = 4;
void lowbit_block_avx512_bf16(const LowbitMmArgs& g, const uint16_t* xb, int64_t ldxp, int64_t m0, int64_t m1,
                              int64_t n0, int64_t n1);
#endif
#ifdef SLIM_AMX
// The AMX path (int4, and 2- and 4-bit codebooks; lowbit_amx.cpp on amx_tiles.h): arguments already
// validated, K > 0. round: x and the weights rounded to bfloat16 (the numerics of the avx512_bf16
// kernels; taken when isa is kAvx512Bf16), else a float32 GEMM summed in another order.
void lowbit_amx_mm(const LowbitMmArgs& g, bool round, int num_threads);
#endif

namespace {
// The 16-entry float table of codebook row n (entries past 2^bits repeat the codebook, so an index
// read from the low 4 bits of a lane that also holds the next code's bits still finds its entry).
// int4 tables are built in registers by the policy (P::lut_int4).
inline void lowbit_codebook_lut16(const LowbitMmArgs& g, int64_t n, float* lut) {
  const float* cb = g.codebook + (g.codebook_rows == 1 ? 0 : n) * (int64_t(1) << g.bits);
  const int mask = (1 << g.bits) - 1;
  for (int c = 0; c < 16; ++c) lut[c] = cb[c & mask];
}

inline int64_t lowbit_row_bytes(const LowbitMmArgs& g) { return (g.K * g.bits + 7) / 8; }

// kCodeMinusZero.v[z][c] = c - z: an int4 table is row z times the group's scale, one multiply.
// Every uint8 zero point has its row (16 KB; the layout's 0..15 are the first 1 KB), so an
// out-of-layout zero point computes what the reference computes instead of reading past the table.
struct CodeMinusZero {
  alignas(64) float v[256][16];
};
constexpr CodeMinusZero make_code_minus_zero() {
  CodeMinusZero t{};
  for (int z = 0; z < 256; ++z)
    for (int c = 0; c < 16; ++c) t.v[z][c] = float(c - z);
  return t;
}
inline constexpr CodeMinusZero kCodeMinusZero = make_code_minus_zero();

// y[m, n] = acc + bias[n] rounded to y's kind (internal linkage: see cpu_convert.h).
inline void lowbit_store(const LowbitMmArgs& g, int64_t m, int64_t n, float acc) {
  const float v = g.bias ? acc + g.bias[n] : acc;
  store_as(g.y, g.x_kind, m * g.ldy + n, v);
}

// ---- the tile loop every ISA shares, over an ISA policy P ----------------------------------------
// P provides: V (float vector of P::kLanes lanes), kMaxAcc (accumulators that fit in registers),
// zero(), loadx(const float*), storew(float*, V), fma(a, b, c), add(a, b),
// masked(V, const uint32_t* lane_mask), hsum(V), Lut + lut(const float* table16) and
// lut_int4(s, z) (the int4 table: (c - z) * s in float32 for c = 0..15, from kCodeMinusZero), and
// Codes<BITS> with kSubs, kChunkBytes, kLoadBytes, Raw load(const uint8_t*), V weight<s>(Raw, Lut).
// Output tile: MR activation rows x NR weight rows, one vector accumulator each (two when registers
// allow), over all of K, reduced horizontally once. Small M decodes each weight chunk once per tile and
// uses it for the MR rows; larger M decodes NR rows once per block (see block()).
template <class P, int BITS>
struct LowbitTiles {
  using C = typename P::template Codes<BITS>;
  static constexpr int64_t kL = P::kLanes, kS = C::kSubs, kCK = kL * kS;

  // Two accumulator sets (even / odd sub-vectors) when registers allow: more FMA chains in flight.
  template <int MR, int NR>
  static constexpr int kSets = MR * NR * 2 <= P::kMaxAcc ? 2 : 1;

  template <int S, int MR, int NR, int A>
  static SLIM_FORCE_INLINE void sub_fma(const typename C::Raw (&raw)[NR], const typename P::Lut (&lut)[NR],
                                        const float* x, int64_t ldxp, typename P::V (&acc)[MR][NR][A],
                                        const uint32_t* mask) {
    typename P::V w[NR];
    for (int j = 0; j < NR; ++j) {
      w[j] = C::template weight<S>(raw[j], lut[j]);
      if (mask) w[j] = P::masked(w[j], mask + S * kL);
    }
    for (int i = 0; i < MR; ++i) {
      const typename P::V xv = P::loadx(x + i * ldxp + S * kL);
      for (int j = 0; j < NR; ++j) acc[i][j][S % A] = P::fma(xv, w[j], acc[i][j][S % A]);
    }
  }

  // Walks rows [n0, n0 + NR) of codes chunk by chunk, calling f(c, raw[NR], lut[NR], mask) with the
  // chunk's loaded codes, the tables in force and, for chunks at a row's end, the lane mask of the
  // codes below K (else nullptr).
  template <int NR, class F>
  static SLIM_FORCE_INLINE void walk(const LowbitMmArgs& g, int64_t n0, F&& f) {
    const int64_t K = g.K, rb = lowbit_row_bytes(g);
    const int64_t nchunks = (K + kCK - 1) / kCK;
    const int64_t groups = g.kind == LutKind::kInt4 ? K / g.group_size : 1;
    const int64_t per_group = groups == 1 ? nchunks : g.group_size / kCK;  // group sizes are multiples of kCK
    // Chunks whose codes are all < K and whose load stays inside the row; the rest go through a copy.
    int64_t nsafe = K / kCK;
    while (nsafe > 0 && (nsafe - 1) * C::kChunkBytes + C::kLoadBytes > rb) --nsafe;
    const uint8_t* base[NR];
    for (int j = 0; j < NR; ++j) base[j] = g.codes + (n0 + j) * rb;
    typename P::Lut lut[NR];
    if (g.kind == LutKind::kCodebook) {
      for (int j = 0; j < NR; ++j) {
        alignas(64) float t[16];
        lowbit_codebook_lut16(g, n0 + j, t);
        lut[j] = P::lut(t);
      }
    }
    auto int4_tables = [&](int64_t grp) {  // a new table per group (every 32..K codes), in registers
      for (int j = 0; j < NR; ++j) {
        const int64_t at = (n0 + j) * groups + grp;
        lut[j] = P::lut_int4(g.scales[at], g.zeros ? g.zeros[at] : 8);
      }
    };
    typename C::Raw raw[NR];
    for (int64_t grp = 0; grp < groups; ++grp) {
      if (g.kind == LutKind::kInt4) int4_tables(grp);
      const int64_t c1 = std::min(grp == groups - 1 ? nchunks : (grp + 1) * per_group, nsafe);
      for (int64_t c = grp * per_group; c < c1; ++c) {
        // Rows are short (2 KB at K = 4096) and a tile reads NR of them side by side, which the
        // hardware prefetchers follow poorly: fetch the next tile's line at the same offset, once
        // per 64-byte line (prefetching past the last row is harmless).
        if (uint64_t(c * C::kChunkBytes) % 64 < uint64_t(C::kChunkBytes))
          for (int j = 0; j < NR; ++j) __builtin_prefetch(base[j] + c * C::kChunkBytes + NR * rb, 0, 3);
        for (int j = 0; j < NR; ++j) raw[j] = C::load(base[j] + c * C::kChunkBytes);
        f(c, raw, lut, static_cast<const uint32_t*>(nullptr));
      }
    }
    // Row end (only when K is not a multiple of the chunk, i.e. in the last group): copy what is left
    // of each row into zeroed buffers (never read past a row), and zero the weights of codes past K
    // (a table entry may be inf: 0 * inf would be NaN).
    for (int64_t c = nsafe; c < nchunks; ++c) {
      if (groups > 1) int4_tables(std::min(c / per_group, groups - 1));
      alignas(64) uint8_t buf[64];
      alignas(64) uint32_t mask[kCK];
      const int64_t avail = std::min<int64_t>(C::kLoadBytes, rb - c * C::kChunkBytes);
      for (int j = 0; j < NR; ++j) {
        std::memset(buf, 0, sizeof(buf));
        std::memcpy(buf, base[j] + c * C::kChunkBytes, size_t(avail));
        raw[j] = C::load(buf);
      }
      for (int64_t s = 0; s < kS; ++s)
        for (int64_t l = 0; l < kL; ++l) mask[s * kL + l] = c * kCK + l * kS + s < K ? ~0u : 0u;
      f(c, raw, lut, static_cast<const uint32_t*>(mask));
    }
  }

  // Small M: MR x NR tile straight from the codes, each chunk decoded once for the MR rows.
  template <int MR, int NR, size_t... Ss>
  static void tile_impl(const LowbitMmArgs& g, const float* xp, int64_t ldxp, int64_t m0, int64_t n0,
                        std::index_sequence<Ss...>) {
    const float* x = xp + m0 * ldxp;
    constexpr int A = kSets<MR, NR>;
    typename P::V acc[MR][NR][A];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j)
        for (int a = 0; a < A; ++a) acc[i][j][a] = P::zero();
    walk<NR>(g, n0, [&](int64_t c, const typename C::Raw (&raw)[NR], const typename P::Lut (&lut)[NR],
                        const uint32_t* mask) SLIM_FORCE_INLINE_LAMBDA {
      (sub_fma<int(Ss), MR, NR, A>(raw, lut, x + c * kCK, ldxp, acc, mask), ...);
    });
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) {
        typename P::V a = acc[i][j][0];
        if constexpr (A == 2) a = P::add(a, acc[i][j][1]);
        lowbit_store(g, m0 + i, n0 + j, P::hsum(a));
      }
  }

  template <int MR, int NR>
  static void tile(const LowbitMmArgs& g, const float* xp, int64_t ldxp, int64_t m0, int64_t n0) {
    tile_impl<MR, NR>(g, xp, ldxp, m0, n0, std::make_index_sequence<size_t(kS)>{});
  }

  // Larger M: row n decoded once into float32 w (in xp's order, zero past K) for all the x rows.
  template <size_t... Ss>
  static void decode_row(const LowbitMmArgs& g, int64_t n, float* w, std::index_sequence<Ss...>) {
    walk<1>(g, n, [&](int64_t c, const typename C::Raw (&raw)[1], const typename P::Lut (&lut)[1],
                      const uint32_t* mask) SLIM_FORCE_INLINE_LAMBDA {
      auto put = [&](auto s) {
        typename P::V v = C::template weight<decltype(s)::value>(raw[0], lut[0]);
        if (mask) v = P::masked(v, mask + decltype(s)::value * kL);
        P::storew(w + c * kCK + decltype(s)::value * kL, v);
      };
      (put(std::integral_constant<int, int(Ss)>{}), ...);
    });
  }

  template <int MR, int NR>
  static void dense_tile(const LowbitMmArgs& g, const float* xp, int64_t ldxp, const float* w, int64_t m0,
                         int64_t n0) {
    typename P::V acc[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] = P::zero();
    const float* x = xp + m0 * ldxp;
    for (int64_t k = 0; k < ldxp; k += kL) {
      typename P::V wv[NR];
      for (int j = 0; j < NR; ++j) wv[j] = P::loadx(w + j * ldxp + k);
      for (int i = 0; i < MR; ++i) {
        const typename P::V xv = P::loadx(x + i * ldxp + k);
        for (int j = 0; j < NR; ++j) acc[i][j] = P::fma(xv, wv[j], acc[i][j]);
      }
    }
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) lowbit_store(g, m0 + i, n0 + j, P::hsum(acc[i][j]));
  }

  // mr in [1, MR], nr in [1, NR]: the tails of a block run narrower tiles. w: decoded rows or null.
  template <int NR, int MR>
  static void tile_rows(const LowbitMmArgs& g, const float* xp, int64_t ldxp, const float* w, int64_t m0,
                        int64_t mr, int64_t n0) {
    if constexpr (MR > 1) {
      if (mr < MR) return tile_rows<NR, MR - 1>(g, xp, ldxp, w, m0, mr, n0);
    }
    if (w) dense_tile<MR, NR>(g, xp, ldxp, w, m0, n0);
    else tile<MR, NR>(g, xp, ldxp, m0, n0);
  }
  template <int NR, int MR>
  static void tile_cols(const LowbitMmArgs& g, const float* xp, int64_t ldxp, const float* w, int64_t m0,
                        int64_t mr, int64_t n0, int64_t nr) {
    if constexpr (NR > 1) {
      if (nr < NR) return tile_cols<NR - 1, MR>(g, xp, ldxp, w, m0, mr, n0, nr);
    }
    tile_rows<NR, MR>(g, xp, ldxp, w, m0, mr, n0);
  }

  // Weight-row tiles outermost: a tile's packed rows (NR * K / 2 bytes for int4) stay in L1 while
  // the activation rows [m0, m1) stream past them. From two row tiles on, the NR weight rows are
  // decoded once into float32 (NR * K * 4 bytes, L2) and the tiles run a plain float32 kernel:
  // decoding per tile would cost as much as the FMAs.
  template <int MR, int NR>
  static void block(const LowbitMmArgs& g, const float* xp, int64_t ldxp, int64_t m0, int64_t m1, int64_t n0,
                    int64_t n1) {
    const bool dense = m1 - m0 >= 2 * MR;
    float* w = dense ? static_cast<float*>(thread_scratch(1, size_t(NR * ldxp) * sizeof(float))) : nullptr;
    for (int64_t n = n0; n < n1; n += NR) {
      const int64_t nr = std::min<int64_t>(NR, n1 - n);
      if (dense)
        for (int64_t j = 0; j < nr; ++j) decode_row(g, n + j, w + j * ldxp, std::make_index_sequence<size_t(kS)>{});
      for (int64_t m = m0; m < m1; m += MR)
        tile_cols<NR, MR>(g, xp, ldxp, w, m, std::min<int64_t>(MR, m1 - m), n, nr);
    }
  }

  static LowbitLayout layout() { return {kL, kS, C::kChunkBytes, C::kLoadBytes}; }
};

// Per-ISA entry points: dispatch on the code width.
template <class P, int MR, int NR>
void lowbit_block_for(const LowbitMmArgs& g, const float* xp, int64_t ldxp, int64_t m0, int64_t m1, int64_t n0,
                      int64_t n1) {
  switch (g.bits) {
    case 2: LowbitTiles<P, 2>::template block<MR, NR>(g, xp, ldxp, m0, m1, n0, n1); break;
    case 3: LowbitTiles<P, 3>::template block<MR, NR>(g, xp, ldxp, m0, m1, n0, n1); break;
    default: LowbitTiles<P, 4>::template block<MR, NR>(g, xp, ldxp, m0, m1, n0, n1); break;
  }
}
template <class P>
LowbitLayout lowbit_layout_for(int bits) {
  return bits == 2 ? LowbitTiles<P, 2>::layout() : bits == 3 ? LowbitTiles<P, 3>::layout() : LowbitTiles<P, 4>::layout();
}
}  // namespace

}  // namespace slim
