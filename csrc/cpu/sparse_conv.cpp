// sparse_conv2d: validation, decoding the CSR weight into taps, the per-image workspace, the split
// over threads, and the scalar strips. The SIMD strips are sparse_conv_{avx2,avx512_vnni}.cpp; all
// three are the one template of slim/sparse_conv_strip.h.
#include "slim/sparse_conv.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "slim/cpu_convert.h"
#include "slim/scratch.h"
#include "slim/sparse_conv_strip.h"
#include "slim/thread_pool.h"

namespace slim {
namespace {

struct Scalar {
  static constexpr int kLanes = 1;
  using Vec = float;
  using Mask = bool;
  static Mask mask(int64_t n) { return n > 0; }
  static constexpr int kAccumulators = 8;
  static Vec loadu(const float* p) { return *p; }
  static Vec set1(float f) { return f; }
  static Vec load(const float* p, Mask m) { return m ? *p : 0.f; }
  static Vec fma(Vec a, Vec b, Vec c) { return a * b + c; }
  static void store(float* p, Vec v, Mask m) {
    if (m) *p = v;
  }
};

[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument("sparse_conv2d: " + msg); }

void at_least(const char* name, int64_t value, int64_t low) {
  if (value < low) bad(std::string(name) + " must be >= " + std::to_string(low) + ", got " + std::to_string(value));
}

// Output size of one spatial dim; invalid_argument when the (padded) input is smaller than the kernel.
int64_t out_size(const char* dim, int64_t in, int64_t k, int64_t s, int64_t pad, int64_t d) {
  const int64_t span = d * (k - 1) + 1;
  if (in + 2 * pad < span)
    bad(std::string("the padded input ") + dim + " (" + std::to_string(in + 2 * pad) + ") is smaller than the dilated "
        "kernel (" + std::to_string(span) + ")");
  return (in + 2 * pad - span) / s + 1;
}

void validate(const SparseConvArgs& g, int num_threads, CpuIsa isa) {
  at_least("B", g.B, 0);
  at_least("Cin", g.Cin, 1);
  at_least("H", g.H, 1);
  at_least("W", g.W, 1);
  at_least("Cout", g.Cout, 1);
  at_least("nnz", g.nnz, 0);
  at_least("kernel_size[0]", g.kh, 1);
  at_least("kernel_size[1]", g.kw, 1);
  at_least("stride[0]", g.sh, 1);
  at_least("stride[1]", g.sw, 1);
  at_least("padding[0]", g.ph, 0);
  at_least("padding[1]", g.pw, 0);
  at_least("dilation[0]", g.dh, 1);
  at_least("dilation[1]", g.dw, 1);
  at_least("groups", g.groups, 1);
  at_least("num_threads", num_threads, 1);
  // Sizes a real tensor can have: keeps every product below int64 overflow.
  const int64_t kBig = int64_t(1) << 31;
  for (int64_t v : {g.B, g.Cin, g.H, g.W, g.Cout, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw})
    if (v >= kBig) bad("a size or convolution parameter is >= 2^31");
  if (g.Cin % g.groups || g.Cout % g.groups)
    bad("groups=" + std::to_string(g.groups) + " must divide Cin=" + std::to_string(g.Cin) + " and Cout=" +
        std::to_string(g.Cout));
  const int64_t oh = out_size("height", g.H, g.kh, g.sh, g.ph, g.dh);
  const int64_t ow = out_size("width", g.W, g.kw, g.sw, g.pw, g.dw);
  if (oh != g.OH || ow != g.OW)
    bad("output " + std::to_string(g.OH) + "x" + std::to_string(g.OW) + " does not match the geometry's " +
        std::to_string(oh) + "x" + std::to_string(ow));
  if (!isa_supported(isa)) bad(std::string("isa '") + isa_name(isa) + "' is not supported on this CPU/build");
  if (!g.row_ptr) bad("row_ptr must not be null");
  if (g.row_ptr[0] != 0) bad("row_ptr[0] must be 0, got " + std::to_string(g.row_ptr[0]));
  for (int64_t co = 0; co < g.Cout; ++co)
    if (g.row_ptr[co + 1] < g.row_ptr[co]) bad("row_ptr must be non-decreasing (at " + std::to_string(co + 1) + ")");
  if (g.row_ptr[g.Cout] != g.nnz)
    bad("row_ptr[Cout] = " + std::to_string(g.row_ptr[g.Cout]) + " must equal nnz = " + std::to_string(g.nnz));
  if (g.nnz > 0 && (!g.col_idx || !g.values)) bad("col_idx and values must not be null");
  if (g.nnz > 0 && g.value_kind == SparseValueKind::kInt8 && !g.scales) bad("int8 values need scales");
  if (g.B > 0 && (!g.x || !g.y)) bad("x and y must not be null");
}

float value_at(const SparseConvArgs& g, int64_t j, int64_t co) {
  switch (g.value_kind) {
    case SparseValueKind::kFloat16: return f16_to_f32(static_cast<const uint16_t*>(g.values)[j]);
    case SparseValueKind::kBFloat16: return bf16_to_f32(static_cast<const uint16_t*>(g.values)[j]);
    case SparseValueKind::kInt8: return float(static_cast<const int8_t*>(g.values)[j]) * g.scales[co];
    default: return static_cast<const float*>(g.values)[j];
  }
}

// Splits [0, n) into nt near-equal parts; part tid.
inline void part(int64_t n, int tid, int nt, int64_t* lo, int64_t* hi) {
  *lo = n * tid / nt;
  *hi = n * (tid + 1) / nt;
}

// Every nonzero -> (workspace offset, float32 value), through a table of each column's offset
// (no division per nonzero). The column indices are checked here; the first bad one is reported
// after the threads join (the workers must not throw).
void decode_taps(const SparseConvArgs& g, int64_t plane, int64_t row_len, int64_t wph, SparseConvTap* taps, int nt) {
  const int64_t cin_g = g.Cin / g.groups, cout_g = g.Cout / g.groups;
  const int64_t k = cin_g * g.kh * g.kw;
  auto* col_off = static_cast<int64_t*>(thread_scratch(2, sizeof(int64_t) * size_t(k) + 64));
  for (int64_t ci = 0, col = 0; ci < cin_g; ++ci)
    for (int64_t r = 0; r < g.kh; ++r)
      for (int64_t s = 0, sd = 0; s < g.kw; ++s, ++col, sd += g.dw)
        col_off[col] = ci * plane + r * g.dh * row_len + (sd % g.sw) * wph + sd / g.sw;
  std::atomic<int64_t> first_bad{std::numeric_limits<int64_t>::max()};
  parallel_for(g.nnz < 65536 ? 1 : nt, [&](int tid, int n) {
    int64_t co0, co1;
    part(g.Cout, tid, n, &co0, &co1);
    for (int64_t co = co0; co < co1; ++co) {
      const int64_t base = (co / cout_g) * cin_g * plane;
      for (int64_t j = g.row_ptr[co]; j < g.row_ptr[co + 1]; ++j) {
        const int64_t col = g.col_idx_32 ? int64_t(static_cast<const int32_t*>(g.col_idx)[j])
                                         : int64_t(static_cast<const int16_t*>(g.col_idx)[j]);
        if (col < 0 || col >= k) {
          int64_t seen = first_bad.load();
          while (j < seen && !first_bad.compare_exchange_weak(seen, j)) {
          }
          taps[j] = {0, 0.f};
          continue;
        }
        taps[j] = {int32_t(base + col_off[col]), value_at(g, j, co)};
      }
    }
  });
  const int64_t j = first_bad.load();
  if (j != std::numeric_limits<int64_t>::max()) {
    const int64_t col = g.col_idx_32 ? int64_t(static_cast<const int32_t*>(g.col_idx)[j])
                                     : int64_t(static_cast<const int16_t*>(g.col_idx)[j]);
    bad("col_idx[" + std::to_string(j) + "] = " + std::to_string(col) + " is outside [0, Cin/groups*kh*kw = " +
        std::to_string(k) + ")");
  }
}

inline float x_at(const void* x, InKind kind, int64_t i) {
  switch (kind) {
    case InKind::kFloat16: return f16_to_f32(static_cast<const uint16_t*>(x)[i]);
    case InKind::kBFloat16: return bf16_to_f32(static_cast<const uint16_t*>(x)[i]);
    default: return static_cast<const float*>(x)[i];
  }
}

// Rows ihp of channels [c0, c1) of the workspace from an NHWC image: a transpose in blocks of
// kPixelBlock pixels, so the block's channel vectors stay in L1 while every channel reads them.
constexpr int64_t kPixelBlock = 32;

void fill_rows_nhwc(const SparseConvArgs& g, int64_t b, int64_t ihp, int64_t c0, int64_t c1, int64_t hp, int64_t wph,
                    float* xw) {
  const int64_t row_len = g.sw * wph, ih = ihp - g.ph;
  const bool inside = ih >= 0 && ih < g.H;
  if (!inside || g.pw > 0 || row_len > g.W)  // rows the pixels below do not cover whole: zeros first
    for (int64_t ci = c0; ci < c1; ++ci) std::memset(xw + (ci * hp + ihp) * row_len, 0, sizeof(float) * row_len);
  if (!inside) return;
  const int64_t src = (b * g.H + ih) * g.W * g.Cin;
  int64_t pos[kPixelBlock];  // each pixel's place in a workspace row (padded column, split by phase)
  for (int64_t iw0 = 0; iw0 < g.W; iw0 += kPixelBlock) {
    const int64_t n = std::min(g.W, iw0 + kPixelBlock) - iw0;
    for (int64_t k = 0; k < n; ++k) pos[k] = ((iw0 + k + g.pw) % g.sw) * wph + (iw0 + k + g.pw) / g.sw;
    const int64_t first = src + iw0 * g.Cin;
    for (int64_t ci = c0; ci < c1; ++ci) {
      float* dst = xw + (ci * hp + ihp) * row_len;
      if (g.x_kind == InKind::kFloat32) {
        const float* x = static_cast<const float*>(g.x) + first + ci;
        for (int64_t k = 0; k < n; ++k) dst[pos[k]] = x[k * g.Cin];
      } else {
        const uint16_t* x = static_cast<const uint16_t*>(g.x) + first + ci;
        if (g.x_kind == InKind::kFloat16) {
          for (int64_t k = 0; k < n; ++k) dst[pos[k]] = f16_to_f32(x[k * g.Cin]);
        } else {
          for (int64_t k = 0; k < n; ++k) dst[pos[k]] = bf16_to_f32(x[k * g.Cin]);
        }
      }
    }
  }
}

// Channels [c0, c1) of image b of x -> its float32 workspace xw [Cin][Hp][sw][Wph], padding written
// out, columns split by phase.
void fill_workspace(const SparseConvArgs& g, int64_t b, int64_t c0, int64_t c1, int64_t hp, int64_t wph, float* xw) {
  const int64_t row_len = g.sw * wph;
  if (g.channels_last) {
    for (int64_t ihp = 0; ihp < hp; ++ihp) fill_rows_nhwc(g, b, ihp, c0, c1, hp, wph, xw);
    return;
  }
  for (int64_t ci = c0; ci < c1; ++ci) {
    for (int64_t ihp = 0; ihp < hp; ++ihp) {
      float* dst = xw + (ci * hp + ihp) * row_len;
      const int64_t ih = ihp - g.ph;
      if (ih < 0 || ih >= g.H) {
        std::memset(dst, 0, sizeof(float) * row_len);
        continue;
      }
      const int64_t src = ((b * g.Cin + ci) * g.H + ih) * g.W;
      if (g.sw == 1) {
        std::memset(dst, 0, sizeof(float) * g.pw);
        if (g.x_kind == InKind::kFloat32) {
          std::memcpy(dst + g.pw, static_cast<const float*>(g.x) + src, sizeof(float) * g.W);
        } else {
          for (int64_t iw = 0; iw < g.W; ++iw) dst[g.pw + iw] = x_at(g.x, g.x_kind, src + iw);
        }
        std::memset(dst + g.pw + g.W, 0, sizeof(float) * (row_len - g.pw - g.W));
        continue;
      }
      for (int64_t phase = 0; phase < g.sw; ++phase)
        for (int64_t j = 0; j < wph; ++j) {
          const int64_t iw = j * g.sw + phase - g.pw;
          dst[phase * wph + j] = iw >= 0 && iw < g.W ? x_at(g.x, g.x_kind, src + iw) : 0.f;
        }
    }
  }
}

using RowsKernel = void (*)(const SparseConvPlan&, int64_t, int64_t, int64_t, int64_t);

RowsKernel kernel_for(CpuIsa isa) {
#ifdef SLIM_X86
  if (isa == CpuIsa::kAvx512Vnni) return sparse_conv_rows_avx512_vnni;
  if (isa == CpuIsa::kAvx2) return sparse_conv_rows_avx2;
#endif
  (void)isa;
  return sparse_conv_rows_scalar;
}

constexpr int64_t kRowsPerTask = 8;      // output rows of one task (a multiple of the strips' row group)
// Bytes of workspace one strip reads over all input channels of a group: while they stay in L1 (32-48
// KB), every channel of a task reads them from there. More rows per strip amortize a tap over more
// FMAs but read more; strips take the most rows (8, 4, 2, 1) that fit, but at least enough for 4
// vectors of 16 columns per tap (below that the tap's decoding dominates: measured on the ResNet-50
// shapes, 3x3 256->256 at 14x14 ran 1.5x slower with one 14-column row per strip than with 8).
constexpr int64_t kStripBytes = 40 * 1024;
constexpr int64_t kStripColumns = 64;    // the widest strip: 4 AVX-512 vectors

int64_t strip_rows(const SparseConvArgs& g, int64_t row_len) {
  const int64_t cols = std::min(row_len, kStripColumns * g.sw + (g.kw - 1) * g.dw);
  const int64_t vectors = (std::min(g.OW, kStripColumns) + 15) / 16;
  const int64_t min_rows = std::max<int64_t>(1, 4 / vectors);
  int64_t rows = 8;
  while (rows > min_rows && (g.Cin / g.groups) * ((rows - 1) * g.sh + (g.kh - 1) * g.dh + 1) * cols * 4 > kStripBytes)
    rows /= 2;
  return rows;
}
constexpr int64_t kChannelsPerTask = 4;  // the unit of the channel split
// Workspace bytes of the images one pass fills and convolves (one parallel region each per pass, not
// per image: fewer waits for threads; the workspace stays within L2/L3 sizes).
constexpr int64_t kPassBytes = 8 << 20;

}  // namespace

void sparse_conv_rows_scalar(const SparseConvPlan& p, int64_t co0, int64_t co1, int64_t oh0, int64_t oh1) {
  sparse_conv_rows<Scalar>(p, co0, co1, oh0, oh1);
}

void sparse_conv2d(const SparseConvArgs& args, int num_threads, CpuIsa isa) {
  validate(args, num_threads, isa);
  SparseConvArgs g = args;
  if (g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0) {
    // A 1x1 conv with unit stride and no padding maps pixel p to pixel p: one row of H*W pixels
    // (a sparse GEMM over channels with pixels contiguous, no partial vectors per image row).
    g.W = g.OW = g.H * g.W;
    g.H = g.OH = 1;
  }
  const int64_t hp = g.H + 2 * g.ph, wp = g.W + 2 * g.pw;
  const int64_t wph = (wp + g.sw - 1) / g.sw, row_len = g.sw * wph;
  const int64_t plane = hp * row_len;
  if (g.Cin * plane >= (int64_t(1) << 31)) bad("one image's padded input must hold fewer than 2^31 elements");
  // float32 input without padding and with unit column stride is its own workspace.
  const bool in_place = g.x_kind == InKind::kFloat32 && !g.channels_last && g.ph == 0 && g.pw == 0 && g.sw == 1;

  auto* taps = static_cast<SparseConvTap*>(thread_scratch(0, sizeof(SparseConvTap) * size_t(g.nnz) + 64));
  decode_taps(g, plane, row_len, wph, taps, num_threads);
  if (g.B == 0) return;
  const int64_t image = g.Cin * plane;  // workspace floats per image
  const int64_t per_pass = in_place ? g.B : std::max<int64_t>(1, std::min(g.B, kPassBytes / (image * 4)));
  float* buf = in_place ? nullptr : static_cast<float*>(thread_scratch(1, sizeof(float) * size_t(per_pass * image) + 64));

  const RowsKernel kern = kernel_for(isa);
  const int64_t elem = g.x_kind == InKind::kFloat32 ? 4 : 2;
  const int64_t tiles = (g.OH + kRowsPerTask - 1) / kRowsPerTask;
  const int64_t rows = strip_rows(g, row_len);
  // Multiply-adds per (tile, channel), for parallel_tiles' small-problem test.
  const int64_t work = std::max<int64_t>(1, g.nnz / g.Cout) * std::min(g.OH, kRowsPerTask) * g.OW;
  for (int64_t b0 = 0; b0 < g.B; b0 += per_pass) {
    const int64_t nb = std::min(per_pass, g.B - b0);
    if (!in_place) {  // (image, channel) pairs split over the threads
      parallel_for(nb * image < (1 << 16) ? 1 : num_threads, [&](int tid, int n) {
        int64_t lo, hi;
        part(nb * g.Cin, tid, n, &lo, &hi);
        for (int64_t i = 0; i < nb; ++i) {
          const int64_t c0 = std::max<int64_t>(lo - i * g.Cin, 0), c1 = std::min(hi - i * g.Cin, g.Cin);
          if (c0 < c1) fill_workspace(g, b0 + i, c0, c1, hp, wph, buf + i * image);
        }
      });
    }
    const float* xw = in_place ? static_cast<const float*>(g.x) + b0 * image : buf;
    parallel_tiles(nb * tiles, g.Cout, work, 1, kChannelsPerTask, num_threads,
                   [&](int64_t t0, int64_t t1, int64_t co0, int64_t co1) {
                     for (int64_t t = t0; t < t1; ++t) {
                       const int64_t i = t / tiles, tile = t % tiles;
                       const SparseConvPlan plan{&g, xw + i * image, row_len, taps,
                                                 static_cast<char*>(g.y) + (b0 + i) * g.Cout * g.OH * g.OW * elem, rows};
                       kern(plan, co0, co1, tile * kRowsPerTask, std::min(g.OH, (tile + 1) * kRowsPerTask));
                     }
                   });
  }
}

}  // namespace slim
