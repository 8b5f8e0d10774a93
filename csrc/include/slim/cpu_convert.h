// Scalar float16 / bfloat16 <-> float32 conversions (round to nearest even), portable C++.
// Internal linkage on purpose: this header is compiled into files with different ISA flags, and a
// shared inline definition could let the linker pick an AVX-512 copy for the scalar path.
#pragma once
#include <cstdint>
#include <cstring>

#include "slim/quantize.h"  // InKind

namespace slim {
namespace {

inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

inline float bf16_to_f32(uint16_t h) { return bits_f32(uint32_t(h) << 16); }

// Same as torch's c10::BFloat16 rounding: NaN -> 0x7FC0, else round to nearest even.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
  return uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

inline float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
  if (exp == 0x1F) return bits_f32(sign | 0x7F800000u | (man << 13));  // inf / nan
  if (exp == 0) {
    if (man == 0) return bits_f32(sign);
    // subnormal: man * 2^-24, exact in float32
    float v = float(man) * bits_f32(0x33800000u);  // 2^-24
    return sign ? -v : v;
  }
  return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

// IEEE binary16, round to nearest even, overflow -> inf, NaN stays NaN (quiet).
inline uint16_t f32_to_f16(float f) {
  uint32_t u = f32_bits(f);
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return uint16_t(sign | 0x7E00u | ((a >> 13) & 0x3FFu));
  if (a >= 0x477FF000u) return uint16_t(sign | 0x7C00u);  // >= 65520 rounds to inf (and inf)
  if (a < 0x38800000u) {                                   // below 2^-14: subnormal half or zero
    if (a < 0x33000000u) return sign;                      // < 2^-25 (half of min subnormal): 0
    uint32_t e = a >> 23, m = (a & 0x7FFFFFu) | 0x800000u;
    uint32_t shift = 126 - e;                              // value = m * 2^(e-150); half ulp 2^-24
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (q & 1u))) q++;
    return uint16_t(sign | q);
  }
  uint32_t r = a + 0xFFFu + ((a >> 13) & 1u) - 0x38000000u;  // rebias 127 -> 15, round at bit 13
  return uint16_t(sign | (r >> 13));
}

// y[off] = v rounded to the float kind of y (the output step of the float-output kernels).
inline void store_as(void* y, InKind kind, int64_t off, float v) {
  switch (kind) {
    case InKind::kFloat16: static_cast<uint16_t*>(y)[off] = f32_to_f16(v); break;
    case InKind::kBFloat16: static_cast<uint16_t*>(y)[off] = f32_to_bf16(v); break;
    default: static_cast<float*>(y)[off] = v;
  }
}

}  // namespace
}  // namespace slim
