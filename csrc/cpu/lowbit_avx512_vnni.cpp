// lowbit_mm, AVX-512 float32 kernel (compiled with the avx512_vnni tier's flags; uses F/BW/DQ only).
// The policy (decode of codes into float32 lanes) is in lowbit_avx512.h.
#include "slim/lowbit_avx512.h"

namespace slim {

LowbitLayout lowbit_layout_avx512_vnni(int bits) { return lowbit_layout_for<Avx512Policy>(bits); }
void lowbit_block_avx512_vnni(const LowbitMmArgs& g, const float* xp, int64_t ldxp, int64_t m0, int64_t m1,
                              int64_t n0, int64_t n1) {
  lowbit_block_for<Avx512Policy, 4, 4>(g, xp, ldxp, m0, m1, n0, n1);
}

}  // namespace slim
