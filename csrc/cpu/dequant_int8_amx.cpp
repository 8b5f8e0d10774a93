// dequant_mm_int8 on AMX-BF16 tiles (compiled with the amx flags), on the tile machinery of
// amx_tiles.h: int8 weights are exact in bfloat16, so a weight row decodes to one piece and the
// per-row scale multiplies the float32 sums at the output.
#include <algorithm>
#include <cstdint>

#include "slim/amx_tiles.h"
#include "slim/dequant_int8.h"

namespace slim {

void dequant_int8_amx_mm(const DequantInt8Args& g, bool round, int num_threads) {
  const AmxX xa{g.x, g.ldx, g.x_kind, g.M, g.K, round};
  AmxGemm a{};
  a.M = g.M, a.N = g.N, a.K = g.K, a.P = amx_x_pieces(xa), a.Q = 1;
  a.row_scale = g.scale, a.bias = g.bias, a.y = g.y, a.ldy = g.ldy, a.y_kind = g.x_kind;
  const int64_t steps = amx_steps(g.K);
  amx_gemm(xa, a, num_threads, [&](const AmxGemm& b, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    amx_gemm_block(b, [&](int64_t row, uint16_t* dst, int64_t) {
      const int8_t* w = g.w + row * g.ldw;
      for (int64_t st = 0; st < steps; ++st) {  // 32 int8 -> 32 bfloat16 in k order, zero past K
        const int64_t avail = g.K - st * 32;
        const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(amx_head_mask(avail), w + st * 32)));
        const __m512 hi =
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(amx_head_mask(avail - 16), w + st * 32 + 16)));
        _mm512_store_si512(dst + st * kAmxStepElems, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
      }
    }, m0, m1, n0, n1);
  });
}

}  // namespace slim
