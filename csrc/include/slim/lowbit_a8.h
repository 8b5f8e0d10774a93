// W4A8 on the CPU (the op dequant_mm_int4_a8): int4 group-wise weights (the canonical packed layout of
// quant/lowbit.py, uint8 [N, ceil(K/2)], low nibble = even k) times activations quantized per token to
// int8 exactly as quantize_per_token_int8 does (sx[m] = amax/127, xq = clamp(rint(x/sx), -127, 127)):
//   D[m, n, g] = sum_{k in g} q[n, k] * xq[m, k] - z[n, g] * sum_{k in g} xq[m, k]   (exact, int32)
//   y[m, n]    = sx[m] * sum_g s[n, g] * D[m, n, g] + bias[n]                         (float32)
// z = zeros or 8. The scalar kernel sums g ascending like the reference (bit-exact); the SIMD kernels
// sum D's lanes in float per group, then reduce (float32 rounding apart from the reference).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "slim/cpu_convert.h"
#include "slim/cpu_isa.h"
#include "slim/quantize.h"  // InKind

// The tile's step lambda takes the accumulators by reference: unless inlined they live on the stack.
#if defined(__GNUC__)
#define SLIM_A8_INLINE __attribute__((always_inline))
#else
#define SLIM_A8_INLINE
#endif

