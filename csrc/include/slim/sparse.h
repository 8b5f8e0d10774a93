// Sparse weight matmul on the CPU, the sparse family of quant/sparse.py (its canonical layouts):
//   y[m, n] = (sum_k x[m, k] * W[n, k]) * scale[n] + bias[n]
// with W [N, K] stored as
//   CSR  row_ptr int32 [N + 1], col_idx int16/int32 [nnz], values [nnz];
//   BSR  bn x bk blocks: row_ptr int32 [N / bn + 1] over block rows, col_idx [nnzb] block columns,
//        values [nnzb, bn, bk] (each block row-major);
//   N:M  groups of m = 4 or 8 columns with m / 2 kept: values [N, K / 2], positions uint8 (b-bit
//        in-group positions, b = log2(m), packed as quant.lowbit.pack_codes: an LSB-first bit stream
//        per row of ceil(K / 2 * b / 8) bytes).
// Values float32 / float16 / bfloat16, or int8 times scale[n] (scale null for float values).
// x float32 / float16 / bfloat16 [M, K] (row stride ldx); y [M, N] in x's kind (row stride ldy).
// float32 accumulation, round-to-nearest-even output.
//
// Two ways through a weight row, both shared by every ISA (templates over an ISA policy P below):
// - rows: one row of x at a time (M = 1): a gather dot product of the row's values with x[col];
//   N:M rows instead pick their x values out of the two vectors of x their group span covers.
// - tiles: x transposed once per call into tiles xT [K][tile] (tile rows of x, float32, zero past
//   M), so a nonzero (k, v) of row n is one broadcast and tile / lanes contiguous FMAs.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "slim/cpu_convert.h"
#include "slim/cpu_isa.h"
#include "slim/quantize.h"  // InKind, parse_in_kind

// The tile loop's accumulators live in registers only when its helpers are inlined (see lowbit.h).
#ifndef SLIM_FORCE_INLINE
#if defined(__GNUC__)
#define SLIM_FORCE_INLINE inline __attribute__((always_inline))
#else
#define SLIM_FORCE_INLINE inline
#endif
#endif

