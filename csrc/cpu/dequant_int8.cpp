// dequant_mm_int8 (W8A16): validation, ISA dispatch, the split over threads, and the scalar kernels.
// The SIMD kernels live in dequant_int8_{avx2,avx512_vnni,avx512_bf16,amx}.cpp.
#include "slim/dequant_int8.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "slim/scratch.h"
#include "slim/thread_pool.h"

namespace slim {

void dequant_int8_convert_scalar(const DequantInt8Args& g, float* xf, int64_t ldxf, int64_t m0, int64_t m1) {
  for (int64_t m = m0; m < m1; ++m) {
    const uint16_t* row = static_cast<const uint16_t*>(g.x) + m * g.ldx;
    float* o = xf + m * ldxf;
    if (g.x_kind == InKind::kFloat16) {
      for (int64_t k = 0; k < g.K; ++k) o[k] = f16_to_f32(row[k]);
    } else {
      for (int64_t k = 0; k < g.K; ++k) o[k] = bf16_to_f32(row[k]);
    }
  }
}

void dequant_int8_block_scalar(const DequantInt8Args& g, const float* xf, int64_t ldxf, int64_t m0, int64_t m1,
                               int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* w = g.w + n * g.ldw;
    for (int64_t m = m0; m < m1; ++m) {
      const float* x = xf + m * ldxf;
      float acc = 0.f;
      for (int64_t k = 0; k < g.K; ++k) acc += x[k] * float(w[k]);
      dequant_int8_store(g, m, n, acc);
    }
  }
}

namespace {
[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument("dequant_mm_int8: " + msg); }

struct Kernels {
  void (*convert)(const DequantInt8Args&, float*, int64_t, int64_t, int64_t);
  void (*block)(const DequantInt8Args&, const float*, int64_t, int64_t, int64_t, int64_t, int64_t);
  int64_t nr;  // output channels per register tile: the unit of the N split
  int64_t mr;  // activation rows per register tile: the unit of the M split
};

Kernels kernels_for(CpuIsa isa) {
#ifdef SLIM_X86
  if (isa == CpuIsa::kAvx512Vnni) return {dequant_int8_convert_avx512_vnni, dequant_int8_block_avx512_vnni, 4, 6};
  if (isa == CpuIsa::kAvx2) return {dequant_int8_convert_avx2, dequant_int8_block_avx2, 4, 2};
#endif
  (void)isa;
  return {dequant_int8_convert_scalar, dequant_int8_block_scalar, 1, 1};
}
}  // namespace

void dequant_mm_int8(const DequantInt8Args& g, int num_threads, CpuIsa isa, CpuAmx amx) {
  if (g.M < 0) bad("M must be >= 0, got " + std::to_string(g.M));
  if (g.N < 0) bad("N must be >= 0, got " + std::to_string(g.N));
  if (g.K < 0) bad("K must be >= 0, got " + std::to_string(g.K));
  if (g.ldx < g.K) bad("ldx must be >= K (" + std::to_string(g.K) + "), got " + std::to_string(g.ldx));
  if (g.ldw < g.K) bad("ldw must be >= K (" + std::to_string(g.K) + "), got " + std::to_string(g.ldw));
  if (g.ldy < g.N) bad("ldy must be >= N (" + std::to_string(g.N) + "), got " + std::to_string(g.ldy));
  if (num_threads < 1) bad("num_threads must be >= 1, got " + std::to_string(num_threads));
  if (!isa_supported(isa)) bad(std::string("isa '") + isa_name(isa) + "' is not supported on this CPU/build");
  if (g.M == 0 || g.N == 0) return;
  if (!g.y) bad("y must not be null");
  if (!g.scale) bad("scale must not be null");
  if (g.K > 0 && !g.x) bad("x must not be null");
  if (g.K > 0 && !g.w) bad("w must not be null");

  if (g.K == 0) {  // empty reduction: y = bias (or 0), whatever the scale
    for (int64_t m = 0; m < g.M; ++m)
      for (int64_t n = 0; n < g.N; ++n) {
        const float v = g.bias ? g.bias[n] : 0.f;
        const int64_t off = m * g.ldy + n;
        if (g.x_kind == InKind::kFloat32) static_cast<float*>(g.y)[off] = v;
        else if (g.x_kind == InKind::kFloat16) static_cast<uint16_t*>(g.y)[off] = f32_to_f16(v);
        else static_cast<uint16_t*>(g.y)[off] = f32_to_bf16(v);
      }
    return;
  }

  if (amx_chosen(isa, amx, g.M, kDequantInt8AmxMinM, "dequant_mm_int8")) {
#ifdef SLIM_AMX
    return dequant_int8_amx_mm(g, isa == CpuIsa::kAvx512Bf16, num_threads);
#endif
  }
#ifdef SLIM_AVX512_BF16
  if (isa == CpuIsa::kAvx512Bf16) {  // x rounded to bf16 once (M x K uint16s), shared by all threads
    const int64_t ldxb = (g.K + 31) / 32 * 32;
    auto* xb = static_cast<uint16_t*>(thread_scratch(0, size_t(g.M) * size_t(ldxb) * sizeof(uint16_t) + 64));
    dequant_int8_convert_avx512_bf16(g, xb, ldxb, 0, g.M);
    const int64_t mr = kDequantInt8Bf16MR;
    const int64_t mblock = std::min(g.M, std::max<int64_t>(1, (384 * 1024) / (ldxb * 2) / mr) * mr);
    parallel_tiles(g.M, g.N, g.K, mblock, kDequantInt8Bf16NR, num_threads,
                   [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
                     dequant_int8_block_avx512_bf16(g, xb, ldxb, m0, m1, n0, n1);
                   });
    return;
  }
#endif
  const Kernels kern = kernels_for(isa);
  // float32 activations are read in place; float16 / bfloat16 ones are converted once per call
  // (M x K floats: 2 MB at M = 128, K = 4096) and shared read-only by all threads.
  const float* xf = static_cast<const float*>(g.x);
  int64_t ldxf = g.ldx;
  if (g.x_kind != InKind::kFloat32) {
    ldxf = (g.K + 15) / 16 * 16;
    float* buf = static_cast<float*>(thread_scratch(0, size_t(g.M) * size_t(ldxf) * sizeof(float) + 64));
    kern.convert(g, buf, ldxf, 0, g.M);
    xf = buf;
  }

  // Rows of x per task: the block of x a task sweeps for each weight tile stays in L2 (~384 KB).
  int64_t mblock = std::max<int64_t>(1, (384 * 1024) / (g.K * 4) / kern.mr) * kern.mr;
  mblock = std::min(mblock, g.M);
  parallel_tiles(g.M, g.N, g.K, mblock, kern.nr, num_threads, [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    kern.block(g, xf, ldxf, m0, m1, n0, n1);
  });
}

}  // namespace slim