namespace slim {

struct LowbitA8Args {
  const void* x;            // [M, K] row stride ldx (elements), type per x_kind
  int64_t ldx;
  InKind x_kind;            // also the kind of y
  const uint8_t* qweight;   // [N, ceil(K/2)]
  const float* scales;      // [N, K / group_size]
  const uint8_t* zeros;     // [N, K / group_size] or nullptr (zero point 8)
  int64_t group_size;       // K, or a multiple of 32 dividing K
  const float* bias;        // [N] or nullptr
  void* y;                  // [M, N] row stride ldy
  int64_t ldy;
  int64_t M, N, K;
};

// Validates (std::invalid_argument naming the argument), then runs on up to num_threads threads.
// avx_vnni: the AVX2 kernel uses AVX-VNNI where avx_vnni_supported() (false: vpmaddubsw + vpmaddwd).
void dequant_mm_int4_a8(const LowbitA8Args& args, int num_threads, CpuIsa isa, bool avx_vnni = true);

// The activations prepared once per call and shared read-only by every thread. Each block of
// `block` k's holds the even k's first, then the odd ones: a vector of low nibbles (even k's of
// consecutive bytes) meets the first half, the high nibbles the second. Zero past K.
struct A8Acts {
  const int8_t* xq;    // [M, kp]
  int64_t kp;          // K rounded up to `block`
  int64_t block;       // 32, 64 or 128 k's; divides group_size unless there is one group
  const float* sx;     // [M] per-token scales (NaN for a row holding NaN/Inf: its outputs are NaN)
  const int32_t* xs;   // [M, groups]: sum of xq over each group
  int64_t groups;
};

// Per-ISA kernels: output rows [m0, m1) x columns [n0, n1), full K, epilogue included.
void lowbit_a8_block_scalar(const LowbitA8Args& g, const A8Acts& a, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
#ifdef SLIM_X86
// a.block 32 or 64 (16 or 32 bytes of codes per step); _avx_vnni: the same with vpdpbusd on ymm (only
// where avx_vnni_supported(): the CPU has AVX-VNNI and the compiler could target it).
void lowbit_a8_block_avx2(const LowbitA8Args& g, const A8Acts& a, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
void lowbit_a8_block_avx_vnni(const LowbitA8Args& g, const A8Acts& a, int64_t m0, int64_t m1, int64_t n0,
                              int64_t n1);
bool avx_vnni_supported();
// a.block 128 (64 bytes of codes per step).
void lowbit_a8_block_avx512_vnni(const LowbitA8Args& g, const A8Acts& a, int64_t m0, int64_t m1, int64_t n0,
                                 int64_t n1);
#endif

namespace {

// y[m, n] = v + bias[n], rounded to y's kind (internal linkage: see cpu_convert.h).
inline void a8_store(const LowbitA8Args& g, int64_t m, int64_t n, float v) {
  if (g.bias) v += g.bias[n];
  store_as(g.y, g.x_kind, m * g.ldy + n, v);
}

// ---- the tile loop the SIMD kernels share, over a policy P -----------------------------------------
// P provides: IV (int32 vector), FV (float vector), kBlock (k's per step, = A8Acts::block),
// kMaxMR (tokens per tile), kTile (max tokens x rows per tile: the accumulators that fit in registers),
// IV lane0(int32_t v) (v in lane 0, zeros elsewhere), Dec decode(const uint8_t* codes) (kBlock / 2 bytes),
// IV dot(IV acc, const Dec&, const int8_t* x) (acc + the lane sums of code * x over the step),
// FV fzero(), FV scale_add(FV f, IV acc, float s) (f + float(acc) * s), float hsum(FV).
// Tile: MR tokens x NR weight rows; per group, one int32 accumulator each, started at -z * xs in
// lane 0 (so the lanes sum to D exactly), then folded into a float accumulator times the group's scale.
template <class P>
struct A8Tiles {
  static constexpr int64_t kB = P::kBlock, kHalf = P::kBlock / 2;

  template <int MR, int NR>
  static void tile(const LowbitA8Args& g, const A8Acts& a, int64_t m0, int64_t n0) {
    const int64_t rb = (g.K + 1) / 2, G = a.groups, nblocks = a.kp / kB;
    const int64_t per_group = G == 1 ? nblocks : g.group_size / kB;
    const int64_t nsafe = rb / kHalf;  // blocks whose codes lie inside the row
    const uint8_t* w[NR];
    for (int j = 0; j < NR; ++j) w[j] = g.qweight + (n0 + j) * rb;
    const int8_t* x[MR];
    for (int i = 0; i < MR; ++i) x[i] = a.xq + (m0 + i) * a.kp;
    typename P::FV f[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) f[i][j] = P::fzero();
    for (int64_t grp = 0; grp < G; ++grp) {
      typename P::IV acc[MR][NR];
      for (int j = 0; j < NR; ++j) {
        const int32_t z = g.zeros ? g.zeros[(n0 + j) * G + grp] : 8;
        for (int i = 0; i < MR; ++i) acc[i][j] = P::lane0(-z * a.xs[(m0 + i) * G + grp]);
      }
      const int64_t b0 = grp * per_group, b1 = G == 1 ? nblocks : b0 + per_group;
      const int64_t bs = std::min(b1, nsafe);
      auto step = [&](int64_t b, const uint8_t* const* codes) SLIM_A8_INLINE {
        for (int j = 0; j < NR; ++j) {
          const typename P::Dec d = P::decode(codes[j]);
          for (int i = 0; i < MR; ++i) acc[i][j] = P::dot(acc[i][j], d, x[i] + b * kB);
        }
      };
      for (int64_t b = b0; b < bs; ++b) {
        // Rows are short and a tile reads NR of them side by side: fetch the next tile's line.
        if (uint64_t(b * kHalf) % 64 < uint64_t(kHalf))
          for (int j = 0; j < NR; ++j) __builtin_prefetch(w[j] + b * kHalf + NR * rb, 0, 3);
        const uint8_t* codes[NR];
        for (int j = 0; j < NR; ++j) codes[j] = w[j] + b * kHalf;
        step(b, codes);
      }
      for (int64_t b = std::max(b0, bs); b < b1; ++b) {  // the row's last block: copy, never read past it
        alignas(64) uint8_t buf[NR][64];
        const uint8_t* codes[NR];
        for (int j = 0; j < NR; ++j) {
          std::memset(buf[j], 0, sizeof(buf[j]));
          std::memcpy(buf[j], w[j] + b * kHalf, size_t(rb - b * kHalf));
          codes[j] = buf[j];
        }
        step(b, codes);
      }
      for (int j = 0; j < NR; ++j) {
        const float s = g.scales[(n0 + j) * G + grp];
        for (int i = 0; i < MR; ++i) f[i][j] = P::scale_add(f[i][j], acc[i][j], s);
      }
    }
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) a8_store(g, m0 + i, n0 + j, a.sx[m0 + i] * P::hsum(f[i][j]));
  }

  // nr in [1, NR]: the last rows of a block run narrower tiles.
  template <int MR, int NR>
  static void tile_tail(const LowbitA8Args& g, const A8Acts& a, int64_t m0, int64_t n0, int64_t nr) {
    if constexpr (NR > 1) {
      if (nr < NR) return tile_tail<MR, NR - 1>(g, a, m0, n0, nr);
    }
    tile<MR, NR>(g, a, m0, n0);
  }

  // MR tokens x up to 4 weight rows, in tiles of NR = min(4, kTile / MR) rows.
  template <int MR>
  static void tokens(const LowbitA8Args& g, const A8Acts& a, int64_t m0, int64_t n0, int64_t nr) {
    constexpr int NR = std::min(4, std::max(1, P::kTile / MR));
    int64_t j = 0;
    for (; j + NR <= nr; j += NR) tile<MR, NR>(g, a, m0, n0 + j);
    if (j < nr) tile_tail<MR, NR>(g, a, m0, n0 + j, nr - j);
  }
  template <int MR>
  static void tokens_tail(const LowbitA8Args& g, const A8Acts& a, int64_t m0, int64_t mr, int64_t n0, int64_t nr) {
    if constexpr (MR > 1) {
      if (mr < MR) return tokens_tail<MR - 1>(g, a, m0, mr, n0, nr);
    }
    tokens<MR>(g, a, m0, n0, nr);
  }

  // Weight rows outermost, 4 at a time: their codes (4 * K / 2 bytes) stay in L1 while the token
  // tiles of [m0, m1) stream past them.
  static void block(const LowbitA8Args& g, const A8Acts& a, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; n += 4) {
      const int64_t nr = std::min<int64_t>(4, n1 - n);
      int64_t m = m0;
      for (; m + P::kMaxMR <= m1; m += P::kMaxMR) tokens<P::kMaxMR>(g, a, m, n, nr);
      if (m < m1) tokens_tail<P::kMaxMR>(g, a, m, m1 - m, n, nr);
    }
  }
};

}  // namespace
}  // namespace slim
