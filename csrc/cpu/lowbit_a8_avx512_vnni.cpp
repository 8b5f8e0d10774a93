// dequant_mm_int4_a8, AVX-512 VNNI kernel: 128 k's a step, 64 bytes of codes: the low nibbles are the
// 64 even k's and the high nibbles the 64 odd k's of the step, so one vpandd and one vpsrlw + vpandd
// give two u8 vectors that vpdpbusd multiplies with the s8 activations (0..15 x -127..127: exact).
#include <immintrin.h>

#include "slim/lowbit_a8.h"

namespace slim {
namespace {

struct A8Avx512 {
  using IV = __m512i;
  using FV = __m512;
  static constexpr int64_t kBlock = 128;
  static constexpr int kMaxMR = 4, kTile = 8;  // 4 x 2 or 2 x 4: 16 accumulators of 32 registers
  struct Dec { __m512i lo, hi; };
  static IV lane0(int32_t v) { return _mm512_zextsi128_si512(_mm_cvtsi32_si128(v)); }
  static Dec decode(const uint8_t* p) {
    const __m512i b = _mm512_loadu_si512(p), low4 = _mm512_set1_epi8(0x0F);
    return {_mm512_and_si512(b, low4), _mm512_and_si512(_mm512_srli_epi16(b, 4), low4)};
  }
  static IV dot(IV acc, const Dec& d, const int8_t* x) {
    acc = _mm512_dpbusd_epi32(acc, d.lo, _mm512_loadu_si512(x));
    return _mm512_dpbusd_epi32(acc, d.hi, _mm512_loadu_si512(x + 64));
  }
  static FV fzero() { return _mm512_setzero_ps(); }
  static FV scale_add(FV f, IV acc, float s) { return _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(s), f); }
  static float hsum(FV v) { return _mm512_reduce_add_ps(v); }
};

}  // namespace

void lowbit_a8_block_avx512_vnni(const LowbitA8Args& g, const A8Acts& a, int64_t m0, int64_t m1, int64_t n0,
                                 int64_t n1) {
  A8Tiles<A8Avx512>::block(g, a, m0, m1, n0, n1);
}

}  // namespace slim
