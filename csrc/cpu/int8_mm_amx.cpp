// int8 GEMM on AMX-INT8 tiles (compiled with the amx flags; used for larger M): tdpbssd adds the
// s8 x s8 dot products of a 16 x 64 tile of activations (A) and a 64 x 16 tile of weights (B) into
// 16 x 16 int32 sums (C), with exact wrapping int32 arithmetic like the other kernels, so the result
// is bit for bit theirs.
//
// B tiles need no repacking: a tile row is 16 columns x 4 consecutive k = 64 bytes, exactly one
// 4-k group of a 16-column panel of the pack_int8_cpu layout, so 64 k of a panel are 1024
// contiguous bytes loaded with stride 64. A panel holds Kp = K rounded to 4 k; a last step of fewer
// than 64 k is copied into a zero-padded tile (a full-tile load would read past the weights).
// Activations are staged once per call as whole A tiles (1024 contiguous bytes: 16 rows x 64 k), K
// padded to Ka = K rounded to 64 with zeros and M to 32 with zero rows: [16-row tile][k step][16][64].
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

constexpr int64_t kStepK = 64;                // k per tile step
constexpr int64_t kTileBytes = 1024;          // 16 rows x 64 bytes
constexpr int64_t kChunkBytes = 1024 * 1024;  // staged activations per pass over the panels (L2: 2 MB)
constexpr int64_t kChunkPairs = 16;           // and at most this many 32-row steps (their sums: 64 KB)
constexpr int64_t kBlockSteps = 8;            // k steps per block: the panel pair's slice (16 KB) stays in L1

int64_t padded_k(int64_t K) { return (K + kStepK - 1) / kStepK * kStepK; }
int64_t padded_m(int64_t M) { return (M + kInt8AmxRows - 1) / kInt8AmxRows * kInt8AmxRows; }

constexpr long kAccStride = 2 * 16 * sizeof(int32_t);  // bytes per row of a 32 x 32 int32 accumulator

// acc (32 x 32 int32: C tiles 0, 1 rows 0-15; 2, 3 rows 16-31) += `steps` k steps of the staged A
// (A: the first rows' tile of the first step; a2: bytes to the next 16 rows' tile) times the NB B
// panels (bstride bytes apart); `tail` (NB tiles of kTileBytes), when not null, is one more step.
// first: acc starts from zero rather than from memory.
template <int MA, int NB>
void run_tiles(const int8_t* A, int64_t a2, const int8_t* B, int64_t bstride, int64_t steps, const int8_t* tail,
               bool first, int32_t (*acc)[2 * 16]) {
  if (first) {
    _tile_zero(0);
    if constexpr (NB > 1) _tile_zero(1);
    if constexpr (MA > 1) _tile_zero(2);
    if constexpr (MA > 1 && NB > 1) _tile_zero(3);
  } else {
    _tile_loadd(0, &acc[0][0], kAccStride);
    if constexpr (NB > 1) _tile_loadd(1, &acc[0][16], kAccStride);
    if constexpr (MA > 1) _tile_loadd(2, &acc[16][0], kAccStride);
    if constexpr (MA > 1 && NB > 1) _tile_loadd(3, &acc[16][16], kAccStride);
  }
  const auto step = [&](const int8_t* a, const int8_t* b0, const int8_t* b1) {
    _tile_loadd(4, a, 64);
    _tile_loadd(6, b0, 64);
    _tile_dpbssd(0, 4, 6);
    if constexpr (MA > 1) {
      _tile_loadd(5, a + a2, 64);
      _tile_dpbssd(2, 5, 6);
    }
    if constexpr (NB > 1) {
      _tile_loadd(7, b1, 64);
      _tile_dpbssd(1, 4, 7);
      if constexpr (MA > 1) _tile_dpbssd(3, 5, 7);
    }
  };
  for (int64_t s = 0; s < steps; ++s) step(A + s * kTileBytes, B + s * kTileBytes, B + bstride + s * kTileBytes);
  if (tail) step(A + steps * kTileBytes, tail, tail + kTileBytes);
  _tile_stored(0, &acc[0][0], kAccStride);
  if constexpr (NB > 1) _tile_stored(1, &acc[0][16], kAccStride);
  if constexpr (MA > 1) _tile_stored(2, &acc[16][0], kAccStride);
  if constexpr (MA > 1 && NB > 1) _tile_stored(3, &acc[16][16], kAccStride);
}