namespace slim {

enum class SparseFormat { kCsr = 0, kBsr = 1, kNm = 2 };
enum class SparseValue { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kInt8 = 3 };
enum class SparseIndex { kInt16 = 0, kInt32 = 1 };
SparseValue parse_sparse_value(const std::string& name, const char* arg_name);
SparseIndex parse_sparse_index(const std::string& name, const char* arg_name);

struct SparseMmArgs {
  const void* x;            // [M, K] row stride ldx (elements), type per x_kind
  int64_t ldx;
  InKind x_kind;            // also the kind of y
  SparseFormat format;
  const int32_t* row_ptr;   // CSR: [N + 1]; BSR: [N / bn + 1]; N:M: unused
  const void* col_idx;      // CSR: [nnz] columns; BSR: [nnz] block columns; N:M: unused
  SparseIndex index_kind;
  int64_t nnz;              // stored entries (CSR) or blocks (BSR)
  const void* values;       // CSR [nnz]; BSR [nnz, bn, bk]; N:M [N, K / 2]
  SparseValue value_kind;
  const float* scales;      // [N] for int8 values, else null
  int64_t bn, bk;           // BSR block (CSR and N:M: 1 x 1)
  const uint8_t* positions; // N:M: [N, ceil(K / 2 * bits / 8)]
  int group;                // N:M: m (4 or 8)
  const float* bias;        // [N] or null
  void* y;                  // [M, N] row stride ldy
  int64_t ldy;
  int64_t M, N, K;
};

// Validates (std::invalid_argument naming the argument; row pointers included: start 0, end nnz,
// non-decreasing), then runs on up to num_threads threads. Column indices are trusted to lie in
// range (the layouts are validated at pack and load time: quant.sparse.validate_*).
void spmm(const SparseMmArgs& args, int num_threads, CpuIsa isa);

// The largest M that takes the row path, and the rows of x per tile of the tile path: 16, 32 or 64,
// the smallest that holds M (64 from M = 33): a nonzero's broadcast, value and index load are shared
// by tile / lanes FMAs, so wider tiles cost less per multiply-add when M fills them.
constexpr int64_t kSparseRowsMaxM = 1;
inline int64_t sparse_tile(int64_t M) { return M <= 16 ? 16 : M <= 32 ? 32 : 64; }

// ---- per-ISA kernels: rows [n0, n1) of W (block rows for BSR), every row of x -----------------------
// xf: x in float32 (row stride ldxf); xt: the tiles (xT[t][k][tile], t = m / tile, tile =
// sparse_tile(M)); the path is chosen by which one is non-null. Callable from any thread.
void spmm_rows_scalar(const SparseMmArgs& g, const float* xf, int64_t ldxf, const float* xt, int64_t n0,
                      int64_t n1);
// Tiles [t0, t1) of x (float32 x, row stride ldxf) -> xt.
void spmm_transpose_scalar(const float* xf, int64_t ldxf, int64_t M, int64_t K, float* xt, int64_t t0, int64_t t1);
#ifdef SLIM_X86
void spmm_rows_avx2(const SparseMmArgs& g, const float* xf, int64_t ldxf, const float* xt, int64_t n0, int64_t n1);
void spmm_transpose_avx2(const float* xf, int64_t ldxf, int64_t M, int64_t K, float* xt, int64_t t0, int64_t t1);
void spmm_rows_avx512_vnni(const SparseMmArgs& g, const float* xf, int64_t ldxf, const float* xt, int64_t n0,
                           int64_t n1);
void spmm_transpose_avx512_vnni(const float* xf, int64_t ldxf, int64_t M, int64_t K, float* xt, int64_t t0,
                                int64_t t1);
#endif

namespace {
// ---- what every ISA shares (internal linkage: see cpu_convert.h) ---------------------------------------
// y[m, n] = acc * scale[n] + bias[n], rounded to y's kind.
inline void sparse_store(const SparseMmArgs& g, int64_t m, int64_t n, float acc) {
  float v = g.scales ? acc * g.scales[n] : acc;
  if (g.bias) v += g.bias[n];
  store_as(g.y, g.x_kind, m * g.ldy + n, v);
}

// The kept value j's column in an N:M row: group j / (m / 2), position from the packed bit stream.
inline int64_t nm_column(const uint8_t* pos, int64_t j, int group) {
  const int bits = group == 8 ? 3 : 2;
  const int64_t bit = j * bits;
  const int b0 = pos[bit >> 3];
  // A 3-bit code may straddle two bytes; the second is read only when it does (never past the row).
  const int b1 = (bit & 7) + bits > 8 ? pos[(bit >> 3) + 1] : 0;
  const int code = ((b0 | (b1 << 8)) >> (bit & 7)) & ((1 << bits) - 1);
  return (j / (group / 2)) * group + code;
}

inline int64_t nm_row_bytes(int64_t K, int group) { return (K / 2 * (group == 8 ? 3 : 2) + 7) / 8; }

// The packed positions of kept values j, j + 1, ... (j a multiple of 8, so they start on a byte) as
// the low bits of a 64-bit word; never reads past the row's pbytes bytes.
inline uint64_t nm_code_bits(const uint8_t* pos, int64_t pbytes, int64_t j, int bits) {
  const int64_t off = j * bits / 8;
  uint64_t u = 0;
  if (pbytes - off >= 8) std::memcpy(&u, pos + off, 8);
  else std::memcpy(&u, pos + off, size_t(pbytes - off));
  return u;
}

// ---- the kernels, over an ISA policy P ----------------------------------------------------------------
// P provides: V (P::kW float lanes), Vi (as many int32 lanes), zero(), load(const float*),
// load_n(const float*, n) (first n lanes, zero past), bcast(float), fma(a, b, c), add(a, b),
// hsum(V), store(float*, V), gather(const float* base, Vi idx, n) (lanes past n zero), index(const
// Idx*, n) for int16/int32 indices, values<VK>(const void* base, j, n) -> V (n values from entry j as
// float32), value<VK>(const void* base, j) -> float, gather_rows(const float* p, stride, n) (p[r *
// stride] for lanes r < n, zero past), and for N:M rows nm_dot<VK>(pos, pbytes, values, j0, half,
// group, x) (a row's dot product with x) and nm_columns(pos, pbytes, half, group, cols) (its columns).
template <class P, int64_t kSparseTile>
struct SparseKernels {
  using V = typename P::V;
  static constexpr int64_t kW = P::kW;
  static constexpr int64_t kNV = kSparseTile / kW;  // vectors per tile row
  // Independent accumulator sets of the tile loop: an FMA's latency is 4 cycles, so one chain would
  // hold each row to a nonzero every 4 cycles.
  static constexpr int kSets = kNV >= 4 ? 1 : 4 / int(kNV);

