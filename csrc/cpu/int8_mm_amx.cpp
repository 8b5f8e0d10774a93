// int8 GEMM on AMX-INT8 tiles (compiled with the amx flags; used for larger M): tdpbssd adds the
// s8 x s8 dot products of a 16 x 64 tile of activations (A) and a 64 x 16 tile of weights (B) into
// 16 x 16 int32 sums (C), with exact wrapping int32 arithmetic like the other kernels, so the result
// is bit for bit theirs.
//
// B tiles need no repacking: a tile row is 16 columns x 4 consecutive k = 64 bytes, exactly one
// 4-k group of a 16-column panel of the pack_int8_cpu layout, so 64 k of a panel are 1024
// contiguous bytes loaded with stride 64. A panel holds Kp = K rounded to 4 k; a last step of fewer
// than 64 k is copied into a zero-padded tile (a full-tile load would read past the weights).
// Activations are staged once per call with rows padded to Ka = K rounded to 64 (zeros) and M
// rounded to 32 (zero rows), so every A tile load is whole.
//
// Step: 2 A tiles (32 rows) x 2 B tiles (32 columns) -> 4 C tiles; tile registers 0-3 C, 4-5 A,
// 6-7 B. Each A and B load feeds two products.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "slim/amx_tiles.h"
#include "slim/int8_mm.h"
#include "slim/int8_mm_epilogue.h"

namespace slim {
namespace {

constexpr int64_t kStepK = 64;       // k per tile step
constexpr int64_t kTileBytes = 1024;  // 16 rows x 64 bytes
constexpr int64_t kChunkBytes = 512 * 1024;  // staged activations per pass over the panels (L2: 2 MB)

int64_t padded_k(int64_t K) { return (K + kStepK - 1) / kStepK * kStepK; }
int64_t padded_m(int64_t M) { return (M + kInt8AmxRows - 1) / kInt8AmxRows * kInt8AmxRows; }

// C tiles 0..MA*2-1 (0, 1: rows 0-15; 2, 3: rows 16-31) over `steps` k steps of A (row stride lda) and
// the NB B panels (bstride bytes apart); `tail` (NB tiles of kTileBytes), when not null, is one more step.
template <int MA, int NB>
void run_tiles(const int8_t* A, int64_t lda, const int8_t* B, int64_t bstride, int64_t steps, const int8_t* tail,
               int32_t (*acc)[2 * 16]) {
  _tile_zero(0);
  if constexpr (NB > 1) _tile_zero(1);
  if constexpr (MA > 1) _tile_zero(2);
  if constexpr (MA > 1 && NB > 1) _tile_zero(3);
  const auto step = [&](const int8_t* a, const int8_t* b0, const int8_t* b1) {
    _tile_loadd(4, a, lda);
    _tile_loadd(6, b0, 64);
    _tile_dpbssd(0, 4, 6);
    if constexpr (MA > 1) {
      _tile_loadd(5, a + 16 * lda, lda);
      _tile_dpbssd(2, 5, 6);
    }
    if constexpr (NB > 1) {
      _tile_loadd(7, b1, 64);
      _tile_dpbssd(1, 4, 7);
      if constexpr (MA > 1) _tile_dpbssd(3, 5, 7);
    }
  };
  for (int64_t s = 0; s < steps; ++s) step(A + s * kStepK, B + s * kTileBytes, B + bstride + s * kTileBytes);
  if (tail) step(A + steps * kStepK, tail, tail + kTileBytes);
  constexpr long ld = 2 * 16 * sizeof(int32_t);
  _tile_stored(0, &acc[0][0], ld);
  if constexpr (NB > 1) _tile_stored(1, &acc[0][16], ld);
  if constexpr (MA > 1) _tile_stored(2, &acc[16][0], ld);
  if constexpr (MA > 1 && NB > 1) _tile_stored(3, &acc[16][16], ld);
}

using RunFn = void (*)(const int8_t*, int64_t, const int8_t*, int64_t, int64_t, const int8_t*, int32_t (*)[2 * 16]);
RunFn pick(int ma, int nb) {
  if (ma == 1) return nb == 1 ? run_tiles<1, 1> : run_tiles<1, 2>;
  return nb == 1 ? run_tiles<2, 1> : run_tiles<2, 2>;
}

}  // namespace

size_t int8_mm_stage_bytes_amx(int64_t M, int64_t K) { return size_t(padded_m(M) * padded_k(K)); }

void int8_mm_stage_amx(const Int8MmArgs& g, void* staged) {
  const int64_t Ka = padded_k(g.K), Mp = padded_m(g.M);
  int8_t* A = static_cast<int8_t*>(staged);
  for (int64_t r = 0; r < Mp; ++r) {
    const int8_t* src = g.a + r * g.lda;
    int8_t* dst = A + r * Ka;
    for (int64_t k = 0; k < Ka; k += 64) {
      const int64_t nk = r < g.M ? std::min<int64_t>(64, g.K - k) : 0;
      const __mmask64 lm = nk >= 64 ? ~__mmask64(0) : nk <= 0 ? __mmask64(0) : (__mmask64(1) << nk) - 1;
      _mm512_storeu_si512(dst + k, _mm512_maskz_loadu_epi8(lm, src + k));
    }
  }
}

void int8_mm_block_amx(const Int8MmArgs& g, const void* staged, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  const int64_t Ka = padded_k(g.K), Kp = (g.K + 3) / 4 * 4;
  const int64_t steps = Kp / kStepK, tail_bytes = (Kp % kStepK) * 16;  // whole steps; the last one's bytes
  const int64_t pstride = 16 * Kp;
  // Rows per pass over the panels: their activations (kChunkBytes) stay in L2 while the panels
  // stream past; at M <= 128, K = 4096 that is all rows, so the weights are read once.
  const int64_t mchunk = std::max<int64_t>(1, kChunkBytes / std::max<int64_t>(Ka, 1) / kInt8AmxRows) * kInt8AmxRows;
  const int8_t* A = static_cast<const int8_t*>(staged);
  alignas(64) int8_t tail[2 * kTileBytes];  // the last step of the panel pair, zero rows past Kp
  alignas(64) int32_t acc[kInt8AmxRows][2 * 16];
  load_tile_config();
  for (int64_t mc = m0; mc < m1; mc += mchunk) {
    const int64_t mc1 = std::min(m1, mc + mchunk);
    for (int64_t p = p0; p < p1; p += 2) {
      const int nb = int(std::min<int64_t>(2, p1 - p));
      const int8_t* B = g.packed + p * pstride;
      if (tail_bytes) {
        std::memset(tail, 0, sizeof(tail));
        for (int j = 0; j < nb; ++j) std::memcpy(tail + j * kTileBytes, B + j * pstride + steps * kTileBytes, tail_bytes);
      }
      const int64_t n0 = p * 16, nvalid = std::min<int64_t>(nb * 16, g.N - n0);
      for (int64_t m = mc; m < mc1; m += kInt8AmxRows) {
        const int64_t rows = std::min<int64_t>(kInt8AmxRows, mc1 - m);
        pick(rows > 16 ? 2 : 1, nb)(A + m * Ka, Ka, B, pstride, steps, tail_bytes ? tail : nullptr, acc);
        for (int64_t i = 0; i < rows; ++i) epilogue_row(g, m + i, n0, nvalid, acc[i]);
      }
    }
  }
  _tile_release();
}

}  // namespace slim