using RunFn = void (*)(const int8_t*, int64_t, const int8_t*, int64_t, int64_t, const int8_t*, bool,
                       int32_t (*)[2 * 16]);
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
    int8_t* dst = A + (r / 16) * Ka * 16 + (r % 16) * 64;  // row r of its tiles
    for (int64_t k = 0; k < Ka; k += 64) {
      const int64_t nk = r < g.M ? std::min<int64_t>(64, g.K - k) : 0;
      const __mmask64 lm = nk >= 64 ? ~__mmask64(0) : nk <= 0 ? __mmask64(0) : (__mmask64(1) << nk) - 1;
      _mm512_store_si512(dst + k * 16, _mm512_maskz_loadu_epi8(lm, src + k));
    }
  }
}

void int8_mm_block_amx(const Int8MmArgs& g, const void* staged, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  const int64_t Ka = padded_k(g.K), Kp = (g.K + 3) / 4 * 4;
  const int64_t steps = Kp / kStepK, tail_bytes = (Kp % kStepK) * 16;  // whole steps; the last one's bytes
  const int64_t pstride = 16 * Kp;
  // Rows per pass over the panels: their activations (up to kChunkBytes) stay in L2 while the panels
  // stream past; at M <= 128, K = 4096 that is all rows, so the weights are read once. Within a
  // panel pair, k blocks of kBlockSteps outside, the row steps inside: each block's weights come
  // from L1 for all rows (sums kept in acc between blocks).
  const int64_t mchunk =
      std::clamp<int64_t>(kChunkBytes / std::max<int64_t>(Ka, 1) / kInt8AmxRows, 1, kChunkPairs) * kInt8AmxRows;
  const int8_t* A = static_cast<const int8_t*>(staged);
  alignas(64) int8_t tail[2 * kTileBytes];  // the last step of the panel pair, zero rows past Kp
  alignas(64) int32_t acc[kChunkPairs][kInt8AmxRows][2 * 16];
  amx_load_tile_config();
  for (int64_t mc = m0; mc < m1; mc += mchunk) {
    const int64_t mc1 = std::min(m1, mc + mchunk);
    for (int64_t p = p0; p < p1; p += 2) {
      const int nb = int(std::min<int64_t>(2, p1 - p));
      const int8_t* B = g.packed + p * pstride;
      if (tail_bytes) {
        std::memset(tail, 0, sizeof(tail));
        for (int j = 0; j < nb; ++j)
          std::memcpy(tail + j * kTileBytes, B + j * pstride + steps * kTileBytes, tail_bytes);
      }
      for (int64_t s0 = 0; s0 == 0 || s0 < steps; s0 += kBlockSteps) {
        const int64_t s1 = std::min(steps, s0 + kBlockSteps);
        const int8_t* t = s1 == steps && tail_bytes ? tail : nullptr;
        for (int64_t m = mc; m < mc1; m += kInt8AmxRows)
          pick(mc1 - m > 16 ? 2 : 1, nb)(A + m * Ka + s0 * kTileBytes, 16 * Ka, B + s0 * kTileBytes, pstride,
                                         s1 - s0, t, s0 == 0, acc[(m - mc) / kInt8AmxRows]);
      }
      const int64_t n0 = p * 16, nvalid = std::min<int64_t>(nb * 16, g.N - n0);
      for (int64_t m = mc; m < mc1; ++m)
        epilogue_row(g, m, n0, nvalid, acc[(m - mc) / kInt8AmxRows][(m - mc) % kInt8AmxRows]);
    }
  }
  _tile_release();
}

}  // namespace slim