  // ---- rows: sum_j values[j] * x[col[j]] over j in [j0, j1) ----
  template <class Idx, SparseValue VK>
  static float dot(const Idx* col, const void* vals, int64_t j0, int64_t j1, const float* x) {
    V a0 = P::zero(), a1 = P::zero();
    int64_t j = j0;
    for (; j + 2 * kW <= j1; j += 2 * kW) {
      a0 = P::fma(P::template values<VK>(vals, j, kW), P::gather(x, P::index(col + j, kW), kW), a0);
      a1 = P::fma(P::template values<VK>(vals, j + kW, kW), P::gather(x, P::index(col + j + kW, kW), kW), a1);
    }
    for (; j < j1; j += kW) {
      const int64_t n = std::min<int64_t>(kW, j1 - j);
      a0 = P::fma(P::template values<VK>(vals, j, n), P::gather(x, P::index(col + j, n), n), a0);
    }
    return P::hsum(P::add(a0, a1));
  }

  // BSR row i of the blocks [b0, b1): sum over blocks of values[b, i, :] . x[col[b] * bk : + bk].
  template <class Idx, SparseValue VK>
  static float block_dot(const SparseMmArgs& g, const Idx* col, int64_t b0, int64_t b1, int64_t i, const float* x) {
    const int64_t bk = g.bk, stride = g.bn * bk;
    V a0 = P::zero(), a1 = P::zero();
    for (int64_t b = b0; b < b1; ++b) {
      const float* xb = x + int64_t(col[b]) * bk;
      const int64_t base = b * stride + i * bk;
      int64_t kk = 0;
      for (; kk + kW <= bk; kk += kW) a0 = P::fma(P::template values<VK>(g.values, base + kk, kW), P::load(xb + kk), a0);
      if (kk < bk) {
        const int64_t n = bk - kk;
        a1 = P::fma(P::template values<VK>(g.values, base + kk, n), P::load_n(xb + kk, n), a1);
      }
    }
    return P::hsum(P::add(a0, a1));
  }

  // ---- tiles: acc[0:kSparseTile] += v * xT[k][0:kSparseTile] over a run of entries ----
  struct Acc {
    V v[kSets][kNV];
  };
  static SLIM_FORCE_INLINE void acc_zero(Acc& a) {
    for (int s = 0; s < kSets; ++s)
      for (int64_t q = 0; q < kNV; ++q) a.v[s][q] = P::zero();
  }
  static SLIM_FORCE_INLINE void acc_fma(Acc& a, int s, float v, const float* xr) {
    const V vb = P::bcast(v);
    for (int64_t q = 0; q < kNV; ++q) a.v[s][q] = P::fma(vb, P::load(xr + q * kW), a.v[s][q]);
  }
  // Sum the sets, scale, add the bias, store rows [m0, min(m0 + kSparseTile, M)) of column n.
  static void acc_store(const SparseMmArgs& g, Acc& a, int64_t m0, int64_t n) {
    alignas(64) float out[kSparseTile];
    for (int64_t q = 0; q < kNV; ++q) {
      V s = a.v[0][q];
      for (int t = 1; t < kSets; ++t) s = P::add(s, a.v[t][q]);
      P::store(out + q * kW, s);
    }
    const int64_t rows = std::min<int64_t>(kSparseTile, g.M - m0);
    for (int64_t r = 0; r < rows; ++r) sparse_store(g, m0 + r, n, out[r]);
  }

