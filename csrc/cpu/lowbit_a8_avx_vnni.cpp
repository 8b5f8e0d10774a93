// dequant_mm_int4_a8, AVX2 kernel with AVX-VNNI (VEX vpdpbusd on ymm: u8 codes x s8 activations into int32,
// one instruction for vpmaddubsw + vpmaddwd + vpaddd), on lowbit_a8_avx2.h's policy. CMake gives this file no
// ISA flags: the target pragma compiles it (and the templates it instantiates) for AVX2 + AVX-VNNI, and it runs
// only where avx_vnni_supported(). GCC >= 11 only (clang has no `#pragma GCC target`: the vpmaddubsw kernel
// runs there).
#if defined(SLIM_X86) && !defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11
#define SLIM_A8_AVX_VNNI 1
#pragma GCC target("avx2,fma,f16c,avxvnni")
#include "slim/lowbit_a8_avx2.h"
#else
#include "slim/lowbit_a8.h"
#endif

namespace slim {

#ifdef SLIM_A8_AVX_VNNI
namespace {
struct DotVnni {
  static __m256i dot2(__m256i acc, __m256i c0, __m256i x0, __m256i c1, __m256i x1) {
    return _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(acc, c0, x0), c1, x1);
  }
  static __m256i dot1(__m256i acc, __m256i c, __m256i x) { return _mm256_dpbusd_avx_epi32(acc, c, x); }
};
}  // namespace

bool avx_vnni_supported() {
  __builtin_cpu_init();
  return isa_supported(CpuIsa::kAvx2) && __builtin_cpu_supports("avxvnni");
}

void lowbit_a8_block_avx_vnni(const LowbitA8Args& g, const A8Acts& a, int64_t m0, int64_t m1, int64_t n0,
                              int64_t n1) {
  lowbit_a8_avx2_run<DotVnni>(g, a, m0, m1, n0, n1);
}
#elif defined(SLIM_X86)
bool avx_vnni_supported() { return false; }  // the compiler cannot target AVX-VNNI
void lowbit_a8_block_avx_vnni(const LowbitA8Args& g, const A8Acts& a, int64_t m0, int64_t m1, int64_t n0,
                              int64_t n1) {
  lowbit_a8_block_avx2(g, a, m0, m1, n0, n1);
}
#endif

}  // namespace slim
