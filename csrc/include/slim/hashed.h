// Hashed weight sharing (HashedNets, Chen et al. 2015) on the CPU: a virtual weight W [N, K] whose
// entries are read from a small bucket array through a hash, never stored:
//
//   W[n, k] = sign(i) * buckets[bucket(n, i)],   i = (n * K + k) mod 2^32 (the flat index, as uint32)
//   h(i)         = fmix32(i XOR seed)          murmur3's 32-bit finalizer (below), seed a uint32
//   bucket(n, i) = (base(n) + ((h(i) * S) >> 32)) mod B
//                  S = min(B, kHashWindow)      the window of buckets one row reads
//                  base(n) = floor(n * B / N)   where row n's window starts (it wraps around B)
//   sign(i)      = +1 if h(i) is even, else -1 the low bit of h: independent of the high bits
//
// where fmix32(h) = h ^= h >> 16; h *= 0x85EBCA6B; h ^= h >> 13; h *= 0xC2B2AE35; h ^= h >> 16
// (all arithmetic mod 2^32), and (h * S) >> 32 is Lemire's multiply-shift range reduction into [0, S)
// (the high bits of h, no integer division: SIMD has none).
//
// Why a window: with one hash over all B buckets, every entry of W reads a random bucket of the whole
// array, and at 1/8 of a 4096 x 4096 layer that array is 8 MiB, past L2: each read is a cache miss
// (measured 5 ns each here, slower than streaming the dense weight). A row's entries instead spread
// uniformly over S = 4096 buckets (16 KiB, in L1) starting at base(n); the windows of consecutive rows
// overlap and advance by B / N, so every bucket is shared by about N * K / B entries from ~S * N / B
// different rows, as in HashedNets, while a thread walking rows in order reads the bucket array once,
// in order. For B <= S this is plain HashedNets (a rotation of h's uniform bucket).
//
// slimkernels/backends/hashed.py (hash_index) computes the same function in torch; the tests check
// both agree bit for bit. The hash is written once, below, over an integer policy P, and instantiated
// by the scalar code and by each SIMD policy (hashed_{avx2,avx512_vnni}.cpp).
//
// Kernels:
//   hashed_linear  y[m, n] = sum_k x[m, k] * W[n, k] + bias[n]: each thread decodes one row of W at a
//                  time into a K-float buffer (in L1/L2: hashes in registers, bucket values loaded
//                  from the row's window, in cache), then dots it with every row of x. x float32 [M, K] (row stride
//                  ldx), y float32 [M, N] (row stride ldy); float32 accumulation.
//   hashed_weight  W itself, float32 [N, K] (for large M, where a BLAS GEMM on it wins, and backward).
//   hashed_bucket_grad  grad_buckets[b] = sum over (n, k) with bucket(n, i) = b of sign(i) * dW[n, k]
//                  (the gradient of the buckets given dL/dW = dW float32 [N, K]).
#pragma once
#include <algorithm>
#include <cstdint>

#include "slim/cpu_isa.h"

