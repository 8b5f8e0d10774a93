// Low-rank linear layer (slim/low_rank.h): validation, ISA dispatch, the two phases over the team,
// and the scalar block.
#include "slim/low_rank.h"

#include <stdexcept>
#include <string>

#include "slim/scratch.h"
#include "slim/thread_pool.h"

namespace slim {

void low_rank_abt_scalar(const float* a, int64_t lda, const float* b, int64_t ldb, const float* bias, float* c,
                         int64_t ldc, int64_t M, int64_t j0, int64_t j1, int64_t L) {
  for (int64_t j = j0; j < j1; ++j)
    for (int64_t m = 0; m < M; ++m) {
      float s = 0.f;
      for (int64_t l = 0; l < L; ++l) s += a[m * lda + l] * b[j * ldb + l];
      c[m * ldc + j] = bias ? s + bias[j] : s;
    }
}

namespace {

[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument("low_rank_linear: " + msg); }

struct Kernel {
  LowRankAbtFn abt;
  int64_t nr;  // rows of B per register tile: the threads' chunks are whole multiples of it
};

Kernel kernel_for(CpuIsa isa) {
#ifdef SLIM_X86
  if (isa == CpuIsa::kAvx512Vnni) return {low_rank_abt_avx512_vnni, 4};
  if (isa == CpuIsa::kAvx2) return {low_rank_abt_avx2, 3};
#endif
  (void)isa;
  return {low_rank_abt_scalar, 1};
}

void validate(const LowRankArgs& w, const float* x, int64_t ldx, const float* y, int64_t ldy, int64_t M,
              int num_threads, CpuIsa isa) {
  if (w.r < 1) bad("r (the rank) must be >= 1, got " + std::to_string(w.r));
  if (w.N < 0) bad("N must be >= 0, got " + std::to_string(w.N));
  if (w.K < 0) bad("K must be >= 0, got " + std::to_string(w.K));
  if (M < 0) bad("M must be >= 0, got " + std::to_string(M));
  if (M > 1 && ldx < w.K) bad("ldx must be >= K (" + std::to_string(w.K) + "), got " + std::to_string(ldx));
  if (M > 1 && ldy < w.N) bad("ldy must be >= N (" + std::to_string(w.N) + "), got " + std::to_string(ldy));
  if (num_threads < 1) bad("num_threads must be >= 1, got " + std::to_string(num_threads));
  if (!isa_supported(isa)) bad(std::string("isa '") + isa_name(isa) + "' is not supported on this CPU/build");
  if (M == 0 || w.N == 0) return;
  if (!y) bad("y must not be null");
  if (!w.u) bad("u must not be null");
  if (w.K && !x) bad("x must not be null");
  if (w.K && !w.v) bad("v must not be null");
}

}  // namespace

void low_rank_linear(const LowRankArgs& w, const float* x, int64_t ldx, float* y, int64_t ldy, int64_t M,
                     int num_threads, CpuIsa isa) {
  validate(w, x, ldx, y, ldy, M, num_threads, isa);
  if (M == 0 || w.N == 0) return;
  const Kernel kern = kernel_for(isa);
  // t [rows, r]: on the calling thread's scratch, written by the whole team in phase 1, read in phase 2.
  float* t = static_cast<float*>(thread_scratch(0, size_t(std::min(M, kLowRankRows) * w.r) * sizeof(float)));
  for (int64_t m0 = 0; m0 < M; m0 += kLowRankRows) {
    const int64_t rows = std::min(kLowRankRows, M - m0);
    const float* xb = x + m0 * ldx;
    // Phase 1: t = x V^T, the team split over V's rows (all of the block's rows of x per task).
    parallel_tiles(rows, w.r, w.K, rows, kern.nr, num_threads, [&](int64_t, int64_t, int64_t j0, int64_t j1) {
      kern.abt(xb, ldx, w.v, w.K, nullptr, t, w.r, rows, j0, j1, w.K);
    });
    // Phase 2: y = t U^T + bias, split over U's rows.
    float* yb = y + m0 * ldy;
    parallel_tiles(rows, w.N, w.r, rows, kern.nr, num_threads, [&](int64_t, int64_t, int64_t j0, int64_t j1) {
      kern.abt(t, w.r, w.u, w.r, w.bias, yb, ldy, rows, j0, j1, w.r);
    });
  }
}

}  // namespace slim
