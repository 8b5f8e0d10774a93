// Portable int8 GEMM on the packed CPU layout (any architecture; the reference for the ISA files).
#include <algorithm>
#include <cstdint>

#include "slim/int8_mm_epilogue.h"
#include "slim/int8_mm.h"

namespace slim {

size_t int8_mm_stage_bytes_scalar(int64_t, int64_t) { return 0; }
void int8_mm_stage_scalar(const Int8MmArgs&, void*) {}  // reads a in place

void int8_mm_block_scalar(const Int8MmArgs& g, const void*, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  // Signed x signed products: no column-sum compensation needed here.
  const int64_t Kp = (g.K + 3) / 4 * 4, Kg = Kp / 4;
  for (int64_t p = p0; p < p1; ++p) {
    const int8_t* B = g.packed + p * 16 * Kp;
    const int64_t n0 = p * 16, nvalid = std::min<int64_t>(16, g.N - n0);
    for (int64_t m = m0; m < m1; ++m) {
      const int8_t* a = g.a + m * g.lda;
      uint32_t acc[16] = {};  // unsigned: wraps mod 2^32 like the SIMD kernels (no signed overflow UB)
      for (int64_t kg = 0; kg < Kg; ++kg) {
        int32_t av[4];
        for (int j = 0; j < 4; ++j) av[j] = kg * 4 + j < g.K ? a[kg * 4 + j] : 0;
        const int8_t* b = B + kg * 64;
        for (int c = 0; c < 16; ++c)
          for (int j = 0; j < 4; ++j) acc[c] += uint32_t(av[j] * int32_t(b[c * 4 + j]));
      }
      int32_t out[16];
      for (int c = 0; c < 16; ++c) out[c] = int32_t(acc[c]);
      epilogue_row(g, m, n0, nvalid, out);
    }
  }
}

}  // namespace slim
