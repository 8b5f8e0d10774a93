// The int8 GEMM epilogue, written once and compiled into each ISA file with that file's flags:
// int32 accumulators -> out[m, n] as int32, or ((float(acc) * a_scale[m]) * b_scale[n]) + bias[n]
// in float32, rounded to float32 / float16 (RNE) / bfloat16 (RNE, NaN -> NaN).
// The multiply-add must not be fused into an FMA (results must match torch bit for bit), hence
// fp-contract=off for this header's code. Internal linkage: see cpu_convert.h.
#pragma once
#include <cstdint>

#include "slim/cpu_convert.h"
#include "slim/int8_mm.h"
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")

namespace slim {
namespace {

inline float epi_scale(int32_t acc, float as, float bs, const float* bias, int64_t n) {
  float v = (float(acc) * as) * bs;
  return bias ? v + bias[n] : v;
}

inline void epilogue_row_scalar(const Int8MmArgs& g, int64_t m, int64_t n0, int64_t n, const int32_t* acc,
                                int64_t j0) {
  const float as = g.out_kind == OutKind::kInt32 ? 0.f : g.a_scale[m];
  for (int64_t j = j0; j < n; ++j) {
    const int64_t col = n0 + j;
    switch (g.out_kind) {
      case OutKind::kInt32: static_cast<int32_t*>(g.out)[m * g.ldc + col] = acc[j]; break;
      case OutKind::kFloat32:
        static_cast<float*>(g.out)[m * g.ldc + col] = epi_scale(acc[j], as, g.b_scale[col], g.bias, col);
        break;
      case OutKind::kFloat16:
        static_cast<uint16_t*>(g.out)[m * g.ldc + col] = f32_to_f16(epi_scale(acc[j], as, g.b_scale[col], g.bias, col));
        break;
      case OutKind::kBFloat16:
        static_cast<uint16_t*>(g.out)[m * g.ldc + col] = f32_to_bf16(epi_scale(acc[j], as, g.b_scale[col], g.bias, col));
        break;
    }
  }
}

#if defined(__AVX512F__)
// bf16 round-to-nearest-even of 16 floats, NaN -> 0x7FC0 (as torch).
inline __m256i f32x16_to_bf16(__m512 v) {
  __m512i u = _mm512_castps_si512(v);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
  __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7FC0));
  return _mm512_cvtepi32_epi16(r);
}
#elif defined(__AVX2__)
inline __m128i f32x8_to_bf16(__m256 v) {
  __m256i u = _mm256_castps_si256(v);
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
  __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), nan);
  return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}
#endif

// Row m, columns [n0, n0 + n) of the output from acc[0, n).
inline void epilogue_row(const Int8MmArgs& g, int64_t m, int64_t n0, int64_t n, const int32_t* acc) {
#if defined(__AVX512F__)
  if (g.out_kind == OutKind::kInt32) {
    int32_t* o = static_cast<int32_t*>(g.out) + m * g.ldc + n0;
    for (int64_t j = 0; j < n; j += 16) {
      __mmask16 k = n - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - j)) - 1);
      _mm512_mask_storeu_epi32(o + j, k, _mm512_maskz_loadu_epi32(k, acc + j));
    }
    return;
  }
  const __m512 as = _mm512_set1_ps(g.a_scale[m]);
  for (int64_t j = 0; j < n; j += 16) {
    __mmask16 k = n - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - j)) - 1);
    __m512 v = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(k, acc + j));
    v = _mm512_mul_ps(_mm512_mul_ps(v, as), _mm512_maskz_loadu_ps(k, g.b_scale + n0 + j));
    if (g.bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, g.bias + n0 + j));
    const int64_t off = m * g.ldc + n0 + j;
    if (g.out_kind == OutKind::kFloat32) {
      _mm512_mask_storeu_ps(static_cast<float*>(g.out) + off, k, v);
    } else if (g.out_kind == OutKind::kFloat16) {
      _mm256_mask_storeu_epi16(static_cast<uint16_t*>(g.out) + off, k,
                               _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    } else {
      _mm256_mask_storeu_epi16(static_cast<uint16_t*>(g.out) + off, k, f32x16_to_bf16(v));
    }
  }
#elif defined(__AVX2__) && defined(__F16C__)
  int64_t j = 0;
  if (g.out_kind == OutKind::kInt32) {
    int32_t* o = static_cast<int32_t*>(g.out) + m * g.ldc + n0;
    for (; j + 8 <= n; j += 8)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + j), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + j)));
  } else {
    const __m256 as = _mm256_set1_ps(g.a_scale[m]);
    for (; j + 8 <= n; j += 8) {
      __m256 v = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + j)));
      v = _mm256_mul_ps(_mm256_mul_ps(v, as), _mm256_loadu_ps(g.b_scale + n0 + j));
      if (g.bias) v = _mm256_add_ps(v, _mm256_loadu_ps(g.bias + n0 + j));
      const int64_t off = m * g.ldc + n0 + j;
      if (g.out_kind == OutKind::kFloat32) {
        _mm256_storeu_ps(static_cast<float*>(g.out) + off, v);
      } else if (g.out_kind == OutKind::kFloat16) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(g.out) + off),
                         _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      } else {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(g.out) + off), f32x8_to_bf16(v));
      }
    }
  }
  epilogue_row_scalar(g, m, n0, n, acc, j);
#else
  epilogue_row_scalar(g, m, n0, n, acc, 0);
#endif
}

}  // namespace
}  // namespace slim

#pragma GCC pop_options
