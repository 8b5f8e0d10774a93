// The strip kernel of sparse_conv2d (see sparse_conv.h), written once over a SIMD "vector traits"
// type V and compiled into each ISA's file (scalar, AVX2, AVX-512). Internal linkage on purpose, as
// in cpu_convert.h: each copy carries its own ISA's instructions.
//
// V provides: kLanes, kAccumulators (vector registers the strips may hold), Vec, Mask, mask(n) (the
// first n lanes, n may be <= 0 or > kLanes), set1(f), loadu(p), load(p, mask) (masked-off lanes read
// nothing), fma(a, b, c) = a*b + c, store(p, v, mask).
#pragma once
#include <algorithm>
#include <cstdint>

#include "slim/cpu_convert.h"
#include "slim/sparse_conv.h"

namespace slim {
namespace {

constexpr int kPrefetchTaps = 6;

// Output channel co, rows [oh, oh + R), columns [ow0, ow0 + width), width <= NV * kLanes: R x NV
// accumulators start at the bias and take every tap of row co, then are stored once.
template <class V, int R, int NV>
void sparse_conv_strip(const SparseConvPlan& p, int64_t co, int64_t oh, int64_t ow0, int64_t width) {
  constexpr int L = V::kLanes;
  const SparseConvArgs& g = *p.g;
  typename V::Mask m[NV];  // only the last vector of the strip can be partial
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
    if (t + kPrefetchTaps < end) {  // the taps jump between input planes: ask for a later tap's rows early
      const float* ahead = base + t[kPrefetchTaps].off;
      for (int r = 0; r < R; ++r)
        for (int u = 0; u < NV; ++u) __builtin_prefetch(ahead + r * rstep + u * L);
    }
    const typename V::Vec v = V::set1(t->v);
    for (int r = 0; r < R; ++r) {
      for (int u = 0; u + 1 < NV; ++u) acc[r][u] = V::fma(v, V::loadu(q + r * rstep + u * L), acc[r][u]);
      acc[r][NV - 1] = V::fma(v, V::load(q + r * rstep + (NV - 1) * L, m[NV - 1]), acc[r][NV - 1]);
    }
  }
  for (int r = 0; r < R; ++r) {
    if (g.x_kind == InKind::kFloat32 && !g.channels_last) {
      float* y = static_cast<float*>(p.y_image) + (co * g.OH + oh + r) * g.OW + ow0;
      for (int u = 0; u < NV; ++u) V::store(y + u * L, acc[r][u], m[u]);
      continue;
    }
    float row[NV * L];
    for (int u = 0; u < NV; ++u) V::store(row + u * L, acc[r][u], m[u]);
    // NHWC: consecutive channels of the task's inner loop fill the same cache lines.
    const int64_t step = g.channels_last ? g.Cout : 1;
    const int64_t off = g.channels_last ? ((oh + r) * g.OW + ow0) * g.Cout + co : (co * g.OH + oh + r) * g.OW + ow0;
    if (g.x_kind == InKind::kFloat32) {
      float* y = static_cast<float*>(p.y_image) + off;
      for (int64_t i = 0; i < width; ++i) y[i * step] = row[i];
    } else if (g.x_kind == InKind::kFloat16) {
      uint16_t* y = static_cast<uint16_t*>(p.y_image) + off;
      for (int64_t i = 0; i < width; ++i) y[i * step] = f32_to_f16(row[i]);
    } else {
      uint16_t* y = static_cast<uint16_t*>(p.y_image) + off;
      for (int64_t i = 0; i < width; ++i) y[i * step] = f32_to_bf16(row[i]);
    }
  }
}

// The largest number of rows a strip of NV vectors holds (R x NV accumulators <= kAccumulators, R <= 8).
template <class V, int NV>
constexpr int64_t max_strip_rows() {
  return V::kAccumulators / NV >= 8 ? 8 : V::kAccumulators / NV >= 4 ? 4 : V::kAccumulators / NV >= 2 ? 2 : 1;
}

// Rows [oh, oh + rows) of channel co, rows <= max_strip_rows: one strip, R a power of two per call.
template <class V, int NV>
void sparse_conv_strip_rows(const SparseConvPlan& p, int64_t co, int64_t oh, int64_t rows, int64_t ow0, int64_t width) {
  constexpr int64_t kMax = max_strip_rows<V, NV>();
  while (rows > 0) {
    if (kMax >= 8 && rows >= 8) { sparse_conv_strip<V, (kMax >= 8 ? 8 : 1), NV>(p, co, oh, ow0, width); oh += 8; rows -= 8; }
    else if (kMax >= 4 && rows >= 4) { sparse_conv_strip<V, (kMax >= 4 ? 4 : 1), NV>(p, co, oh, ow0, width); oh += 4; rows -= 4; }
    else if (kMax >= 2 && rows >= 2) { sparse_conv_strip<V, (kMax >= 2 ? 2 : 1), NV>(p, co, oh, ow0, width); oh += 2; rows -= 2; }
    else { sparse_conv_strip<V, 1, NV>(p, co, oh, ow0, width); oh += 1; rows -= 1; }
  }
}

// Channels [co0, co1) x rows [oh0, oh1), whole width. Strips (up to p.strip_rows rows x 4 vectors
// of columns) are the outer loop and channels the inner one: the workspace a strip reads over all
// input channels (sized by the driver to stay in L1/L2) serves every channel of the task.
template <class V, int NV>
void sparse_conv_chunk(const SparseConvPlan& p, int64_t co0, int64_t co1, int64_t oh0, int64_t oh1, int64_t ow0,
                       int64_t width) {
  const int64_t step = std::min(p.strip_rows, max_strip_rows<V, NV>());
  for (int64_t oh = oh0; oh < oh1; oh += step) {
    const int64_t rows = std::min(step, oh1 - oh);
    for (int64_t co = co0; co < co1; ++co) sparse_conv_strip_rows<V, NV>(p, co, oh, rows, ow0, width);
  }
}

template <class V>
void sparse_conv_rows(const SparseConvPlan& p, int64_t co0, int64_t co1, int64_t oh0, int64_t oh1) {
  constexpr int L = V::kLanes;
  constexpr int64_t kChunk = 4 * L;
  const int64_t OW = p.g->OW;
  for (int64_t ow0 = 0; ow0 < OW; ow0 += kChunk) {
    const int64_t width = std::min(kChunk, OW - ow0);
    switch ((width + L - 1) / L) {
      case 1: sparse_conv_chunk<V, 1>(p, co0, co1, oh0, oh1, ow0, width); break;
      case 2: sparse_conv_chunk<V, 2>(p, co0, co1, oh0, oh1, ow0, width); break;
      case 3: sparse_conv_chunk<V, 3>(p, co0, co1, oh0, oh1, ow0, width); break;
      default: sparse_conv_chunk<V, 4>(p, co0, co1, oh0, oh1, ow0, width); break;
    }
  }
}

}  // namespace
}  // namespace slim
