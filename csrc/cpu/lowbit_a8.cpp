// dequant_mm_int4_a8 (W4A8): validation, the per-token int8 activations (quantize_per_token_int8, then
// rearranged into blocks, with their group sums), ISA dispatch, the split over threads, and the scalar
// kernel. The SIMD kernels live in lowbit_a8_{avx2,avx_vnni,avx512_vnni}.cpp on the tile loop of lowbit_a8.h.
#include "slim/lowbit_a8.h"

#include <stdexcept>
#include <string>

#include "slim/scratch.h"
#include "slim/thread_pool.h"

namespace slim {

// The scalar kernel: per group the exact integer D (int64), then acc += s * float(D), g ascending, and
// y = sx * acc + bias: the reference's arithmetic step by step (bit-exact where no FMA contraction).
void lowbit_a8_block_scalar(const LowbitA8Args& g, const A8Acts& a, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const int64_t rb = (g.K + 1) / 2, G = a.groups, gs = G == 1 ? g.K : g.group_size, B = a.block;
  for (int64_t m = m0; m < m1; ++m) {
    const int8_t* x = a.xq + m * a.kp;
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* w = g.qweight + n * rb;
      float acc = 0.f;
      for (int64_t grp = 0; grp < G; ++grp) {
        int64_t dot = 0;
        for (int64_t k = grp * gs; k < (grp + 1) * gs; ++k) {
          const int64_t b = k / B, r = k % B;  // position of k in its block: evens, then odds
          const int64_t pos = b * B + (r & 1 ? B / 2 : 0) + r / 2;
          dot += int64_t((w[k / 2] >> (4 * (k & 1))) & 15) * x[pos];
        }
        const int64_t z = g.zeros ? g.zeros[n * G + grp] : 8;
        const int64_t d = dot - z * a.xs[m * G + grp];
        acc = acc + g.scales[n * G + grp] * static_cast<float>(d);
      }
      a8_store(g, m, n, a.sx[m] * acc);
    }
  }
}

namespace {
[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument("dequant_mm_int4_a8: " + msg); }

// int32 headroom: |D| <= (15 + 255) * 127 * group_size for any uint8 zero point.
constexpr int64_t kMaxGroup = (int64_t(1) << 31) / (270 * 127);

// x -> per-token int8 (the quantize_per_token_int8 kernel), then into a.block-sized blocks (even k's,
// then odd k's, zero past K) with the per-group sums. Scratch of the calling thread.
A8Acts prepare(const LowbitA8Args& g, int64_t block, int num_threads, CpuIsa isa) {
  const int64_t kp = (g.K + block - 1) / block * block, G = g.K / g.group_size;
  const size_t q_bytes = (size_t(g.M) * size_t(g.K) + 63) / 64 * 64, xq_bytes = (size_t(g.M) * size_t(kp) + 63) / 64 * 64;
  const size_t sx_bytes = (size_t(g.M) * 4 + 63) / 64 * 64;
  auto* base = static_cast<char*>(thread_scratch(0, q_bytes + xq_bytes + sx_bytes + size_t(g.M) * size_t(G) * 4 + 64));
  auto* q = reinterpret_cast<int8_t*>(base);
  auto* xq = reinterpret_cast<int8_t*>(base + q_bytes);
  auto* sx = reinterpret_cast<float*>(base + q_bytes + xq_bytes);
  auto* xs = reinterpret_cast<int32_t*>(base + q_bytes + xq_bytes + sx_bytes);
  // The AVX-512 tier's quantizer for avx512_bf16 too (no separate one).
  quantize_per_token_int8(QuantizeArgs{g.x, g.ldx, g.M, g.K, g.x_kind, q, g.K, sx}, num_threads,
                          isa == CpuIsa::kAvx512Bf16 ? CpuIsa::kAvx512Vnni : isa);
  const int64_t half = block / 2;
  for (int64_t m = 0; m < g.M; ++m) {
    const int8_t* qr = q + m * g.K;
    int8_t* o = xq + m * kp;
    for (int64_t b = 0; b < kp; b += block)
      for (int64_t p = 0; p < half; ++p) {
        const int64_t k = b + 2 * p;
        o[b + p] = k < g.K ? qr[k] : 0;
        o[b + half + p] = k + 1 < g.K ? qr[k + 1] : 0;
      }
    for (int64_t grp = 0; grp < G; ++grp) {
      int32_t s = 0;
      for (int64_t k = grp * g.group_size; k < (grp + 1) * g.group_size; ++k) s += qr[k];
      xs[m * G + grp] = s;
    }
  }
  return A8Acts{xq, kp, block, sx, xs, G};
}
}  // namespace

