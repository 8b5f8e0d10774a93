// int8_mm: argument validation, ISA dispatch and the split of the work over threads.
// The per-ISA block kernels live in int8_mm_{scalar,avx2,avx512_vnni,amx}.cpp.
#include "slim/int8_mm.h"

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <string>

#include "slim/scratch.h"
#include "slim/thread_pool.h"

namespace slim {

OutKind parse_out_kind(const std::string& name, const char* arg_name) {
  if (name == "int32") return OutKind::kInt32;
  if (name == "float32") return OutKind::kFloat32;
  if (name == "float16") return OutKind::kFloat16;
  if (name == "bfloat16") return OutKind::kBFloat16;
  throw std::invalid_argument(std::string(arg_name) + ": unknown output kind '" + name +
                              "', expected 'int32', 'float32', 'float16' or 'bfloat16'");
}

namespace {
[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument("int8_mm: " + msg); }

struct Kernels {
  size_t (*stage_bytes)(int64_t, int64_t);
  void (*stage)(const Int8MmArgs&, void*);
  void (*block)(const Int8MmArgs&, const void*, int64_t, int64_t, int64_t, int64_t);
  int64_t group;  // panels of 16 columns per register tile: the unit of the N split
  int64_t mr;     // rows per register tile: the unit of the M split
};

Kernels kernels_for(CpuIsa isa) {
#ifdef SLIM_X86
  if (isa == CpuIsa::kAvx512Vnni)
    return {int8_mm_stage_bytes_avx512_vnni, int8_mm_stage_avx512_vnni, int8_mm_block_avx512_vnni, 3, 8};
  if (isa == CpuIsa::kAvx2) return {int8_mm_stage_bytes_avx2, int8_mm_stage_avx2, int8_mm_block_avx2, 1, 6};
#endif
  (void)isa;
  return {int8_mm_stage_bytes_scalar, int8_mm_stage_scalar, int8_mm_block_scalar, 1, 4};
}

// Whether the AMX-INT8 tiles replace the avx512_vnni kernel (see int8_mm.h).
bool use_amx(const Int8MmArgs& g, CpuIsa isa, CpuAmx amx) {
  if (amx == CpuAmx::kOff) return false;
#ifdef SLIM_AMX
  const bool usable = (isa == CpuIsa::kAvx512Vnni || isa == CpuIsa::kAvx512Bf16) && amx_int8_supported();
#else
  const bool usable = false;
  (void)isa;
#endif
  if (amx == CpuAmx::kOn && !usable)
    bad("amx='on' needs AMX-INT8 (CPU, OS permission and this build) and the avx512_vnni ISA");
  return usable && (amx == CpuAmx::kOn || g.M >= kInt8AmxMinM);
}
}  // namespace

void int8_mm(const Int8MmArgs& g, int num_threads, CpuIsa isa, CpuAmx amx) {
  if (g.M < 0) bad("M must be >= 0, got " + std::to_string(g.M));
  if (g.N < 0) bad("N must be >= 0, got " + std::to_string(g.N));
  if (g.K < 0) bad("K must be >= 0, got " + std::to_string(g.K));
  if (g.lda < g.K || g.lda < 0) bad("lda must be >= K (" + std::to_string(g.K) + "), got " + std::to_string(g.lda));
  if (g.ldc < g.N || g.ldc < 0) bad("ldc must be >= N (" + std::to_string(g.N) + "), got " + std::to_string(g.ldc));
  if (num_threads < 1) bad("num_threads must be >= 1, got " + std::to_string(num_threads));
  if (!isa_supported(isa)) bad(std::string("isa '") + isa_name(isa) + "' is not supported on this CPU/build");
  if (g.M == 0 || g.N == 0) return;
  if (!g.a && g.K > 0) bad("a must not be null");
  if (!g.packed) bad("packed must not be null");
  if (!g.out) bad("out must not be null");
  if (g.out_kind != OutKind::kInt32) {
    if (!g.a_scale) bad("a_scale must not be null for a float output");
    if (!g.b_scale) bad("b_scale must not be null for a float output");
  }

#ifdef SLIM_AMX
  const Kernels kern = use_amx(g, isa, amx)
                           ? Kernels{int8_mm_stage_bytes_amx, int8_mm_stage_amx, int8_mm_block_amx, 2, kInt8AmxRows}
                           : kernels_for(isa);
#else
  use_amx(g, isa, amx);  // amx='on' is an error here
  const Kernels kern = kernels_for(isa);
#endif
  // Activations converted once per call (a few hundred KB at most for LLM shapes), shared read-only.
  void* staged = thread_scratch(0, kern.stage_bytes(g.M, g.K) + 64);
  kern.stage(g, staged);

  const int64_t panels = (g.N + 15) / 16;
  const int64_t groups = (panels + kern.group - 1) / kern.group;
  const int64_t mtiles = (g.M + kern.mr - 1) / kern.mr;
  // Waking a worker costs a few microseconds: small problems run on the calling thread.
  const double work = double(g.M) * double(panels * 16) * double(std::max<int64_t>(g.K, 1));
  const int64_t nt = std::min<int64_t>(work < (1 << 19) ? 1 : num_threads, groups * mtiles);
  if (nt <= 1) {
    kern.block(g, staged, 0, g.M, 0, panels);
    return;
  }
  // Tasks: N chunks (each streams its weights once, all rows of an M block pass over them while they
  // sit in L2) x M blocks (only when there are too few N chunks). Threads take tasks from a shared
  // counter rather than a fixed share, so a thread whose core is busy with another process (shared
  // machines, torch's own pool) does not hold the others up. About 8 tasks per thread.
  int64_t mblock = g.M;
  if (groups < 4 * nt) mblock = std::max<int64_t>(1, (mtiles + 4 * nt - 1) / (4 * nt)) * kern.mr;
  const int64_t mtasks = (g.M + mblock - 1) / mblock;
  const int64_t chunk = std::max<int64_t>(1, groups * mtasks / (8 * nt));
  const int64_t nchunks = (groups + chunk - 1) / chunk;
  const int64_t ntasks = nchunks * mtasks;
  std::atomic<int64_t> next{0};
  parallel_for(static_cast<int>(nt), [&](int, int) {
    for (int64_t t; (t = next.fetch_add(1, std::memory_order_relaxed)) < ntasks;) {
      const int64_t ic = t / mtasks, im = t % mtasks;
      const int64_t p0 = ic * chunk * kern.group, p1 = std::min(panels, (ic + 1) * chunk * kern.group);
      const int64_t m0 = im * mblock, m1 = std::min(g.M, m0 + mblock);
      kern.block(g, staged, m0, m1, p0, p1);
    }
  });
}

}  // namespace slim
