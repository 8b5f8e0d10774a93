// lowbit_mm with bf16 dot products (AVX512-BF16 vdpbf16ps), for int4 and 2- and 4-bit codebooks.
// The codes are decoded into float32 lanes exactly as the float32 AVX-512 kernel does (the policy of
// lowbit_avx512.h, walked by LowbitTiles::walk), then two sub-vectors at a time are rounded to 32
// bf16 (vcvtne2ps2bf16) and multiplied with x, which lowbit.cpp rearranged once per call into the same
// order and rounded to bf16. vdpbf16ps adds each pair's products into a float32 lane, so one
// instruction does the work of two float32 FMAs; the output is float32-accumulated.
// 3-bit codes (one sub-vector per chunk) have no pairs: lowbit.cpp sends them to the float32 kernel.
#include "slim/lowbit_avx512.h"

#include <type_traits>
#include <utility>

namespace slim {
namespace {

inline __m512bh as_bh(__m512i v) { return (__m512bh)v; }

// Calls f(integral_constant<MR'>, integral_constant<NR'>) with the register tile for an mr x nr tail.
template <int MR, int NR, class F>
SLIM_FORCE_INLINE void with_tile(int64_t mr, int64_t nr, F&& f) {
  if constexpr (MR > 1) {
    if (mr < MR) return with_tile<MR - 1, NR>(mr, nr, f);
  }
  if constexpr (NR > 1) {
    if (nr < NR) return with_tile<MR, NR - 1>(mr, nr, f);
  }
  f(std::integral_constant<int, MR>{}, std::integral_constant<int, NR>{});
}

template <int BITS>
struct Bf16Tiles {
  using T = LowbitTiles<Avx512Policy, BITS>;
  using C = typename T::C;
  static constexpr int64_t kL = T::kL, kCK = T::kCK;
  static constexpr int kPairs = int(T::kS) / 2;
  static_assert(T::kS % 2 == 0, "bf16 pairs need an even number of sub-vectors per chunk");

  // Sub-vectors S and S + 1 of a chunk (codes past K zeroed) as 32 bf16: S's lanes low, S + 1's high.
  template <int S>
  static SLIM_FORCE_INLINE __m512bh pair(const typename C::Raw& raw, const __m512& lut, const uint32_t* mask) {
    __m512 lo = C::template weight<S>(raw, lut), hi = C::template weight<S + 1>(raw, lut);
    if (mask) {
      lo = Avx512Policy::masked(lo, mask + S * kL);
      hi = Avx512Policy::masked(hi, mask + (S + 1) * kL);
    }
    return _mm512_cvtne2ps_pbh(hi, lo);
  }

  template <int MR, int NR>
  static void store(const LowbitMmArgs& g, int64_t m0, int64_t n0, __m512 (&acc)[MR][NR]) {
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) lowbit_store(g, m0 + i, n0 + j, _mm512_reduce_add_ps(acc[i][j]));
  }

  // Small M: MR x NR tile straight from the codes, each chunk decoded once for the MR rows.
  template <int MR, int NR, size_t... Ps>
  static void tile(const LowbitMmArgs& g, const uint16_t* xb, int64_t ldxp, int64_t m0, int64_t n0,
                   std::index_sequence<Ps...>) {
    const uint16_t* x = xb + m0 * ldxp;
    __m512 acc[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
    T::template walk<NR>(g, n0, [&](int64_t c, const typename C::Raw (&raw)[NR], const __m512 (&lut)[NR],
                                    const uint32_t* mask) SLIM_FORCE_INLINE_LAMBDA {
      auto dot = [&](auto p) SLIM_FORCE_INLINE_LAMBDA {
        constexpr int S = 2 * int(decltype(p)::value);
        __m512bh w[NR];
        for (int j = 0; j < NR; ++j) w[j] = pair<S>(raw[j], lut[j], mask);
        for (int i = 0; i < MR; ++i) {
          const __m512bh xv = as_bh(_mm512_loadu_si512(x + i * ldxp + c * kCK + S * kL));
          for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, w[j]);
        }
      };
      (dot(std::integral_constant<size_t, Ps>{}), ...);
    });
    store<MR, NR>(g, m0, n0, acc);
  }

