// 1-D k-means codebooks on the CPU: the native path of slimkernels.quant.codebook.kmeans_codebook
// (the Python there is the reference; this file follows it step for step, see csrc/cpu/kmeans.cpp).
//
// One codebook per row of data [rows, cols]: the row is sorted, float64 prefix sums of its count, sum
// and sum of squares are taken (running outward from 0), and Lloyd runs from 2 + restarts inits (the
// (j + 1/2) / E quantiles, the Lloyd-Max levels of a normal fit, `restarts` k-means++ seedings); the
// fit of least squared error is kept (the first on ties). The k-means++ draws read `uniforms`, drawn
// by the caller from its seeded generator, so the result depends on the data and those numbers only:
// the same for any thread count.
#pragma once
#include <cstdint>

namespace slim {

struct KmeansArgs {
  const float* data;        // [rows, cols] float32, rows contiguous: one codebook per row, all finite
  int64_t rows, cols;       // rows >= 0, cols >= 1
  int entries;              // codebook entries per row, 1..256 (2..256 with keep_zero)
  int iters;                // Lloyd steps at most, >= 0 (fewer when a fit stops moving)
  int restarts;             // k-means++ seedings per row, >= 0
  const double* uniforms;   // [rows, restarts, 2 F - 1] in [0, 1), F = the fitted entries (below)
  const double* normal_z;   // [F]: ndtri((j + 1/2) / F), the normal quantiles of the Lloyd-Max init
  bool keep_zero;           // one entry exactly 0, the F = entries - 1 others fitted to the nonzero weights
  const float* code_data;   // [rows, code_cols]: the weights to give codes (null: data itself)
  int64_t code_cols;        // (ignored when code_data is null) e.g. a whole layer fitted on a sample
};

// codebook: float32 [rows, entries], ascending. codes: uint8 [rows, code_cols], the nearest entry of each
// weight of code_data (a weight exactly halfway goes to the lower entry, as assign_codes), or null for none.
// std::invalid_argument (naming the argument) on bad sizes or null pointers.
void kmeans_codebook(const KmeansArgs& args, float* codebook, uint8_t* codes, int num_threads);

}  // namespace slim
