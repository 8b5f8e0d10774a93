// slimkernels CUDA: W8A8 int8 GEMM, out = a @ b.T with a fused dequantizing epilogue.
// Contract: csrc/include/slim/int8_mm_cuda.h.
//
// One templated kernel (TileConfig below), instantiated for four tile shapes:
//   * shared memory: STAGES-deep ring of (A tile BM x BK, B tile BN x BK) int8 tiles filled with
//     16-byte cp.async.cg (zero-fill for rows >= M/N and for k >= K), rows padded to BK + 16 bytes;
//   * fragments: ldmatrix.m8n8.x4.b16 (an 8x8 b16 matrix is 8 rows x 16 int8), then
//     mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 (sm_80+);
//   * WK > 1 splits each K tile across WK groups of warps (for small M: more bytes in flight per
//     output tile without a workspace); their int32 partials are summed through shared memory;
//   * epilogue: int32 store, or float32 scales/bias and an RNE conversion, predicated on M/N.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k32", .s8; g = lane>>2, t = lane&3):
//   A 16x32 row-major, 4 regs: a0 = A[g][4t..4t+3], a1 = A[g+8][4t..], a2 = A[g][16+4t..],
//                              a3 = A[g+8][16+4t..]
//   B 32x8 "col" (= b stored [n][k], k contiguous), 2 regs: b0 = B[k=4t..4t+3][n=g], b1 = B[16+4t..][g]
//   C 16x8 s32, 4 regs: c0 = C[g][2t], c1 = C[g][2t+1], c2 = C[g+8][2t], c3 = C[g+8][2t+1]
// ldmatrix.x4: lanes 8j..8j+7 give the 8 row addresses of matrix j (16 bytes each); lane l then
// receives, from matrix j, in register j, the 32-bit word l%4 of row l/4 -- i.e. bytes 4t..4t+3 of
// row g. So matrix j = "rows (8 of them) x 16 k-bytes" lands exactly as one mma operand register.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <string>

#include "slim/common_cuda.h"
#include "slim/int8_mm_cuda.h"

namespace slim {
namespace {

using cuda_detail::check;
using cuda_detail::throw_invalid;

// ------------------------------------------------------------------------------------------------
// Tile configuration
// ------------------------------------------------------------------------------------------------
template <int BM_, int BN_, int BK_, int WM_, int WN_, int WK_, int STAGES_>
struct TileConfig {
  static constexpr int BM = BM_;          // CTA tile rows (M)
  static constexpr int BN = BN_;          // CTA tile cols (N)
  static constexpr int BK = BK_;          // K bytes per pipeline stage
  static constexpr int WM = WM_;          // warps along M
  static constexpr int WN = WN_;          // warps along N
  static constexpr int WK = WK_;          // warp groups splitting each K tile
  static constexpr int STAGES = STAGES_;  // cp.async ring depth

  static constexpr int WARPS = WM * WN * WK;
  static constexpr int THREADS = 32 * WARPS;
  static constexpr int WARP_M = BM / WM;  // rows per warp
  static constexpr int WARP_N = BN / WN;  // cols per warp
  static constexpr int MT = WARP_M / 16;  // m16 tiles per warp
  static constexpr int NT = WARP_N / 8;   // n8 tiles per warp
  static constexpr int KSTEPS = BK / 32;  // k32 mma steps per stage
  static constexpr int LDS = BK + 16;     // shared row stride in bytes (odd number of 16-byte chunks)
  static constexpr int CHUNKS = BK / 16;  // 16-byte chunks per tile row
  static constexpr int A_STAGE = BM * LDS;
  static constexpr int B_STAGE = BN * LDS;
  static constexpr int STAGE_BYTES = A_STAGE + B_STAGE;
  static constexpr int PIPE_BYTES = STAGES * STAGE_BYTES;
  static constexpr int NACC = MT * NT * 4;  // int32 accumulators per thread
  static constexpr int RED_BYTES = (WK - 1) * WM * WN * NACC * 32 * 4;
  static constexpr int SMEM_BYTES = PIPE_BYTES > RED_BYTES ? PIPE_BYTES : RED_BYTES;

