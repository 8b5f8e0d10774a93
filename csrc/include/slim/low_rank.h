// Low-rank linear layer on the CPU: y = (x V^T) U^T + bias, x float32 [M, K] (row stride ldx),
// V float32 [r, K], U float32 [N, r], bias float32 [N] or null, y float32 [M, N] (row stride ldy).
//
// At small M the layer is memory-bound: the work is reading the two factors, r (N + K) floats. The
// kernel reads each of them once per call: for a block of up to kLowRankRows rows of x,
//   phase 1  t = x V^T  into a [rows, r] buffer (r floats per row: L1/L2), the team split over V's rows;
//   phase 2  y = t U^T + bias, the team split over U's rows (t is read from cache by every thread).
// Both phases are the same operation, C[m, j] = sum_l A[m, l] B[j, l] (+ bias[j]): a row of B (a
// row of V or U) is streamed from memory once and dotted with every row of A, in register tiles of
// kMR rows of A by kNR rows of B per ISA (the B tile is re-read from L2 for each block of A's rows).
// float32 accumulation; the order of the sums depends on the ISA, not on the threads.
#pragma once
#include <algorithm>
#include <cstdint>

#include "slim/cpu_isa.h"

namespace slim {

constexpr int64_t kLowRankRows = 32;  // rows of x per block: t stays [32, r] floats (128 KiB at r = 1024)

struct LowRankArgs {
  const float* v;     // [r, K]
  const float* u;     // [N, r]
  const float* bias;  // [N] or null
  int64_t N, K, r;
};

// Validation (std::invalid_argument naming the argument) happens here.
void low_rank_linear(const LowRankArgs& w, const float* x, int64_t ldx, float* y, int64_t ldy, int64_t M,
                     int num_threads, CpuIsa isa);

// ---- per-ISA blocks: C[m, j] = sum_{l < L} A[m, l] B[j, l] (+ bias[j]) for m < M, j in [j0, j1) ------
// (c and bias are indexed by the absolute j; bias may be null.) Callable from any thread.
using LowRankAbtFn = void (*)(const float* a, int64_t lda, const float* b, int64_t ldb, const float* bias, float* c,
                              int64_t ldc, int64_t M, int64_t j0, int64_t j1, int64_t L);
void low_rank_abt_scalar(const float* a, int64_t lda, const float* b, int64_t ldb, const float* bias, float* c,
                         int64_t ldc, int64_t M, int64_t j0, int64_t j1, int64_t L);
#ifdef SLIM_X86
void low_rank_abt_avx2(const float* a, int64_t lda, const float* b, int64_t ldb, const float* bias, float* c,
                       int64_t ldc, int64_t M, int64_t j0, int64_t j1, int64_t L);
void low_rank_abt_avx512_vnni(const float* a, int64_t lda, const float* b, int64_t ldb, const float* bias, float* c,
                              int64_t ldc, int64_t M, int64_t j0, int64_t j1, int64_t L);
#endif

namespace {
// ---- the SIMD blocks, over a policy P (internal linkage: each ISA file instantiates its own) ------------
// P: kW (float lanes), V, zero(), load(const float*), fma(a, b, c), hsum(V).

// One register tile: c[i, j] for MR rows of a and NR rows of b; the lanes past the last multiple of kW
// are summed in scalar code (r or K need not be a multiple of the SIMD width).
template <class P, int MR, int NR>
inline void low_rank_tile(const float* a, int64_t lda, const float* b, int64_t ldb, const float* bias, float* c,
                          int64_t ldc, int64_t L) {
  using V = typename P::V;
  V acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = P::zero();
  int64_t l = 0;
  for (; l + P::kW <= L; l += P::kW) {
    V bv[NR];
    for (int j = 0; j < NR; ++j) bv[j] = P::load(b + j * ldb + l);
    for (int i = 0; i < MR; ++i) {
      const V av = P::load(a + i * lda + l);
      for (int j = 0; j < NR; ++j) acc[i][j] = P::fma(av, bv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      float s = P::hsum(acc[i][j]);
      for (int64_t t = l; t < L; ++t) s += a[i * lda + t] * b[j * ldb + t];
      c[i * ldc + j] = bias ? s + bias[j] : s;
    }
}

// B's rows NR at a time (each tile of B read from memory once, then from cache for every block of A's
// rows), A's rows MR at a time; the leftover rows of either one at a time.
template <class P>
void low_rank_abt_simd(const float* a, int64_t lda, const float* b, int64_t ldb, const float* bias, float* c,
                       int64_t ldc, int64_t M, int64_t j0, int64_t j1, int64_t L) {
  constexpr int MR = P::kMR, NR = P::kNR;
  int64_t j = j0;
  for (; j + NR <= j1; j += NR) {
    const float* bj = b + j * ldb;
    const float* biasj = bias ? bias + j : nullptr;
    int64_t m = 0;
    for (; m + MR <= M; m += MR) low_rank_tile<P, MR, NR>(a + m * lda, lda, bj, ldb, biasj, c + m * ldc + j, ldc, L);
    for (; m < M; ++m) low_rank_tile<P, 1, NR>(a + m * lda, lda, bj, ldb, biasj, c + m * ldc + j, ldc, L);
  }
  for (; j < j1; ++j) {
    const float* bj = b + j * ldb;
    const float* biasj = bias ? bias + j : nullptr;
    int64_t m = 0;
    for (; m + MR <= M; m += MR) low_rank_tile<P, MR, 1>(a + m * lda, lda, bj, ldb, biasj, c + m * ldc + j, ldc, L);
    for (; m < M; ++m) low_rank_tile<P, 1, 1>(a + m * lda, lda, bj, ldb, biasj, c + m * ldc + j, ldc, L);
  }
}
}  // namespace

}  // namespace slim