namespace slim {

constexpr uint32_t kHashWindow = 4096;
constexpr uint32_t kHashMul1 = 0x85EBCA6Bu;
constexpr uint32_t kHashMul2 = 0xC2B2AE35u;

// The hash of flat index (lanes of) i: P provides U (uint32 lanes), xor_(U, U), shr<s>(U) (logical),
// mul(U, U) (low 32 bits), set1(uint32_t).
template <class P>
inline typename P::U hashed_mix(typename P::U i, typename P::U seed) {
  using U = typename P::U;
  U h = P::xor_(i, seed);
  h = P::xor_(h, P::template shr<16>(h));
  h = P::mul(h, P::set1(kHashMul1));
  h = P::xor_(h, P::template shr<13>(h));
  h = P::mul(h, P::set1(kHashMul2));
  return P::xor_(h, P::template shr<16>(h));
}

// The scalar policy, and the scalar hash (used by the scalar kernels and by the SIMD kernels' tails).
struct HashScalarOps {
  using U = uint32_t;
  static U xor_(U a, U b) { return a ^ b; }
  template <int s>
  static U shr(U a) { return a >> s; }
  static U mul(U a, U b) { return a * b; }
  static U set1(uint32_t v) { return v; }
};

inline uint32_t hashed_hash(uint32_t i, uint32_t seed) { return hashed_mix<HashScalarOps>(i, seed); }
inline uint32_t hashed_window(uint32_t num_buckets) { return num_buckets < kHashWindow ? num_buckets : kHashWindow; }
// base(n): where row n's window starts.
inline uint32_t hashed_base(int64_t n, int64_t N, int64_t num_buckets) {
  return uint32_t(uint64_t(n) * uint64_t(num_buckets) / uint64_t(N));
}
// The bucket of hash h in the window starting at base (base < B, window <= B).
inline uint32_t hashed_bucket(uint32_t h, uint32_t base, uint32_t window, uint32_t num_buckets) {
  const uint32_t b = base + uint32_t((uint64_t(h) * window) >> 32);
  return b >= num_buckets ? b - num_buckets : b;
}
// The virtual weight's entry at flat index i of a row whose window starts at base.
inline float hashed_entry(const float* buckets, uint32_t num_buckets, uint32_t seed, uint32_t base, uint32_t i) {
  const uint32_t h = hashed_hash(i, seed);
  const float v = buckets[hashed_bucket(h, base, hashed_window(num_buckets), num_buckets)];
  return (h & 1u) ? -v : v;
}

struct HashedArgs {
  const float* buckets;  // [B]
  int64_t num_buckets;   // B, in [1, 2^32)
  int64_t seed;          // in [0, 2^32)
  int64_t N, K;
};

// Validation (std::invalid_argument naming the argument) happens in each entry point.
void hashed_linear(const HashedArgs& w, const float* x, int64_t ldx, const float* bias, float* y, int64_t ldy,
                   int64_t M, int num_threads, CpuIsa isa);
void hashed_weight(const HashedArgs& w, float* out, int num_threads, CpuIsa isa);
void hashed_bucket_grad(const HashedArgs& w, const float* grad_w, float* grad_buckets, int num_threads);

// ---- per-ISA row decoders: W[n, k0:k1) for rows [n0, n1) into out (row stride ldo) ---------------------
// Row n's entries go to out + (n - n0) * ldo; callable from any thread.
void hashed_rows_scalar(const HashedArgs& w, int64_t n0, int64_t n1, int64_t k0, int64_t k1, float* out, int64_t ldo);
#ifdef SLIM_X86
void hashed_rows_avx2(const HashedArgs& w, int64_t n0, int64_t n1, int64_t k0, int64_t k1, float* out, int64_t ldo);
void hashed_rows_avx512_vnni(const HashedArgs& w, int64_t n0, int64_t n1, int64_t k0, int64_t k1, float* out,
                             int64_t ldo);
float hashed_dot_avx2(const float* a, const float* b, int64_t k);
float hashed_dot_avx512_vnni(const float* a, const float* b, int64_t k);
#endif
float hashed_dot_scalar(const float* a, const float* b, int64_t k);
// out[j] = buckets[idx[j]] for j < n: scalar loads, compiled without SIMD flags (hashed.cpp) so the
// compiler cannot turn them into vgatherdps, which the Gather Data Sampling microcode fix slows down
// (not yet compared cleanly with a vgatherdps decoder: bench/results/2026-11-30-hashed.md).
void hashed_lookup(const float* buckets, const uint32_t* idx, float* out, int64_t n);
constexpr int64_t kHashChunk = 256;  // entries per chunk of the SIMD decoders (their buffers stay in L1)

namespace {
// ---- the SIMD kernels, over a policy P (internal linkage: each ISA file instantiates its own) ----------
// P: everything hashed_mix needs, plus kW (lanes), V (float lanes), lane_index(uint32_t base) (base +
// 0, 1, ..., kW - 1), mulhi(U, U) (high 32 bits of the 64-bit products), add / sub / min (unsigned) of
// U, store_u(uint32_t*, U), load_u(const uint32_t*), flip(V, U) (V's sign bit XOR U's), zero(),
// load(const float*), store(float*, V), add(V, V), fma(a, b, c), hsum(V).
template <class P>
void hashed_rows_simd(const HashedArgs& w, int64_t n0, int64_t n1, int64_t k0, int64_t k1, float* out, int64_t ldo) {
  using U = typename P::U;
  constexpr int64_t kW = P::kW;
  const uint32_t count = uint32_t(w.num_buckets);
  const U seed = P::set1(uint32_t(w.seed)), buckets = P::set1(count), window = P::set1(hashed_window(count));
  alignas(64) uint32_t idx[kHashChunk], sign[kHashChunk];
  for (int64_t n = n0; n < n1; ++n) {
    const uint32_t row = uint32_t(uint64_t(n) * uint64_t(w.K));  // mod 2^32, as the spec says
    const uint32_t base = hashed_base(n, w.N, w.num_buckets);
    const U base_v = P::set1(base);
    float* o = out + (n - n0) * ldo - k0;
    int64_t k = k0;
    for (; k + kW <= k1;) {
      // A chunk at a time: the hashes in registers, their buckets and signs to two small buffers, the
      // bucket values by scalar loads (hashed_lookup), the signs applied in registers.
      const int64_t len = std::min<int64_t>(kHashChunk, (k1 - k) / kW * kW);
      for (int64_t j = 0; j < len; j += kW) {
        const U h = hashed_mix<P>(P::lane_index(row + uint32_t(k + j)), seed);
        const U b = P::add(base_v, P::mulhi(h, window));
        P::store_u(idx + j, P::min(b, P::sub(b, buckets)));  // b - B where b >= B (else it wraps past b)
        P::store_u(sign + j, P::template shl<31>(h));          // h's low bit, at the float's sign bit
      }
      hashed_lookup(w.buckets, idx, o + k, len);
      for (int64_t j = 0; j < len; j += kW) P::store(o + k + j, P::flip(P::load(o + k + j), P::load_u(sign + j)));
      k += len;
    }
    for (; k < k1; ++k) o[k] = hashed_entry(w.buckets, count, uint32_t(w.seed), base, row + uint32_t(k));
  }
}

template <class P>
float hashed_dot_simd(const float* a, const float* b, int64_t k) {
  constexpr int64_t kW = P::kW;
  typename P::V s0 = P::zero(), s1 = P::zero();
  int64_t i = 0;
  for (; i + 2 * kW <= k; i += 2 * kW) {
    s0 = P::fma(P::load(a + i), P::load(b + i), s0);
    s1 = P::fma(P::load(a + i + kW), P::load(b + i + kW), s1);
  }
  for (; i + kW <= k; i += kW) s0 = P::fma(P::load(a + i), P::load(b + i), s0);
  float s = P::hsum(P::add(s0, s1));
  for (; i < k; ++i) s += a[i] * b[i];
  return s;
}
}  // namespace

}  // namespace slim
