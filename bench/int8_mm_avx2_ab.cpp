// A/B of two versions of the AVX2 int8 GEMM kernel (csrc/cpu/int8_mm_avx2.cpp) at the kernel level: one
// thread, no Python, interleaved, bit-exactness of both checked against a scalar loop. Build (from the
// repository root; OLD = any earlier revision of the kernel file):
//   git show 59b426c:csrc/cpu/int8_mm_avx2.cpp > /tmp/old_avx2.cpp
//   F="-O3 -mavx2 -mfma -mf16c -std=c++17 -DSLIM_X86 -Icsrc/include"
//   g++ $F -DAB_OLD='"/tmp/old_avx2.cpp"' -c bench/int8_mm_avx2_ab.cpp -o /tmp/ab_old.o
//   g++ $F -c csrc/cpu/int8_mm_avx2.cpp -o /tmp/ab_new.o
//   g++ $F bench/int8_mm_avx2_ab.cpp /tmp/ab_old.o /tmp/ab_new.o -o /tmp/ab
//   /tmp/ab M N K AMAX REPS      e.g. /tmp/ab 32 256 4096 127 100 (AMAX 63: activations in 7 bits)
// Prints the fastest of REPS calls (stage + block over all rows and panels) of each version.
#ifdef AB_OLD
// The old kernel, its three entry points renamed.
#define int8_mm_stage_bytes_avx2 old_stage_bytes
#define int8_mm_stage_avx2 old_stage
#define int8_mm_block_avx2 old_block
#include "slim/int8_mm.h"
namespace slim {
size_t old_stage_bytes(int64_t, int64_t);
void old_stage(const Int8MmArgs&, void*);
void old_block(const Int8MmArgs&, const void*, int64_t, int64_t, int64_t, int64_t);
}  // namespace slim
#include AB_OLD
#else
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "slim/int8_mm.h"
namespace slim {
size_t old_stage_bytes(int64_t, int64_t);
void old_stage(const Int8MmArgs&, void*);
void old_block(const Int8MmArgs&, const void*, int64_t, int64_t, int64_t, int64_t);
}  // namespace slim
using namespace slim;

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: %s M N K AMAX REPS\n", argv[0]);
    return 2;
  }
  const int64_t M = std::atol(argv[1]), N = std::atol(argv[2]), K = std::atol(argv[3]);
  const int amax = std::atoi(argv[4]), reps = std::atoi(argv[5]);
  const int64_t Np = (N + 15) / 16 * 16, Kp = (K + 3) / 4 * 4;
  std::mt19937 rng(1);
  std::vector<int8_t> a(M * K), b(N * K), packed(Np * Kp + 4 * Np, 0);
  for (auto& x : a) x = int8_t(int(rng() % (2 * amax + 1)) - amax);
  for (auto& x : b) x = int8_t(int(rng() % 256) - 128);
  std::vector<int32_t> colsum(Np, 0);  // the pack_int8_cpu layout (slimkernels/quant/packing.py)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      packed[(((n / 16) * (Kp / 4) + k / 4) * 16 + n % 16) * 4 + k % 4] = b[n * K + k];
      colsum[n] += b[n * K + k];
    }
  std::memcpy(packed.data() + Np * Kp, colsum.data(), 4 * Np);
  std::vector<int32_t> out_new(M * N), out_old(M * N);
  Int8MmArgs g{a.data(), K, packed.data(), M, N, K, nullptr, N, OutKind::kInt32, nullptr, nullptr, nullptr};
  std::vector<char> s_new(int8_mm_stage_bytes_avx2(M, K) + 64), s_old(old_stage_bytes(M, K) + 64);
  double best_new = 1e30, best_old = 1e30;
  for (int rep = 0; rep < reps; ++rep) {
    g.out = out_new.data();
    auto t0 = std::chrono::steady_clock::now();
    int8_mm_stage_avx2(g, s_new.data());
    int8_mm_block_avx2(g, s_new.data(), 0, M, 0, Np / 16);
    auto t1 = std::chrono::steady_clock::now();
    g.out = out_old.data();
    old_stage(g, s_old.data());
    old_block(g, s_old.data(), 0, M, 0, Np / 16);
    auto t2 = std::chrono::steady_clock::now();
    best_new = std::min(best_new, std::chrono::duration<double, std::milli>(t1 - t0).count());
    best_old = std::min(best_old, std::chrono::duration<double, std::milli>(t2 - t1).count());
  }
  bool exact = out_new == out_old;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; n += 5) {
      int32_t acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += int32_t(a[m * K + k]) * b[n * K + k];
      exact = exact && acc == out_new[m * N + n];
    }
  std::printf("M=%ld N=%ld K=%ld amax=%d: new %.3f ms, old %.3f ms, old/new %.2fx, exact %s\n", long(M), long(N),
              long(K), amax, best_new, best_old, best_old / best_new, exact ? "yes" : "NO");
  return exact ? 0 : 1;
}
#endif
