// lowbit_mm (dequant_mm_int4 and lut_mm): validation, ISA dispatch, the rearranged activations,
// the split over threads, and the scalar kernel. The SIMD policies live in lowbit_{avx2,avx512_vnni}.cpp.
#include "slim/lowbit.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "slim/quantize_row.h"  // load_as_f32
#include "slim/scratch.h"
#include "slim/thread_pool.h"

namespace slim {

LutKind parse_lut_kind(const std::string& name, const char* arg_name) {
  if (name == "int4") return LutKind::kInt4;
  if (name == "codebook") return LutKind::kCodebook;
  throw std::invalid_argument(std::string(arg_name) + ": unknown table kind '" + name +
                              "', expected 'int4' or 'codebook'");
}

namespace {

// Scalar policy: one lane, chunks of 8 codes (exactly `BITS` bytes), so x keeps its order.
struct ScalarPolicy {
  using V = float;
  static constexpr int64_t kLanes = 1;
  static constexpr int kMaxAcc = 32;
  struct Lut { float t[16]; };
  static V zero() { return 0.f; }
  static V loadx(const float* p) { return *p; }
  static void storew(float* p, V v) { *p = v; }
  static V fma(V a, V b, V c) { return c + a * b; }
  static V add(V a, V b) { return a + b; }
  static V masked(V w, const uint32_t* mask) { return *mask ? w : 0.f; }
  static float hsum(V v) { return v; }
  static Lut lut(const float* t) { Lut l; std::memcpy(l.t, t, sizeof(l.t)); return l; }
  static Lut lut_int4(float s, int z) {
    Lut l;
    for (int c = 0; c < 16; ++c) l.t[c] = kCodeMinusZero.v[z][c] * s;
    return l;
  }
  template <int BITS>
  struct Codes {
    static constexpr int64_t kSubs = 8, kChunkBytes = BITS, kLoadBytes = BITS;
    using Raw = uint32_t;
    static Raw load(const uint8_t* p) {
      Raw r = 0;
      for (int i = 0; i < BITS; ++i) r |= Raw(p[i]) << (8 * i);
      return r;
    }
    template <int S>
    static V weight(Raw r, const Lut& l) { return l.t[(r >> (S * BITS)) & 15u]; }
  };
};

}  // namespace

LowbitLayout lowbit_layout_scalar(int bits) { return lowbit_layout_for<ScalarPolicy>(bits); }
void lowbit_block_scalar(const LowbitMmArgs& g, const float* xp, int64_t ldxp, int64_t m0, int64_t m1, int64_t n0,
                         int64_t n1) {
  lowbit_block_for<ScalarPolicy, 4, 4>(g, xp, ldxp, m0, m1, n0, n1);
}

namespace {
[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument("lowbit_mm: " + msg); }

struct Kernels {
  LowbitLayout (*layout)(int);
  void (*block)(const LowbitMmArgs&, const float*, int64_t, int64_t, int64_t, int64_t, int64_t);
  int64_t nr;  // weight rows per register tile: the unit of the N split
};

Kernels kernels_for(CpuIsa isa) {
#ifdef SLIM_X86
  if (isa == CpuIsa::kAvx512Vnni) return {lowbit_layout_avx512_vnni, lowbit_block_avx512_vnni, 4};
  if (isa == CpuIsa::kAvx2) return {lowbit_layout_avx2, lowbit_block_avx2, 2};
#endif
  (void)isa;
  return {lowbit_layout_scalar, lowbit_block_scalar, 4};
}

// x rows [0, M) -> the order the kernel reads codes (LowbitLayout), zero past K, each value passed
// through to_out (float32 for the float kernels, bf16 bits for the bf16 one).
template <class T, class ToOut>
void rearrange_x(const LowbitMmArgs& g, const LowbitLayout& lay, T* xp, int64_t ldxp, ToOut to_out) {
  const int64_t esize = g.x_kind == InKind::kFloat32 ? 4 : 2;
  const int64_t ck = lay.lanes * lay.subs;
  for (int64_t m = 0; m < g.M; ++m) {
    const void* row = static_cast<const char*>(g.x) + m * g.ldx * esize;
    T* o = xp + m * ldxp;
    for (int64_t c = 0; c * ck < ldxp; ++c)
      for (int64_t l = 0; l < lay.lanes; ++l)
        for (int64_t s = 0; s < lay.subs; ++s) {
          const int64_t k = c * ck + l * lay.subs + s;
          o[c * ck + s * lay.lanes + l] = to_out(k < g.K ? load_as_f32(row, g.x_kind, k) : 0.f);
        }
  }
}

void store_bias_only(const LowbitMmArgs& g) {  // K == 0: y = bias (or 0)
  for (int64_t m = 0; m < g.M; ++m)
    for (int64_t n = 0; n < g.N; ++n) lowbit_store(g, m, n, 0.f);
}
}  // namespace

bool amx_chosen(CpuIsa isa, CpuAmx amx, int64_t M, int64_t min_m, const char* op) {
  if (amx == CpuAmx::kOff) return false;
#ifdef SLIM_AMX
  const bool usable = (isa == CpuIsa::kAvx512Vnni || isa == CpuIsa::kAvx512Bf16) && amx_bf16_supported();
#else
  const bool usable = false;
  (void)isa;
#endif
  if (amx == CpuAmx::kOn && !usable)
    throw std::invalid_argument(std::string(op) +
                                ": amx='on' needs AMX-BF16 (CPU, OS permission and this build) and the avx512_vnni ISA");
  return usable && (amx == CpuAmx::kOn || M >= min_m);
}

void lowbit_mm(const LowbitMmArgs& g, int num_threads, CpuIsa isa, CpuAmx amx) {
  if (g.M < 0) bad("M must be >= 0, got " + std::to_string(g.M));
  if (g.N < 0) bad("N must be >= 0, got " + std::to_string(g.N));
  if (g.K < 0) bad("K must be >= 0, got " + std::to_string(g.K));
  if (g.bits < 2 || g.bits > 4) bad("bits must be 2, 3 or 4, got " + std::to_string(g.bits));
  if (g.kind == LutKind::kInt4 && g.bits != 4) bad("int4 tables need bits = 4, got " + std::to_string(g.bits));
  if (g.ldx < g.K) bad("ldx must be >= K (" + std::to_string(g.K) + "), got " + std::to_string(g.ldx));
  if (g.ldy < g.N) bad("ldy must be >= N (" + std::to_string(g.N) + "), got " + std::to_string(g.ldy));
  if (num_threads < 1) bad("num_threads must be >= 1, got " + std::to_string(num_threads));
  if (!isa_supported(isa)) bad(std::string("isa '") + isa_name(isa) + "' is not supported on this CPU/build");
  if (g.K > 0) {
    if (g.kind == LutKind::kInt4) {
      if (g.group_size <= 0 || g.K % g.group_size != 0 || (g.group_size != g.K && g.group_size % 32 != 0))
        bad("group_size must be K (" + std::to_string(g.K) + ") or a multiple of 32 dividing K, got " +
            std::to_string(g.group_size));
    } else if (g.codebook_rows != 1 && g.codebook_rows != g.N) {
      bad("codebook_rows must be 1 or N (" + std::to_string(g.N) + "), got " + std::to_string(g.codebook_rows));
    }
  }
  if (g.M == 0 || g.N == 0) return;
  if (!g.y) bad("y must not be null");
  if (g.K == 0) return store_bias_only(g);
  if (!g.x) bad("x must not be null");
  if (!g.codes) bad("codes must not be null");
  if (g.kind == LutKind::kInt4 && !g.scales) bad("scales must not be null");
  if (g.kind == LutKind::kCodebook && !g.codebook) bad("codebook must not be null");

  const int64_t amx_min_m = g.kind == LutKind::kInt4         ? kLowbitAmxMinM
                            : isa == CpuIsa::kAvx512Bf16 ? kLowbitAmxCodebookMinM
                                                         : kLowbitAmxCodebookExactMinM;
  if (g.bits != 3 && amx_chosen(isa, amx, g.M, amx_min_m, "lowbit_mm")) {
#ifdef SLIM_AMX
    return lowbit_amx_mm(g, isa == CpuIsa::kAvx512Bf16, num_threads);
#endif
  }
#ifdef SLIM_AVX512_BF16
  if (isa == CpuIsa::kAvx512Bf16 && g.bits != 3) {
    // bf16 dot products: x rounded to bf16 once, in the float32 AVX-512 kernel's order (M x K
    // uint16s: 1 MB at M = 128, K = 4096); each task's block of x stays in L2 (~512 KB).
    const LowbitLayout lay = lowbit_layout_avx512_vnni(g.bits);
    const int64_t ck = lay.lanes * lay.subs;  // 32 or 64: whole bf16 vectors
    const int64_t ldxp = (g.K + ck - 1) / ck * ck;
    auto* xb = static_cast<uint16_t*>(thread_scratch(0, size_t(g.M) * size_t(ldxp) * sizeof(uint16_t) + 64));
    rearrange_x(g, lay, xb, ldxp, f32_to_bf16);
    const int64_t mr = kLowbitBf16MR;
    const int64_t mblock = std::min(g.M, std::max<int64_t>(mr, (512 * 1024) / (ldxp * 2) / mr * mr));
    parallel_tiles(g.M, g.N, g.K, mblock, kLowbitBf16NR, num_threads,
                   [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
                     lowbit_block_avx512_bf16(g, xb, ldxp, m0, m1, n0, n1);
                   });
    return;
  }
#endif
  // The float32 kernels (3-bit codes asked for avx512_bf16 run the avx512_vnni one: no bf16 pairs).
  const Kernels kern = kernels_for(isa == CpuIsa::kAvx512Bf16 ? CpuIsa::kAvx512Vnni : isa);
  const LowbitLayout lay = kern.layout(g.bits);
  const int64_t ck = lay.lanes * lay.subs;
  // The rearranged activations (M x K floats: 2 MB at M = 128, K = 4096), shared read-only by all threads.
  const int64_t ldxp = (g.K + ck - 1) / ck * ck;
  float* xp = static_cast<float*>(thread_scratch(0, size_t(g.M) * size_t(ldxp) * sizeof(float) + 64));
  rearrange_x(g, lay, xp, ldxp, [](float v) { return v; });

  // Rows of x per task: the block of x a task sweeps for each weight tile stays in L2 (~512 KB).
  const int64_t mblock = std::min(g.M, std::max<int64_t>(4, (512 * 1024) / (ldxp * 4) / 4 * 4));
  parallel_tiles(g.M, g.N, g.K, mblock, kern.nr, num_threads, [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    kern.block(g, xp, ldxp, m0, m1, n0, n1);
  });
}

}  // namespace slim
