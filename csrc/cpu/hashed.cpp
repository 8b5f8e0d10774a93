// Hashed weight sharing (slim/hashed.h): validation, ISA dispatch, the split of W's rows over threads,
// the scalar row decoder, and the bucket gradient (a scatter-add: scalar, one accumulator per thread).
#include "slim/hashed.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "slim/scratch.h"
#include "slim/thread_pool.h"

namespace slim {

void hashed_rows_scalar(const HashedArgs& w, int64_t n0, int64_t n1, int64_t k0, int64_t k1, float* out,
                        int64_t ldo) {
  const uint32_t count = uint32_t(w.num_buckets), seed = uint32_t(w.seed);
  for (int64_t n = n0; n < n1; ++n) {
    const uint32_t row = uint32_t(uint64_t(n) * uint64_t(w.K)), base = hashed_base(n, w.N, w.num_buckets);
    float* o = out + (n - n0) * ldo;
    for (int64_t k = k0; k < k1; ++k) o[k - k0] = hashed_entry(w.buckets, count, seed, base, row + uint32_t(k));
  }
}

void hashed_lookup(const float* buckets, const uint32_t* idx, float* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = buckets[idx[j]];
}

float hashed_dot_scalar(const float* a, const float* b, int64_t k) {
  float s = 0.f;
  for (int64_t i = 0; i < k; ++i) s += a[i] * b[i];
  return s;
}

namespace {

[[noreturn]] void bad(const char* fn, const std::string& msg) {
  throw std::invalid_argument(std::string(fn) + ": " + msg);
}

using RowsFn = void (*)(const HashedArgs&, int64_t, int64_t, int64_t, int64_t, float*, int64_t);
using DotFn = float (*)(const float*, const float*, int64_t);

struct Kernels {
  RowsFn rows;
  DotFn dot;
};

Kernels kernels_for(CpuIsa isa) {
#ifdef SLIM_X86
  if (isa == CpuIsa::kAvx512Vnni) return {hashed_rows_avx512_vnni, hashed_dot_avx512_vnni};
  if (isa == CpuIsa::kAvx2) return {hashed_rows_avx2, hashed_dot_avx2};
#endif
  (void)isa;
  return {hashed_rows_scalar, hashed_dot_scalar};
}

void validate(const char* fn, const HashedArgs& w, int num_threads, bool reads_buckets = true) {
  if (w.num_buckets < 1 || w.num_buckets >= (int64_t(1) << 31))
    bad(fn, "num_buckets must be in [1, 2^31), got " + std::to_string(w.num_buckets));
  if (w.seed < 0 || w.seed >= (int64_t(1) << 32)) bad(fn, "seed must be in [0, 2^32), got " + std::to_string(w.seed));
  if (w.N < 0) bad(fn, "N must be >= 0, got " + std::to_string(w.N));
  if (w.K < 0) bad(fn, "K must be >= 0, got " + std::to_string(w.K));
  if (reads_buckets && w.N && w.K && !w.buckets) bad(fn, "buckets must not be null");
  if (num_threads < 1) bad(fn, "num_threads must be >= 1, got " + std::to_string(num_threads));
}

// Threads for `work` multiply-adds (or hashes) over `rows` rows: one below 2^15, waking a worker costs more.
int threads_for(double work, int64_t rows, int num_threads) {
  return work < double(1 << 15) ? 1 : int(std::max<int64_t>(1, std::min<int64_t>(num_threads, rows)));
}

// fn(n0, n1) over row chunks [0, rows), about 8 chunks per thread taken from a shared counter.
template <class Fn>
void over_rows(int64_t rows, int nt, const Fn& fn) {
  if (nt <= 1) return fn(int64_t(0), rows);
  const int64_t tasks = std::min<int64_t>(rows, 8 * int64_t(nt)), chunk = (rows + tasks - 1) / tasks;
  std::atomic<int64_t> next{0};
  parallel_for(nt, [&](int, int) {
    for (int64_t t; (t = next.fetch_add(1, std::memory_order_relaxed)) * chunk < rows;)
      fn(t * chunk, std::min(rows, (t + 1) * chunk));
  });
}

}  // namespace

void hashed_linear(const HashedArgs& w, const float* x, int64_t ldx, const float* bias, float* y, int64_t ldy,
                   int64_t M, int num_threads, CpuIsa isa) {
  const char* fn = "hashed_linear";
  validate(fn, w, num_threads);
  if (M < 0) bad(fn, "M must be >= 0, got " + std::to_string(M));
  if (M > 1 && ldx < w.K) bad(fn, "ldx must be >= K (" + std::to_string(w.K) + "), got " + std::to_string(ldx));
  if (M > 1 && ldy < w.N) bad(fn, "ldy must be >= N (" + std::to_string(w.N) + "), got " + std::to_string(ldy));
  if (!isa_supported(isa)) bad(fn, std::string("isa '") + isa_name(isa) + "' is not supported on this CPU/build");
  if (M == 0 || w.N == 0) return;
  if (!y) bad(fn, "y must not be null");
  if (w.K && !x) bad(fn, "x must not be null");
  const Kernels kern = kernels_for(isa);
  const int nt = threads_for(double(w.N) * double(w.K) * double(M + 1), w.N, num_threads);
  over_rows(w.N, nt, [&](int64_t n0, int64_t n1) {
    // One decoded row of W at a time (K floats, in L1 / L2), dotted with every row of x.
    float* row = static_cast<float*>(thread_scratch(0, size_t(w.K + 1) * sizeof(float)));
    for (int64_t n = n0; n < n1; ++n) {
      kern.rows(w, n, n + 1, 0, w.K, row, w.K);
      const float b = bias ? bias[n] : 0.f;
      for (int64_t m = 0; m < M; ++m) y[m * ldy + n] = kern.dot(row, x + m * ldx, w.K) + b;
    }
  });
}

void hashed_weight(const HashedArgs& w, float* out, int num_threads, CpuIsa isa) {
  const char* fn = "hashed_weight";
  validate(fn, w, num_threads);
  if (!isa_supported(isa)) bad(fn, std::string("isa '") + isa_name(isa) + "' is not supported on this CPU/build");
  if (w.N == 0 || w.K == 0) return;
  if (!out) bad(fn, "out must not be null");
  const Kernels kern = kernels_for(isa);
  over_rows(w.N, threads_for(double(w.N) * double(w.K), w.N, num_threads),
            [&](int64_t n0, int64_t n1) { kern.rows(w, n0, n1, 0, w.K, out + n0 * w.K, w.K); });
}

void hashed_bucket_grad(const HashedArgs& w, const float* grad_w, float* grad_buckets, int num_threads) {
  const char* fn = "hashed_bucket_grad";
  validate(fn, w, num_threads, false);
  if (!grad_buckets) bad(fn, "grad_buckets must not be null");
  std::memset(grad_buckets, 0, size_t(w.num_buckets) * sizeof(float));
  if (w.N == 0 || w.K == 0) return;
  if (!grad_w) bad(fn, "grad_w must not be null");
  // A private accumulator per thread (B floats each; at most 64 MiB in all), summed at the end. Rows
  // are split statically, so the sums' order, and the result, depend only on the threads run.
  const int64_t most = std::max<int64_t>(1, (int64_t(64) << 20) / (w.num_buckets * int64_t(sizeof(float))));
  const int nt = int(std::min<int64_t>(threads_for(double(w.N) * double(w.K), w.N, num_threads), most));
  std::vector<float> partial(size_t(nt - 1) * size_t(w.num_buckets), 0.f);
  const uint32_t count = uint32_t(w.num_buckets), seed = uint32_t(w.seed), window = hashed_window(count);
  auto scatter = [&](int tid, int nth) {
    float* acc = tid == 0 ? grad_buckets : partial.data() + size_t(tid - 1) * size_t(w.num_buckets);
    const int64_t n0 = w.N * tid / nth, n1 = w.N * (tid + 1) / nth;
    for (int64_t n = n0; n < n1; ++n) {
      const uint32_t row = uint32_t(uint64_t(n) * uint64_t(w.K)), base = hashed_base(n, w.N, w.num_buckets);
      const float* g = grad_w + n * w.K;
      for (int64_t k = 0; k < w.K; ++k) {
        const uint32_t h = hashed_hash(row + uint32_t(k), seed);
        acc[hashed_bucket(h, base, window, count)] += (h & 1u) ? -g[k] : g[k];
      }
    }
  };
  if (nt <= 1) return scatter(0, 1);
  // The runtime may run fewer threads than asked (nth <= nt): they split the rows among themselves,
  // and the accumulators of the others stay zero.
  parallel_for(nt, scatter);
  for (int t = 1; t < nt; ++t) {
    const float* p = partial.data() + size_t(t - 1) * size_t(w.num_buckets);
    for (int64_t b = 0; b < w.num_buckets; ++b) grad_buckets[b] += p[b];
  }
}

}  // namespace slim
