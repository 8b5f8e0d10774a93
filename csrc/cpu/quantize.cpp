// quantize_per_token_int8: validation, ISA dispatch, row split over threads, and the scalar kernel.
#include "slim/quantize.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "slim/quantize_row.h"
#include "slim/thread_pool.h"

namespace slim {

InKind parse_in_kind(const std::string& name, const char* arg_name) {
  if (name == "float32") return InKind::kFloat32;
  if (name == "float16") return InKind::kFloat16;
  if (name == "bfloat16") return InKind::kBFloat16;
  throw std::invalid_argument(std::string(arg_name) + ": unknown input kind '" + name +
                              "', expected 'float32', 'float16' or 'bfloat16'");
}

void quantize_rows_scalar(const QuantizeArgs& g, int64_t m0, int64_t m1) {
  const int64_t esize = g.x_kind == InKind::kFloat32 ? 4 : 2;
  for (int64_t m = m0; m < m1; ++m) {
    const void* row = static_cast<const char*>(g.x) + m * g.ldx * esize;
    int8_t* q = g.q + m * g.ldq;
    uint32_t amax = 0;
    for (int64_t k = 0; k < g.K; ++k) amax = std::max(amax, abs_bits(load_as_f32(row, g.x_kind, k)));
    float scale;
    if (!row_scale(amax, g.qmax, &scale)) {
      for (int64_t k = 0; k < g.K; ++k) q[k] = 0;
    } else {
      for (int64_t k = 0; k < g.K; ++k) q[k] = quant_one(load_as_f32(row, g.x_kind, k), scale, g.qmax);
    }
    g.scale[m] = scale;
  }
}

namespace {
[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument("quantize_per_token_int8: " + msg); }
}  // namespace

void quantize_per_token_int8(const QuantizeArgs& g, int num_threads, CpuIsa isa) {
  if (g.M < 0) bad("M must be >= 0, got " + std::to_string(g.M));
  if (g.K < 0) bad("K must be >= 0, got " + std::to_string(g.K));
  if (g.ldx < g.K) bad("ldx must be >= K (" + std::to_string(g.K) + "), got " + std::to_string(g.ldx));
  if (g.ldq < g.K) bad("ldq must be >= K (" + std::to_string(g.K) + "), got " + std::to_string(g.ldq));
  if (g.qmax < 1 || g.qmax > 127) bad("qmax must be in [1, 127], got " + std::to_string(g.qmax));
  if (num_threads < 1) bad("num_threads must be >= 1, got " + std::to_string(num_threads));
  if (!isa_supported(isa)) bad(std::string("isa '") + isa_name(isa) + "' is not supported on this CPU/build");
  if (g.M == 0) return;
  if (!g.scale) bad("scale must not be null");
  if (g.K > 0 && !g.x) bad("x must not be null");
  if (g.K > 0 && !g.q) bad("q must not be null");

  void (*fn)(const QuantizeArgs&, int64_t, int64_t) = quantize_rows_scalar;
#ifdef SLIM_X86
  if (isa == CpuIsa::kAvx512Vnni) fn = quantize_rows_avx512_vnni;
  else if (isa == CpuIsa::kAvx2) fn = quantize_rows_avx2;
#endif
  // A row of a few thousand elements takes about a microsecond: only big inputs are split.
  int64_t nt = double(g.M) * double(g.K) < (1 << 16) ? 1 : std::min<int64_t>(num_threads, g.M);
  if (nt <= 1) {
    fn(g, 0, g.M);
    return;
  }
  parallel_for(static_cast<int>(nt), [&](int tid, int n) {
    const int64_t m0 = g.M * tid / n, m1 = g.M * (tid + 1) / n;
    if (m0 < m1) fn(g, m0, m1);
  });
}

}  // namespace slim