  // Entries [j0, j1) with columns col[j] (or, cols != null, the int32 cols[j - j0]).
  template <class Idx, SparseValue VK>
  static SLIM_FORCE_INLINE void tile_entries(Acc& a, const Idx* col, const void* vals, int64_t j0, int64_t j1,
                                              const float* xt) {
    int64_t j = j0;
    for (; j + kSets <= j1; j += kSets)
      for (int s = 0; s < kSets; ++s)
        acc_fma(a, s, P::template value<VK>(vals, j + s), xt + int64_t(col[j + s]) * kSparseTile);
    for (; j < j1; ++j) acc_fma(a, 0, P::template value<VK>(vals, j), xt + int64_t(col[j]) * kSparseTile);
  }

  // ---- one format's rows [n0, n1) over every row of x ----
  template <class Idx, SparseValue VK>
  static void csr(const SparseMmArgs& g, const float* xf, int64_t ldxf, const float* xt, int64_t n0, int64_t n1) {
    const Idx* col = static_cast<const Idx*>(g.col_idx);
    for (int64_t n = n0; n < n1; ++n) {
      const int64_t j0 = g.row_ptr[n], j1 = g.row_ptr[n + 1];
      if (xt) {
        for (int64_t m0 = 0; m0 < g.M; m0 += kSparseTile) {
          Acc a;
          acc_zero(a);
          tile_entries<Idx, VK>(a, col, g.values, j0, j1, xt + m0 * g.K);
          acc_store(g, a, m0, n);
        }
      } else {
        for (int64_t m = 0; m < g.M; ++m) sparse_store(g, m, n, dot<Idx, VK>(col, g.values, j0, j1, xf + m * ldxf));
      }
    }
  }

  template <class Idx, SparseValue VK>
  static void bsr(const SparseMmArgs& g, const float* xf, int64_t ldxf, const float* xt, int64_t r0, int64_t r1) {
    const Idx* col = static_cast<const Idx*>(g.col_idx);
    const int64_t bn = g.bn, bk = g.bk;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b0 = g.row_ptr[r], b1 = g.row_ptr[r + 1];
      for (int64_t i = 0; i < bn; ++i) {
        const int64_t n = r * bn + i;
        if (xt) {
          for (int64_t m0 = 0; m0 < g.M; m0 += kSparseTile) {
            Acc a;
            acc_zero(a);
            const float* x = xt + m0 * g.K;
            for (int64_t b = b0; b < b1; ++b) {
              const float* xb = x + int64_t(col[b]) * bk * kSparseTile;
              const int64_t base = (b * bn + i) * bk;
              int64_t kk = 0;
              for (; kk + kSets <= bk; kk += kSets)
                for (int s = 0; s < kSets; ++s)
                  acc_fma(a, s, P::template value<VK>(g.values, base + kk + s), xb + (kk + s) * kSparseTile);
              for (; kk < bk; ++kk) acc_fma(a, 0, P::template value<VK>(g.values, base + kk), xb + kk * kSparseTile);
            }
            acc_store(g, a, m0, n);
          }
        } else {
          for (int64_t m = 0; m < g.M; ++m) sparse_store(g, m, n, block_dot<Idx, VK>(g, col, b0, b1, i, xf + m * ldxf));
        }
      }
    }
  }

  // N:M: the tile path decodes a row's columns once (int32, per-thread buffer `cols` of K / 2).
  template <SparseValue VK>
  static void nm(const SparseMmArgs& g, const float* xf, int64_t ldxf, const float* xt, int64_t n0, int64_t n1,
                 int32_t* cols) {
    const int64_t half = g.K / 2, pbytes = nm_row_bytes(g.K, g.group);
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* pos = g.positions + n * pbytes;
      const int64_t j0 = n * half;
      if (xt) {
        P::nm_columns(pos, pbytes, half, g.group, cols);
        for (int64_t m0 = 0; m0 < g.M; m0 += kSparseTile) {
          Acc a;
          acc_zero(a);
          tile_entries<int32_t, VK>(a, cols - j0, g.values, j0, j0 + half, xt + m0 * g.K);
          acc_store(g, a, m0, n);
        }
      } else {
        for (int64_t m = 0; m < g.M; ++m)
          sparse_store(g, m, n, P::template nm_dot<VK>(pos, pbytes, g.values, j0, half, g.group, xf + m * ldxf));
      }
    }
  }

