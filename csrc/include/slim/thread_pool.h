// A small persistent thread pool for the native CPU kernels (no OpenMP: torch ships its own
// runtime, and mixing the two oversubscribes the cores).
#pragma once
#include <functional>

namespace slim {

// Runs fn(tid, nt) for tid in [0, nt) with nt = max(1, num_threads); the calling thread runs tid 0.
// Calls from several threads at once are serialized (one job owns the pool at a time), so it never
// uses more than num_threads cores per call and cannot deadlock. fn must not throw.
void parallel_for(int num_threads, const std::function<void(int tid, int nt)>& fn);

}  // namespace slim
