// Sparse 2-D convolution on the CPU (the sparse_conv2d op), a direct convolution without im2col:
//   y[b, co, oh, ow] = bias[co] + sum over the nonzeros (ci, r, s, v) of weight row co of
//                      v * x[b, g*Cin/G + ci, oh*sh - ph + r*dh, ow*sw - pw + s*dw]
// The weight is CSR over output channels of W [Cout, Cin/G * kh * kw], columns in (ci, r, s) order
// (quant/sparse.py). x and y are both NCHW contiguous or both NHWC contiguous (channels_last), of x's
// kind; float32 accumulation.
//
// How: per image, x is copied once into a float32 workspace with the padding written out and each
// row split into its sw stride phases (column iw = j*sw + phase stored at phase*Wph + j), so that the
// input a weight tap reads for consecutive output columns is contiguous whatever the stride; a float32
// x with no padding and unit column stride is read in place (NCHW only: the workspace of an NHWC
// image is its transpose, filled one input row at a time so the pixels' channel vectors stay in cache;
// strips store NHWC outputs with a channel stride). Every nonzero is decoded once per call to
// (offset into the workspace, float32 value). An output strip (one channel, a few rows, up to 4 SIMD
// vectors of columns) stays in registers while the nonzeros of its channel stream past: a 1x1 conv
// is a sparse GEMM over channels with pixels contiguous. The workspace is one image's input (no k*k
// im2col copy); threads split (output-row tiles x channel blocks) of each image.
#pragma once
#include <cstdint>

#include "slim/cpu_isa.h"
#include "slim/quantize.h"  // InKind

namespace slim {

enum class SparseValueKind { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kInt8 = 3 };

struct SparseConvArgs {
  const void* x;          // [B, Cin, H, W] contiguous, or [B, H, W, Cin] if channels_last; x_kind
  InKind x_kind;          // also y's kind
  bool channels_last;     // x and y NHWC
  int64_t B, Cin, H, W;
  const int32_t* row_ptr; // [Cout + 1]
  const void* col_idx;    // [nnz] int16 or int32 (col_idx_32)
  bool col_idx_32;
  const void* values;     // [nnz], value_kind
  SparseValueKind value_kind;
  const float* scales;    // [Cout] for int8 values, else unused
  const float* bias;      // [Cout] or nullptr
  int64_t Cout, nnz;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw, groups;
  void* y;                // [B, Cout, OH, OW] contiguous, or [B, OH, OW, Cout] if channels_last; x_kind
  int64_t OH, OW;         // must equal the sizes the geometry gives
};

// One decoded nonzero: its offset in an image's workspace (from the strip's origin) and its value.
struct SparseConvTap {
  int32_t off;
  float v;
};

// What the strip kernels read: one image's float32 workspace and the decoded taps.
struct SparseConvPlan {
  const SparseConvArgs* g;
  const float* xw;        // workspace of the image: [Cin][Hp][sw][Wph]
  int64_t row_len;        // sw * Wph
  const SparseConvTap* taps;  // nnz, rows as row_ptr
  void* y_image;          // y of the image: [Cout, OH, OW] (or [OH, OW, Cout])
  int64_t strip_rows;     // output rows per strip at most (the strip's input rows stay in cache)
};

// Validates every size, the row pointers and the column indices (std::invalid_argument naming
// the argument), then runs on up to num_threads threads. O(Cout + nnz) checks per call.
void sparse_conv2d(const SparseConvArgs& args, int num_threads, CpuIsa isa);

// Per-ISA kernels: output channels [co0, co1) x output rows [oh0, oh1) of one image, whole width.
void sparse_conv_rows_scalar(const SparseConvPlan& p, int64_t co0, int64_t co1, int64_t oh0, int64_t oh1);
#ifdef SLIM_X86
void sparse_conv_rows_avx2(const SparseConvPlan& p, int64_t co0, int64_t co1, int64_t oh0, int64_t oh1);
void sparse_conv_rows_avx512_vnni(const SparseConvPlan& p, int64_t co0, int64_t co1, int64_t oh0, int64_t oh1);
#endif

}  // namespace slim
