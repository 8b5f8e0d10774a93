// A small persistent thread pool for the native CPU kernels (no OpenMP: torch ships its own
// runtime, and mixing the two oversubscribes the cores).
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

namespace slim {

// Runs fn(tid, nt) for tid in [0, nt), nt <= max(1, num_threads) (a runtime may give fewer
// threads: use the nt passed in); the calling thread runs tid 0. fn must not throw.
// By default the work runs on torch's own OpenMP team when use_openmp_runtime() attached it (so
// our kernels and torch's ops take turns on the same threads instead of competing for the cores
// while OpenMP workers spin), else on a small persistent pool of our own. Calls from several
// threads at once on our own pool are serialized, so it never oversubscribes or deadlocks.
void parallel_for(int num_threads, const std::function<void(int tid, int nt)>& fn);

// Runs block(m0, m1, n0, n1) over an M x N output in tiles of `mblock` rows by whole multiples of
// `nr` columns, on up to num_threads threads. Small problems (M*N*K < 2^18) run on the calling
// thread: waking a worker costs a few microseconds. Otherwise tasks (N chunks x M blocks, about 16
// per thread) come from a shared counter, so a thread whose core is busy elsewhere does not hold the
// others up.
template <typename Block>
void parallel_tiles(int64_t M, int64_t N, int64_t K, int64_t mblock, int64_t nr, int num_threads, const Block& block) {
  const int64_t nblocks = (N + nr - 1) / nr;
  const int64_t mtasks = (M + mblock - 1) / mblock;
  const double work = double(M) * double(N) * double(K);
  const int64_t nt = std::min<int64_t>(work < (1 << 18) ? 1 : num_threads, nblocks * mtasks);
  if (nt <= 1) {
    for (int64_t m0 = 0; m0 < M; m0 += mblock) block(m0, std::min(M, m0 + mblock), int64_t(0), N);
    return;
  }
  const int64_t chunk = std::max<int64_t>(1, nblocks * mtasks / (16 * nt));
  const int64_t ntasks = (nblocks + chunk - 1) / chunk * mtasks;
  std::atomic<int64_t> next{0};
  parallel_for(static_cast<int>(nt), [&](int, int) {
    for (int64_t t; (t = next.fetch_add(1, std::memory_order_relaxed)) < ntasks;) {
      const int64_t ic = t / mtasks, im = t % mtasks;
      const int64_t m0 = im * mblock;
      block(m0, std::min(M, m0 + mblock), ic * chunk * nr, std::min(N, (ic + 1) * chunk * nr));
    }
  });
}

// Attach the OpenMP runtime at `path`, which must already be loaded in this process (torch's
// libgomp): its GOMP_parallel then runs parallel_for. Returns false (and changes nothing) when the
// library is not loaded or lacks the entry points. An empty path detaches (back to our own pool).
bool use_openmp_runtime(const std::string& path);
// "openmp:<path>" or "own pool".
std::string thread_runtime();

}  // namespace slim
