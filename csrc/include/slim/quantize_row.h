// Per-row scalar pieces of quantize_per_token_int8 shared by the ISA files (internal linkage:
// see cpu_convert.h).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "slim/cpu_convert.h"
#include "slim/quantize.h"

namespace slim {
namespace {

inline float load_as_f32(const void* row, InKind kind, int64_t k) {
  switch (kind) {
    case InKind::kFloat16: return f16_to_f32(static_cast<const uint16_t*>(row)[k]);
    case InKind::kBFloat16: return bf16_to_f32(static_cast<const uint16_t*>(row)[k]);
    default: return static_cast<const float*>(row)[k];
  }
}

// |x| bits of a float: their unsigned order is the order of |x|, with Inf = 0x7F800000 and NaN above.
inline uint32_t abs_bits(float x) { uint32_t u; std::memcpy(&u, &x, 4); return u & 0x7FFFFFFFu; }

// Row decision from max |x| bits: returns false (and sets scale) when the row is all q = 0.
inline bool row_scale(uint32_t amax_bits, int qmax, float* scale) {
  if (amax_bits >= 0x7F800000u) { *scale = std::nanf(""); return false; }  // NaN or Inf in the row
  if (amax_bits == 0) { *scale = 1.0f; return false; }
  float amax; std::memcpy(&amax, &amax_bits, 4);
  *scale = amax / float(qmax);
  return true;
}

// clamp(rint(x / scale), -qmax, qmax); x / scale is a true division; NaN (0 / 0 when scale
// underflowed to 0) gives 0.
inline int8_t quant_one(float x, float scale, int qmax) {
  float r = std::nearbyint(x / scale);
  if (!(r == r)) return 0;
  const float hi = float(qmax);
  r = r < -hi ? -hi : (r > hi ? hi : r);
  return static_cast<int8_t>(r);
}

}  // namespace
}  // namespace slim
