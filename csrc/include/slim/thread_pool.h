// A small persistent thread pool for the native CPU kernels (no OpenMP: torch ships its own
// runtime, and mixing the two oversubscribes the cores).
#pragma once
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

// Attach the OpenMP runtime at `path`, which must already be loaded in this process (torch's
// libgomp): its GOMP_parallel then runs parallel_for. Returns false (and changes nothing) when the
// library is not loaded or lacks the entry points. An empty path detaches (back to our own pool).
bool use_openmp_runtime(const std::string& path);
// "openmp:<path>" or "own pool".
std::string thread_runtime();

}  // namespace slim
