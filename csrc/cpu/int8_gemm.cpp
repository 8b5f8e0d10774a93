// int8_gemm: argument validation, ISA dispatch and the split of the work over threads.
// The per-ISA block kernels live in int8_gemm_{scalar,avx2,avx512_vnni}.cpp.
#include "slim/int8_gemm.h"

#include <algorithm>
#include <stdexcept>
#include <string>

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
[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument("int8_gemm: " + msg); }

using BlockFn = void (*)(const Int8GemmArgs&, int64_t, int64_t, int64_t, int64_t);
}  // namespace

void int8_gemm(const Int8GemmArgs& g, int num_threads, CpuIsa isa) {
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

  BlockFn fn = int8_gemm_block_scalar;
  int64_t group = 1;  // panels of 16 columns per register tile: the unit of the N split
  int64_t mr = 4;     // rows per register tile: the unit of the M split
#ifdef SLIM_X86
  if (isa == CpuIsa::kAvx512Vnni) { fn = int8_gemm_block_avx512_vnni; group = 3; mr = 8; }
  else if (isa == CpuIsa::kAvx2) { fn = int8_gemm_block_avx2; group = 1; mr = 2; }
#endif

  const int64_t panels = (g.N + 15) / 16;
  const int64_t groups = (panels + group - 1) / group;
  const int64_t mtiles = (g.M + mr - 1) / mr;
  // Waking a worker costs a few microseconds: small problems run on the calling thread.
  const double work = double(g.M) * double(panels * 16) * double(std::max<int64_t>(g.K, 1));
  int64_t nt = work < (1 << 19) ? 1 : num_threads;
  nt = std::max<int64_t>(1, std::min<int64_t>(nt, groups * mtiles));
  if (nt == 1) {
    fn(g, 0, g.M, 0, panels);
    return;
  }
  // Split N (each thread streams its own weights once; activations are shared and small) unless
  // there are too few column groups, then split M too.
  int64_t tn = std::min<int64_t>(nt, groups), tm = std::max<int64_t>(1, std::min<int64_t>(nt / tn, mtiles));
  nt = tn * tm;
  parallel_for(static_cast<int>(nt), [&](int tid, int) {
    const int64_t in = tid % tn, im = tid / tn;
    const int64_t p0 = std::min(panels, groups * in / tn * group), p1 = std::min(panels, groups * (in + 1) / tn * group);
    const int64_t m0 = std::min(g.M, mtiles * im / tm * mr), m1 = std::min(g.M, mtiles * (im + 1) / tm * mr);
    if (p0 < p1 && m0 < m1) fn(g, m0, m1, p0, p1);
  });
}

}  // namespace slim