  template <class Idx>
  static void by_value(const SparseMmArgs& g, const float* xf, int64_t ldxf, const float* xt, int64_t n0, int64_t n1,
                       int32_t* cols) {
    switch (g.value_kind) {
      case SparseValue::kFloat16: return by_format<Idx, SparseValue::kFloat16>(g, xf, ldxf, xt, n0, n1, cols);
      case SparseValue::kBFloat16: return by_format<Idx, SparseValue::kBFloat16>(g, xf, ldxf, xt, n0, n1, cols);
      case SparseValue::kInt8: return by_format<Idx, SparseValue::kInt8>(g, xf, ldxf, xt, n0, n1, cols);
      default: return by_format<Idx, SparseValue::kFloat32>(g, xf, ldxf, xt, n0, n1, cols);
    }
  }
  template <class Idx, SparseValue VK>
  static void by_format(const SparseMmArgs& g, const float* xf, int64_t ldxf, const float* xt, int64_t n0, int64_t n1,
                        int32_t* cols) {
    if (g.format == SparseFormat::kCsr) csr<Idx, VK>(g, xf, ldxf, xt, n0, n1);
    else if (g.format == SparseFormat::kBsr) bsr<Idx, VK>(g, xf, ldxf, xt, n0, n1);
    else if constexpr (std::is_same<Idx, int32_t>::value) nm<VK>(g, xf, ldxf, xt, n0, n1, cols);
  }

  // Dispatch on the index and value kinds.
  static void rows(const SparseMmArgs& g, const float* xf, int64_t ldxf, const float* xt, int64_t n0, int64_t n1,
                   int32_t* cols) {
    if (g.format != SparseFormat::kNm && g.index_kind == SparseIndex::kInt16)
      by_value<uint16_t>(g, xf, ldxf, xt, n0, n1, cols);
    else
      by_value<int32_t>(g, xf, ldxf, xt, n0, n1, cols);
  }

  // Tiles [t0, t1) of x: xt[t][k][r] = x[t * kSparseTile + r][k], zero past M.
  static void transpose(const float* xf, int64_t ldxf, int64_t M, int64_t K, float* xt, int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t m0 = t * kSparseTile, rows = std::min<int64_t>(kSparseTile, M - m0);
      float* o = xt + t * K * kSparseTile;
      for (int64_t k = 0; k < K; ++k)
        for (int64_t q = 0; q < kNV; ++q) {
          const int64_t r0 = q * kW, n = std::max<int64_t>(0, std::min<int64_t>(kW, rows - r0));
          P::store(o + k * kSparseTile + r0, P::gather_rows(xf + (m0 + r0) * ldxf + k, ldxf, n));
        }
    }
  }
};

// Entry points of an ISA: dispatch on the tile width.
template <class P>
void sparse_rows_for(const SparseMmArgs& g, const float* xf, int64_t ldxf, const float* xt, int64_t n0, int64_t n1,
                     int32_t* cols) {
  switch (sparse_tile(g.M)) {
    case 64: return SparseKernels<P, 64>::rows(g, xf, ldxf, xt, n0, n1, cols);
    case 32: return SparseKernels<P, 32>::rows(g, xf, ldxf, xt, n0, n1, cols);
    default: return SparseKernels<P, 16>::rows(g, xf, ldxf, xt, n0, n1, cols);
  }
}
template <class P>
void sparse_transpose_for(const float* xf, int64_t ldxf, int64_t M, int64_t K, float* xt, int64_t t0, int64_t t1) {
  switch (sparse_tile(M)) {
    case 64: return SparseKernels<P, 64>::transpose(xf, ldxf, M, K, xt, t0, t1);
    case 32: return SparseKernels<P, 32>::transpose(xf, ldxf, M, K, xt, t0, t1);
    default: return SparseKernels<P, 16>::transpose(xf, ldxf, M, K, xt, t0, t1);
  }
}
}  // namespace

}  // namespace slim
