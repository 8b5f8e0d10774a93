// dequant_mm_int4_a8, AVX2 kernel (policy in lowbit_a8_avx2.h): vpmaddubsw (u8 codes x s8 activations,
// pairs: |2 * 15 * 127| < 2^15, exact; two of them summed stay exact) then vpmaddwd by ones into int32.
#include "slim/lowbit_a8_avx2.h"

namespace slim {

void lowbit_a8_block_avx2(const LowbitA8Args& g, const A8Acts& a, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  lowbit_a8_avx2_run<DotMaddubs>(g, a, m0, m1, n0, n1);
}

}  // namespace slim
