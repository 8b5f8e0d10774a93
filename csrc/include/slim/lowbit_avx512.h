// lowbit_mm's AVX-512 policy (see LowbitTiles in lowbit.h), shared by the files compiled with AVX-512
// flags: lowbit_avx512_vnni.cpp (float32 FMAs) and lowbit_avx512_bf16.cpp (bf16 dot products on the
// same decoded weights). Include only from such files.
// A 16-entry float table is one register and vpermps looks it up with the low 4 bits of each lane,
// so codes need no masking: 2- and 4-bit codes are zero-extended a byte per lane and shifted,
// 3-bit codes (which cross bytes) are gathered into lanes with vpshufb and shifted per lane.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "slim/lowbit.h"

namespace slim {
namespace {

struct Avx512Policy {
  using V = __m512;
  static constexpr int64_t kLanes = 16;
  static constexpr int kMaxAcc = 16;
  using Lut = __m512;
  static V zero() { return _mm512_setzero_ps(); }
  static V loadx(const float* p) { return _mm512_loadu_ps(p); }
  static void storew(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V masked(V w, const uint32_t* mask) {
    return _mm512_and_ps(w, _mm512_castsi512_ps(_mm512_loadu_si512(mask)));
  }
  static float hsum(V v) { return _mm512_reduce_add_ps(v); }
  static Lut lut(const float* t) { return _mm512_loadu_ps(t); }
  static Lut lut_int4(float s, int z) { return _mm512_mul_ps(_mm512_load_ps(kCodeMinusZero.v[z]), _mm512_set1_ps(s)); }

  // 2 and 4 bits: 16 bytes -> 16 lanes of 8 / BITS codes; sub-vector s is the lanes >> (s * BITS).
  template <int BITS>
  struct Codes {
    static constexpr int64_t kSubs = 8 / BITS, kChunkBytes = 16, kLoadBytes = 16;
    using Raw = __m512i;
    static Raw load(const uint8_t* p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
    template <int S>
    static V weight(Raw r, Lut t) { return _mm512_permutexvar_ps(S == 0 ? r : _mm512_srli_epi32(r, S * BITS), t); }
  };
};

// 3 bits: 16 codes in 6 bytes (8 loaded). Lane j needs the two bytes holding bits [3j, 3j + 3),
// i.e. bytes 3j / 8 and 3j / 8 + 1, shifted right by 3j % 8.
template <>
struct Avx512Policy::Codes<3> {
  static constexpr int64_t kSubs = 1, kChunkBytes = 6, kLoadBytes = 8;
  using Raw = __m512i;
  static Raw load(const uint8_t* p) {
    long long u;
    std::memcpy(&u, p, 8);
    // vpshufb indexes within each 128-bit lane: the 8 bytes are broadcast to every one of them.
    const __m512i ctrl = _mm512_setr_epi32(0x80800100, 0x80800100, 0x80800100, 0x80800201, 0x80800201, 0x80800201,
                                           0x80800302, 0x80800302, 0x80800403, 0x80800403, 0x80800403, 0x80800504,
                                           0x80800504, 0x80800504, 0x80800605, 0x80800605);
    const __m512i shift = _mm512_setr_epi32(0, 3, 6, 1, 4, 7, 2, 5, 0, 3, 6, 1, 4, 7, 2, 5);
    return _mm512_srlv_epi32(_mm512_shuffle_epi8(_mm512_set1_epi64(u), ctrl), shift);
  }
  template <int S>
  static V weight(Raw r, Lut t) { return _mm512_permutexvar_ps(r, t); }
};

}  // namespace
}  // namespace slim