  static_assert(BM % (16 * WM) == 0, "warp M tile must be a multiple of 16");
  static_assert(BN % (16 * WN) == 0, "warp N tile must be a multiple of 16 (n8 tiles go in pairs)");
  static_assert(BK % 32 == 0, "BK must be a multiple of the mma K (32)");
  static_assert(KSTEPS % WK == 0, "each warp group must get the same number of k32 steps");
  static_assert((LDS / 16) % 2 == 1, "row stride must be an odd number of 16-byte chunks (ldmatrix banks)");
  static_assert(STAGES >= 2, "need at least two stages");
  static_assert(SMEM_BYTES <= 99 * 1024, "must fit sm_86/sm_89 (99 KB opt-in)");
};

//                 BM   BN   BK  WM WN WK ST
using SmallCfg = TileConfig<16, 32, 256, 1, 1, 4, 5>;   // M <= 16: 128 thr, 65280 B smem
using MidCfg = TileConfig<64, 32, 128, 2, 1, 2, 6>;     // 16 < M, few tiles: 128 thr, 82944 B
using WideCfg = TileConfig<128, 64, 64, 2, 2, 1, 4>;    // M > 64, medium: 128 thr, 61440 B
using LargeCfg = TileConfig<128, 128, 64, 2, 4, 1, 4>;  // M > 64, many tiles: 256 thr, 81920 B

constexpr int kGroupM = 8;  // grouped rasterization: 8 M-tiles sweep N together (L2 reuse)
constexpr int64_t kMaxDim = int64_t(1) << 30;  // keeps in-kernel int indices (m0 + BM, k0 + BK) in range

// ------------------------------------------------------------------------------------------------
// PTX wrappers
// ------------------------------------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; src_bytes == 0 reads nothing and writes 16 zero bytes.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// d += a (16x32 s8, row) * b (32x8 s8, col), s32 accumulate (wrapping, no .satfinite)
__device__ __forceinline__ void mma_s8_16832(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ------------------------------------------------------------------------------------------------
// Epilogue helpers
// ------------------------------------------------------------------------------------------------
// ((float(acc) * sa) * sb) + bias, each step RNE, never contracted into an FMA.
__device__ __forceinline__ float dequant(int acc, float sa, float sb, const float* __restrict__ bias, int n) {
  float v = __fmul_rn(__fmul_rn(__int2float_rn(acc), sa), sb);
  if (bias != nullptr) v = __fadd_rn(v, bias[n]);
  return v;
}

// Stores out[row][col], out[row][col + 1] (the pair a thread owns in an mma C fragment); col < N.
__device__ __forceinline__ void store_pair(void* __restrict__ out, int64_t ldc, int row, int col, int N, int v0,
                                           int v1, int kind, float sa, const float* __restrict__ b_scale,
                                           const float* __restrict__ bias) {
  const bool has1 = col + 1 < N;
  const int64_t off = static_cast<int64_t>(row) * ldc + col;
  if (kind == static_cast<int>(Int8MmOutKind::Int32)) {
    int* p = static_cast<int*>(out) + off;
    if (has1 && (reinterpret_cast<uintptr_t>(p) & 7) == 0) {
      *reinterpret_cast<int2*>(p) = make_int2(v0, v1);
    } else {
      p[0] = v0;
      if (has1) p[1] = v1;
    }
    return;
  }
  const float f0 = dequant(v0, sa, b_scale[col], bias, col);
  const float f1 = has1 ? dequant(v1, sa, b_scale[col + 1], bias, col + 1) : 0.0f;
  if (kind == static_cast<int>(Int8MmOutKind::Float32)) {
    float* p = static_cast<float*>(out) + off;
    if (has1 && (reinterpret_cast<uintptr_t>(p) & 7) == 0) {
      *reinterpret_cast<float2*>(p) = make_float2(f0, f1);
    } else {
      p[0] = f0;
      if (has1) p[1] = f1;
    }
  } else if (kind == static_cast<int>(Int8MmOutKind::Float16)) {
    __half* p = static_cast<__half*>(out) + off;
    if (has1 && (reinterpret_cast<uintptr_t>(p) & 3) == 0) {
      *reinterpret_cast<__half2*>(p) = __floats2half2_rn(f0, f1);  // .x = f0 (low address), .y = f1
    } else {
      p[0] = __float2half_rn(f0);
      if (has1) p[1] = __float2half_rn(f1);
    }
  } else {  // BFloat16
    __nv_bfloat16* p = static_cast<__nv_bfloat16*>(out) + off;
    if (has1 && (reinterpret_cast<uintptr_t>(p) & 3) == 0) {
      *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(f0, f1);
    } else {
      p[0] = __float2bfloat16_rn(f0);
      if (has1) p[1] = __float2bfloat16_rn(f1);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// The kernel
// ------------------------------------------------------------------------------------------------
template <class C>
__global__ void __launch_bounds__(C::THREADS)
    int8_mm_kernel(const int8_t* __restrict__ a, int64_t lda, const int8_t* __restrict__ b, int64_t ldb, int M,
                   int N, int K, void* __restrict__ out, int64_t ldc, int out_kind,
                   const float* __restrict__ a_scale, const float* __restrict__ b_scale,
                   const float* __restrict__ bias) {
  extern __shared__ __align__(128) uint8_t smem[];

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;

  // ---- which output tile: grouped raster over a 1-D grid (Triton's "GROUP_M" ordering) ----
  const int num_pid_m = (M + C::BM - 1) / C::BM;
  const int num_pid_n = (N + C::BN - 1) / C::BN;
  const int pid = blockIdx.x;
  const int pids_per_group = kGroupM * num_pid_n;
  const int group = pid / pids_per_group;
  const int first_pid_m = group * kGroupM;
  const int group_rows = min(num_pid_m - first_pid_m, kGroupM);
  const int in_group = pid - group * pids_per_group;
  const int pid_m = first_pid_m + in_group % group_rows;
  const int pid_n = in_group / group_rows;
  const int m0 = pid_m * C::BM;
  const int n0 = pid_n * C::BN;

  // ---- warp roles ----
  const int kw = warp / (C::WM * C::WN);  // which k32 steps of a stage this warp does
  const int wmn = warp % (C::WM * C::WN);
  const int wm = wmn / C::WN;
  const int wn = wmn % C::WN;

  const uint32_t smem_base = smem_u32(smem);

  // ---- global -> shared: one stage = BM x BK of a and BN x BK of b, 16-byte chunks ----
  auto load_stage = [&](int stage, int ktile) {
    const int k0 = ktile * C::BK;
    const uint32_t sa = smem_base + stage * C::STAGE_BYTES;
    const uint32_t sb = sa + C::A_STAGE;
#pragma unroll
    for (int i = 0; i < (C::BM * C::CHUNKS + C::THREADS - 1) / C::THREADS; ++i) {
      const int c = tid + i * C::THREADS;
      if ((C::BM * C::CHUNKS) % C::THREADS != 0 && c >= C::BM * C::CHUNKS) break;
      const int r = c / C::CHUNKS;
      const int kc = c % C::CHUNKS;
      const int gm = m0 + r;
      const int gk = k0 + kc * 16;
      const bool valid = gm < M && gk < K;  // K % 16 == 0: a chunk is all in or all out
      const int8_t* src = valid ? a + static_cast<int64_t>(gm) * lda + gk : a;
      cp_async_16(sa + r * C::LDS + kc * 16, src, valid);
    }
#pragma unroll
    for (int i = 0; i < (C::BN * C::CHUNKS + C::THREADS - 1) / C::THREADS; ++i) {
      const int c = tid + i * C::THREADS;
      if ((C::BN * C::CHUNKS) % C::THREADS != 0 && c >= C::BN * C::CHUNKS) break;
      const int r = c / C::CHUNKS;
      const int kc = c % C::CHUNKS;
      const int gn = n0 + r;
      const int gk = k0 + kc * 16;
      const bool valid = gn < N && gk < K;
      const int8_t* src = valid ? b + static_cast<int64_t>(gn) * ldb + gk : b;
      cp_async_16(sb + r * C::LDS + kc * 16, src, valid);
    }
  };

  const int ktiles = (K + C::BK - 1) / C::BK;

  // Prologue: stages 0..STAGES-2 in flight, one commit group per stage (empty groups allowed).
#pragma unroll
  for (int s = 0; s < C::STAGES - 1; ++s) {
    if (s < ktiles) load_stage(s, s);
    cp_async_commit();
  }

  int acc[C::MT][C::NT][4];
#pragma unroll
  for (int i = 0; i < C::MT; ++i)
#pragma unroll
    for (int j = 0; j < C::NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0;

  // ldmatrix row addresses: lane l feeds row (l & 7) of matrix j = l >> 3.
  //   A (one m16 x k32 tile): matrix j = rows 8*(j&1).., k bytes 16*(j>>1).. -> regs a0,a1,a2,a3
  //   B (two n8 x k32 tiles): matrix j = n rows 8*(j>>1).., k bytes 16*(j&1).. -> b0,b1 of tile 2p,
  //                           then b0,b1 of tile 2p+1
  const int lj = lane >> 3;
  const int lr = lane & 7;
  const int a_row = wm * C::WARP_M + lr + (lj & 1) * 8;
  const int a_col = (lj >> 1) * 16;
  const int b_row = wn * C::WARP_N + lr + (lj >> 1) * 8;
  const int b_col = (lj & 1) * 16;

  for (int kt = 0; kt < ktiles; ++kt) {
    // Groups committed so far: (STAGES - 1) + kt; allowing STAGES - 2 pending means groups 0..kt are
    // complete, i.e. stage kt has landed (for this thread's copies; the barrier covers the others).
    cp_async_wait<C::STAGES - 2>();
    __syncthreads();
    // Refill the slot consumed in iteration kt - 1: every warp finished it before the barrier above.
    const int next = kt + C::STAGES - 1;
    if (next < ktiles) load_stage(next % C::STAGES, next);
    cp_async_commit();

    const uint32_t sa = smem_base + (kt % C::STAGES) * C::STAGE_BYTES;
    const uint32_t sb = sa + C::A_STAGE;
#pragma unroll
    for (int i = 0; i < C::KSTEPS / C::WK; ++i) {
      const int kk = (i * C::WK + kw) * 32;
      uint32_t af[C::MT][4];
      uint32_t bf[C::NT][2];
#pragma unroll
      for (int mt = 0; mt < C::MT; ++mt) ldmatrix_x4(af[mt], sa + (a_row + mt * 16) * C::LDS + kk + a_col);
#pragma unroll
      for (int p = 0; p < C::NT / 2; ++p) {
        uint32_t r[4];
        ldmatrix_x4(r, sb + (b_row + p * 16) * C::LDS + kk + b_col);
        bf[2 * p][0] = r[0];
        bf[2 * p][1] = r[1];
        bf[2 * p + 1][0] = r[2];
        bf[2 * p + 1][1] = r[3];
      }
#pragma unroll
      for (int mt = 0; mt < C::MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < C::NT; ++nt) mma_s8_16832(acc[mt][nt], af[mt], bf[nt][0], bf[nt][1]);
    }
  }
  cp_async_wait<0>();  // only empty groups can remain; drain them before shared memory is reused

  // ---- WK > 1: sum the warp groups' partials through shared memory (same thread <-> element map) ----
  if constexpr (C::WK > 1) {
    __syncthreads();  // every warp is done with the pipeline buffers
    int* red = reinterpret_cast<int*>(smem);
    if (kw > 0) {
      int* dst = red + ((kw - 1) * (C::WM * C::WN) + wmn) * (C::NACC * 32);
#pragma unroll
      for (int mt = 0; mt < C::MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < C::NT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) dst[((mt * C::NT + nt) * 4 + e) * 32 + lane] = acc[mt][nt][e];
    }
    __syncthreads();
    if (kw > 0) return;  // no barrier follows
#pragma unroll
    for (int w = 1; w < C::WK; ++w) {
      const int* src = red + ((w - 1) * (C::WM * C::WN) + wmn) * (C::NACC * 32);
#pragma unroll
      for (int mt = 0; mt < C::MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < C::NT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            // wrap-around int32 addition, as the tensor cores accumulate (unsigned: no UB)
            const uint32_t s = static_cast<uint32_t>(acc[mt][nt][e]) +
                               static_cast<uint32_t>(src[((mt * C::NT + nt) * 4 + e) * 32 + lane]);
            acc[mt][nt][e] = static_cast<int>(s);
          }
    }
  }

  // ---- epilogue: C fragment element (e) of tile (mt, nt) is row g + 8*(e>>1), col 2t + (e&1) ----
  const int g = lane >> 2;
  const int t = lane & 3;
  const bool is_int = out_kind == static_cast<int>(Int8MmOutKind::Int32);
#pragma unroll
  for (int mt = 0; mt < C::MT; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = m0 + wm * C::WARP_M + mt * 16 + g + 8 * h;
      if (row >= M) continue;
      const float sa = is_int ? 0.0f : a_scale[row];
#pragma unroll
      for (int nt = 0; nt < C::NT; ++nt) {
        const int col = n0 + wn * C::WARP_N + nt * 8 + 2 * t;
        if (col >= N) continue;
        store_pair(out, ldc, row, col, N, acc[mt][nt][2 * h], acc[mt][nt][2 * h + 1], out_kind, sa, b_scale, bias);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Host side
// ------------------------------------------------------------------------------------------------
template <class C>
int64_t num_tiles(int64_t M, int64_t N) {
  return ((M + C::BM - 1) / C::BM) * ((N + C::BN - 1) / C::BN);
}

enum class Cfg { Small, Mid, Wide, Large };

Cfg pick_config(int64_t M, int64_t N, int sms) {
  if (M <= 16) return Cfg::Small;
  if (M > 64) {
    // Biggest tile that still gives ~3/4 of a wave; big tiles need less L2 traffic per MAC.
    const int64_t want = (3 * static_cast<int64_t>(sms)) / 4;
    if (num_tiles<LargeCfg>(M, N) >= want) return Cfg::Large;
    if (num_tiles<WideCfg>(M, N) >= want) return Cfg::Wide;
  }
  return Cfg::Mid;
}

const char* config_name(Cfg c) {
  switch (c) {
    case Cfg::Small: return "small";
    case Cfg::Mid: return "mid";
    case Cfg::Wide: return "wide";
    default: return "large";
  }
}

template <class C>
void launch(int dev, const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t M, int64_t N, int64_t K,
            void* out, int64_t ldc, Int8MmOutKind kind, const float* a_scale, const float* b_scale, const float* bias,
            cudaStream_t stream) {
  auto kernel = int8_mm_kernel<C>;
  if (C::SMEM_BYTES > 48 * 1024) {
    static std::atomic<bool> configured[cuda_detail::kMaxDevices];
    if (!configured[dev].load(std::memory_order_acquire)) {
      check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM_BYTES),
            "cudaFuncSetAttribute(int8_mm shared memory)");
      configured[dev].store(true, std::memory_order_release);
    }
  }
  const int64_t tiles = num_tiles<C>(M, N);
  if (tiles > INT_MAX) throw_invalid("int8_mm: M x N too large for one launch");
  kernel<<<static_cast<unsigned>(tiles), C::THREADS, C::SMEM_BYTES, stream>>>(
      a, lda, b, ldb, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), out, ldc,
      static_cast<int>(kind), a_scale, b_scale, bias);
  check(cudaGetLastError(), "int8_mm kernel launch");
}

void validate(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t M, int64_t N, int64_t K,
              void* out, int64_t ldc, Int8MmOutKind kind, const float* a_scale, const float* b_scale,
              const float* bias) {
  using cuda_detail::aligned_to;
  if (M < 0 || M >= kMaxDim) throw_invalid("int8_mm: M must be in [0, 2^30), got " + std::to_string(M));
  if (N < 0 || N >= kMaxDim) throw_invalid("int8_mm: N must be in [0, 2^30), got " + std::to_string(N));
  if (K < 0 || K >= kMaxDim) throw_invalid("int8_mm: K must be in [0, 2^30), got " + std::to_string(K));
  if (K % 16 != 0) throw_invalid("int8_mm: K must be a multiple of 16, got " + std::to_string(K));
  if (lda < K || lda % 16 != 0)
    throw_invalid("int8_mm: lda must be >= K and a multiple of 16, got " + std::to_string(lda));
  if (ldb < K || ldb % 16 != 0)
    throw_invalid("int8_mm: ldb must be >= K and a multiple of 16, got " + std::to_string(ldb));
  if (ldc < N) throw_invalid("int8_mm: ldc must be >= N, got " + std::to_string(ldc));
  const int ik = static_cast<int>(kind);
  if (ik < 0 || ik > 3) throw_invalid("int8_mm: out_kind out of range");
  if (M == 0 || N == 0) return;
  if (out == nullptr) throw_invalid("int8_mm: out is null");
  const size_t esize = kind == Int8MmOutKind::Int32 || kind == Int8MmOutKind::Float32 ? 4 : 2;
  if (!aligned_to(out, esize)) throw_invalid("int8_mm: out must be aligned to its element size");
  if (K > 0) {
    if (a == nullptr || !aligned_to(a, 16)) throw_invalid("int8_mm: a must be non-null and 16-byte aligned");
    if (b == nullptr || !aligned_to(b, 16)) throw_invalid("int8_mm: b must be non-null and 16-byte aligned");
  }
  if (kind != Int8MmOutKind::Int32) {
    if (a_scale == nullptr || !aligned_to(a_scale, 4))
      throw_invalid("int8_mm: a_scale must be a non-null float32 pointer for float outputs");
    if (b_scale == nullptr || !aligned_to(b_scale, 4))
      throw_invalid("int8_mm: b_scale must be a non-null float32 pointer for float outputs");
    if (bias != nullptr && !aligned_to(bias, 4)) throw_invalid("int8_mm: bias must be 4-byte aligned");
  }
}

}  // namespace

void int8_mm_cuda(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t M, int64_t N, int64_t K,
                  void* out, int64_t ldc, Int8MmOutKind out_kind, const float* a_scale, const float* b_scale,
                  const float* bias, void* stream) {
  validate(a, lda, b, ldb, M, N, K, out, ldc, out_kind, a_scale, b_scale, bias);
  if (M == 0 || N == 0) return;
  if (out_kind == Int8MmOutKind::Int32) a_scale = b_scale = bias = nullptr;  // never read
  const int dev = cuda_detail::current_device();
  const int sms = cuda_detail::sm_count(dev);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (pick_config(M, N, sms)) {
    case Cfg::Small:
      launch<SmallCfg>(dev, a, lda, b, ldb, M, N, K, out, ldc, out_kind, a_scale, b_scale, bias, s);
      break;
    case Cfg::Mid:
      launch<MidCfg>(dev, a, lda, b, ldb, M, N, K, out, ldc, out_kind, a_scale, b_scale, bias, s);
      break;
    case Cfg::Wide:
      launch<WideCfg>(dev, a, lda, b, ldb, M, N, K, out, ldc, out_kind, a_scale, b_scale, bias, s);
      break;
    case Cfg::Large:
      launch<LargeCfg>(dev, a, lda, b, ldb, M, N, K, out, ldc, out_kind, a_scale, b_scale, bias, s);
      break;
  }
}

const char* int8_mm_cuda_config(int64_t M, int64_t N, int64_t /*K*/) {
  const int dev = cuda_detail::current_device();
  return config_name(pick_config(M, N, cuda_detail::sm_count(dev)));
}

}  // namespace slim