void dequant_mm_int4_a8(const LowbitA8Args& g, int num_threads, CpuIsa isa, bool avx_vnni) {
  if (g.M < 0) bad("M must be >= 0, got " + std::to_string(g.M));
  if (g.N < 0) bad("N must be >= 0, got " + std::to_string(g.N));
  if (g.K < 0) bad("K must be >= 0, got " + std::to_string(g.K));
  if (g.ldx < g.K) bad("ldx must be >= K (" + std::to_string(g.K) + "), got " + std::to_string(g.ldx));
  if (g.ldy < g.N) bad("ldy must be >= N (" + std::to_string(g.N) + "), got " + std::to_string(g.ldy));
  if (num_threads < 1) bad("num_threads must be >= 1, got " + std::to_string(num_threads));
  if (!isa_supported(isa)) bad(std::string("isa '") + isa_name(isa) + "' is not supported on this CPU/build");
  if (g.K > 0 && (g.group_size <= 0 || g.K % g.group_size != 0 || (g.group_size != g.K && g.group_size % 32 != 0)))
    bad("group_size must be K (" + std::to_string(g.K) + ") or a multiple of 32 dividing K, got " +
        std::to_string(g.group_size));
  if (g.group_size > kMaxGroup)
    bad("group_size must be <= " + std::to_string(kMaxGroup) + " (int32 sums), got " + std::to_string(g.group_size));
  if (g.M == 0 || g.N == 0) return;
  if (!g.y) bad("y must not be null");
  if (g.K == 0) {  // y = bias (or 0)
    for (int64_t m = 0; m < g.M; ++m)
      for (int64_t n = 0; n < g.N; ++n) a8_store(g, m, n, 0.f);
    return;
  }
  if (!g.x) bad("x must not be null");
  if (!g.qweight) bad("qweight must not be null");
  if (!g.scales) bad("scales must not be null");

  // Kernel and block: AVX-512 steps 128 k's (64 bytes of codes), so a group must hold whole steps
  // (or be all of K); other group sizes run the AVX2 kernel, 64 or 32 k's a step.
  const bool one_group = g.group_size == g.K;
  void (*kernel)(const LowbitA8Args&, const A8Acts&, int64_t, int64_t, int64_t, int64_t) = lowbit_a8_block_scalar;
  int64_t block = 32;
#ifdef SLIM_X86
  const bool avx512 = isa == CpuIsa::kAvx512Vnni || isa == CpuIsa::kAvx512Bf16;
  if (avx512 && (one_group || g.group_size % 128 == 0)) {
    kernel = lowbit_a8_block_avx512_vnni;
    block = 128;
  } else if (avx512 || isa == CpuIsa::kAvx2) {
    static const bool vnni = avx_vnni_supported();
    kernel = avx_vnni && vnni ? lowbit_a8_block_avx_vnni : lowbit_a8_block_avx2;
    block = one_group || g.group_size % 64 == 0 ? 64 : 32;
  }
#endif
  const A8Acts a = prepare(g, block, num_threads, isa);
  // Rows of x per task: the block of int8 activations a task sweeps for each weight tile stays in L2.
  const int64_t mblock = std::min(g.M, std::max<int64_t>(4, (256 * 1024) / a.kp / 4 * 4));
  parallel_tiles(g.M, g.N, g.K, mblock, 4, num_threads,
                 [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) { kernel(g, a, m0, m1, n0, n1); });
}

}  // namespace slim