  // Larger M: weight row n decoded once into bf16 (xb's order, zero past K) for all the x rows.
  template <size_t... Ps>
  static void decode_row(const LowbitMmArgs& g, int64_t n, uint16_t* w, std::index_sequence<Ps...>) {
    T::template walk<1>(g, n, [&](int64_t c, const typename C::Raw (&raw)[1], const __m512 (&lut)[1],
                                  const uint32_t* mask) SLIM_FORCE_INLINE_LAMBDA {
      auto put = [&](auto p) SLIM_FORCE_INLINE_LAMBDA {
        constexpr int S = 2 * int(decltype(p)::value);
        _mm512_storeu_si512(w + c * kCK + S * kL, (__m512i)pair<S>(raw[0], lut[0], mask));
      };
      (put(std::integral_constant<size_t, Ps>{}), ...);
    });
  }

  template <int MR, int NR>
  static void dense_tile(const LowbitMmArgs& g, const uint16_t* xb, int64_t ldxp, const uint16_t* w, int64_t m0,
                         int64_t n0) {
    __m512 acc[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
    const uint16_t* x = xb + m0 * ldxp;
    for (int64_t k = 0; k < ldxp; k += 32) {
      __m512bh wv[NR];
      for (int j = 0; j < NR; ++j) wv[j] = as_bh(_mm512_loadu_si512(w + j * ldxp + k));
      for (int i = 0; i < MR; ++i) {
        const __m512bh xv = as_bh(_mm512_loadu_si512(x + i * ldxp + k));
        for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, wv[j]);
      }
    }
    store<MR, NR>(g, m0, n0, acc);
  }

  // Same blocking as LowbitTiles::block: weight-row tiles outermost; from two row tiles of x on, the
  // NR weight rows are decoded once (into bf16, NR * K * 2 bytes) and the tiles read them densely.
  template <int MR, int NR>
  static void block(const LowbitMmArgs& g, const uint16_t* xb, int64_t ldxp, int64_t m0, int64_t m1, int64_t n0,
                    int64_t n1) {
    const bool dense = m1 - m0 >= 2 * MR;
    auto* w = dense ? static_cast<uint16_t*>(thread_scratch(1, size_t(NR * ldxp) * sizeof(uint16_t) + 64)) : nullptr;
    constexpr auto pairs = std::make_index_sequence<size_t(kPairs)>{};
    for (int64_t n = n0; n < n1; n += NR) {
      const int64_t nr = std::min<int64_t>(NR, n1 - n);
      if (dense)
        for (int64_t j = 0; j < nr; ++j) decode_row(g, n + j, w + j * ldxp, pairs);
      for (int64_t m = m0; m < m1; m += MR)
        with_tile<MR, NR>(std::min<int64_t>(MR, m1 - m), nr, [&](auto mr, auto nrc) {
          if (dense) dense_tile<decltype(mr)::value, decltype(nrc)::value>(g, xb, ldxp, w, m, n);
          else tile<decltype(mr)::value, decltype(nrc)::value>(g, xb, ldxp, m, n, pairs);
        });
    }
  }
};

}  // namespace

void lowbit_block_avx512_bf16(const LowbitMmArgs& g, const uint16_t* xb, int64_t ldxp, int64_t m0, int64_t m1,
                              int64_t n0, int64_t n1) {
  if (g.bits == 2) Bf16Tiles<2>::block<kLowbitBf16MR, kLowbitBf16NR>(g, xb, ldxp, m0, m1, n0, n1);
  else Bf16Tiles<4>::block<kLowbitBf16MR, kLowbitBf16NR>(g, xb, ldxp, m0, m1, n0, n1);
}

}  // namespace slim
