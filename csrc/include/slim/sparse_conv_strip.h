// The strip kernel of sparse_conv2d (see sparse_conv.h), written once over a SIMD "vector traits"
// type V and compiled into each ISA's file (scalar, AVX2, AVX-512). Internal linkage on purpose, as
// in cpu_convert.h: each copy carries its own ISA's instructions.
//
// V provides: kLanes, Vec, Mask, mask(n) (the first n lanes, n may be <= 0 or > kLanes), set1(f),
// load(p, mask) (masked-off lanes read nothing), fma(a, b, c) = a*b + c, store(p, v, mask).
#pragma once
#include <algorithm>
#include <cstdint>

#include "slim/cpu_convert.h"
#include "slim/sparse_conv.h"

namespace slim {
namespace {

// Output channel co, rows [oh, oh + R), columns [ow0, ow0 + width), width <= NV * kLanes: R x NV
// accumulators start at the bias and take every tap of row co, then are stored once.
template <class V, int R, int NV>
void sparse_conv_strip(const SparseConvPlan& p, int64_t co, int64_t oh, int64_t ow0, int64_t width) {
  constexpr int L = V::kLanes;
  const SparseConvArgs& g = *p.g;
  typename V::Mask m[NV];
  for (int u = 0; u < NV; ++u) m[u] = V::mask(width - int64_t(u) * L);
  const typename V::Vec b = V::set1(g.bias ? g.bias[co] : 0.f);
  typename V::Vec acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < NV; ++u) acc[r][u] = b;
  const int64_t rstep = g.sh * p.row_len;  // workspace floats between consecutive output rows
  const float* base = p.xw + oh * rstep + ow0;
  const SparseConvTap* t = p.taps + g.row_ptr[co];
  const SparseConvTap* end = p.taps + g.row_ptr[co + 1];
  for (; t < end; ++t) {
    const float* q = base + t->off;
    const typename V::Vec v = V::set1(t->v);
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < NV; ++u) acc[r][u] = V::fma(v, V::load(q + r * rstep + u * L, m[u]), acc[r][u]);
  }
  for (int r = 0; r < R; ++r) {
    const int64_t off = (co * g.OH + oh + r) * g.OW + ow0;
    if (g.x_kind == InKind::kFloat32) {
      float* y = static_cast<float*>(p.y_image) + off;
      for (int u = 0; u < NV; ++u) V::store(y + u * L, acc[r][u], m[u]);
      continue;
    }
    float row[NV * L];
    for (int u = 0; u < NV; ++u) V::store(row + u * L, acc[r][u], m[u]);
    uint16_t* y = static_cast<uint16_t*>(p.y_image) + off;
    if (g.x_kind == InKind::kFloat16) {
      for (int64_t i = 0; i < width; ++i) y[i] = f32_to_f16(row[i]);
    } else {
      for (int64_t i = 0; i < width; ++i) y[i] = f32_to_bf16(row[i]);
    }
  }
}

// R rows at once for NV vectors of columns: at most 8 accumulators (the x loads need registers too).
template <class V, int NV>
void sparse_conv_strips(const SparseConvPlan& p, int64_t co, int64_t oh, int64_t rows, int64_t ow0, int64_t width) {
  constexpr int R = NV <= 2 ? 4 : 2;
  int64_t r = 0;
  for (; r + R <= rows; r += R) sparse_conv_strip<V, R, NV>(p, co, oh + r, ow0, width);
  for (; r < rows; ++r) sparse_conv_strip<V, 1, NV>(p, co, oh + r, ow0, width);
}

// Channels [co0, co1) x rows [oh0, oh1), whole width, in chunks of up to 4 vectors of columns. The
// rows of a group share their workspace rows across the channels of the block (they stay in cache).
template <class V>
void sparse_conv_rows(const SparseConvPlan& p, int64_t co0, int64_t co1, int64_t oh0, int64_t oh1) {
  constexpr int L = V::kLanes;
  constexpr int64_t kChunk = 4 * L;
  constexpr int64_t kRowGroup = 4;
  const int64_t OW = p.g->OW;
  for (int64_t oh = oh0; oh < oh1; oh += kRowGroup) {
    const int64_t rows = std::min(kRowGroup, oh1 - oh);
    for (int64_t co = co0; co < co1; ++co) {
      for (int64_t ow0 = 0; ow0 < OW; ow0 += kChunk) {
        const int64_t width = std::min(kChunk, OW - ow0);
        switch ((width + L - 1) / L) {
          case 1: sparse_conv_strips<V, 1>(p, co, oh, rows, ow0, width); break;
          case 2: sparse_conv_strips<V, 2>(p, co, oh, rows, ow0, width); break;
          case 3: sparse_conv_strips<V, 3>(p, co, oh, rows, ow0, width); break;
          default: sparse_conv_strips<V, 4>(p, co, oh, rows, ow0, width); break;
        }
      }
    }
  }
}

}  // namespace
}  // namespace slim
