// spmm (the sparse family: CSR, BSR, N:M): validation, ISA dispatch, x preparation, the split of the
// weight rows over threads, and the scalar policy. The SIMD policies live in sparse_{avx2,avx512_vnni}.cpp;
// the kernels themselves are the templates of slim/sparse.h.
#include "slim/sparse.h"

#include <atomic>
#include <climits>
#include <stdexcept>
#include <string>
#include <vector>

#include "slim/scratch.h"
#include "slim/thread_pool.h"

namespace slim {

SparseValue parse_sparse_value(const std::string& name, const char* arg_name) {
  if (name == "float32") return SparseValue::kFloat32;
  if (name == "float16") return SparseValue::kFloat16;
  if (name == "bfloat16") return SparseValue::kBFloat16;
  if (name == "int8") return SparseValue::kInt8;
  throw std::invalid_argument(std::string(arg_name) + ": unknown value kind '" + name +
                              "', expected 'float32', 'float16', 'bfloat16' or 'int8'");
}

SparseIndex parse_sparse_index(const std::string& name, const char* arg_name) {
  if (name == "int16") return SparseIndex::kInt16;
  if (name == "int32") return SparseIndex::kInt32;
  throw std::invalid_argument(std::string(arg_name) + ": unknown index kind '" + name + "', expected 'int16' or 'int32'");
}

namespace {

// One lane: the templates of sparse.h at their plainest.
struct ScalarPolicy {
  using V = float;
  using Vi = int64_t;
  static constexpr int64_t kW = 1;
  static V zero() { return 0.f; }
  static V load(const float* p) { return *p; }
  static V load_n(const float* p, int64_t n) { return n > 0 ? *p : 0.f; }
  static V bcast(float v) { return v; }
  static V fma(V a, V b, V c) { return a * b + c; }
  static V add(V a, V b) { return a + b; }
  static float hsum(V v) { return v; }
  static void store(float* p, V v) { *p = v; }
  static V gather(const float* base, Vi i, int64_t n) { return n > 0 ? base[i] : 0.f; }
  template <class Idx>
  static Vi index(const Idx* p, int64_t) { return Vi(*p); }
  template <SparseValue VK>
  static float value(const void* base, int64_t j) {
    if constexpr (VK == SparseValue::kFloat16) return f16_to_f32(static_cast<const uint16_t*>(base)[j]);
    else if constexpr (VK == SparseValue::kBFloat16) return bf16_to_f32(static_cast<const uint16_t*>(base)[j]);
    else if constexpr (VK == SparseValue::kInt8) return float(static_cast<const int8_t*>(base)[j]);
    else return static_cast<const float*>(base)[j];
  }
  template <SparseValue VK>
  static V values(const void* base, int64_t j, int64_t) { return value<VK>(base, j); }
  static V gather_rows(const float* p, int64_t, int64_t n) { return n > 0 ? *p : 0.f; }
  template <SparseValue VK>
  static float nm_dot(const uint8_t* pos, int64_t, const void* vals, int64_t j0, int64_t half, int group,
                      const float* x) {
    float acc = 0.f;
    for (int64_t j = 0; j < half; ++j) acc += value<VK>(vals, j0 + j) * x[nm_column(pos, j, group)];
    return acc;
  }
  static void nm_columns(const uint8_t* pos, int64_t, int64_t half, int group, int32_t* cols) {
    for (int64_t j = 0; j < half; ++j) cols[j] = int32_t(nm_column(pos, j, group));
  }
};

[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument("spmm: " + msg); }

struct Kernels {
  void (*rows)(const SparseMmArgs&, const float*, int64_t, const float*, int64_t, int64_t);
  void (*transpose)(const float*, int64_t, int64_t, int64_t, float*, int64_t, int64_t);
};

Kernels kernels_for(CpuIsa isa) {
#ifdef SLIM_X86
  if (isa == CpuIsa::kAvx512Vnni) return {spmm_rows_avx512_vnni, spmm_transpose_avx512_vnni};
  if (isa == CpuIsa::kAvx2) return {spmm_rows_avx2, spmm_transpose_avx2};
#endif
  (void)isa;
  return {spmm_rows_scalar, spmm_transpose_scalar};
}

// Row pointers over `rows` rows of `count` entries: start 0, end count, non-decreasing (O(rows)).
void check_row_ptr(const int32_t* row_ptr, int64_t rows, int64_t count) {
  if (!row_ptr) bad("row_ptr must not be null");
  if (row_ptr[0] != 0) bad("row_ptr[0] must be 0, got " + std::to_string(row_ptr[0]));
  if (row_ptr[rows] != count)
    bad("row_ptr[" + std::to_string(rows) + "] must equal the number of stored entries " + std::to_string(count) +
        ", got " + std::to_string(row_ptr[rows]));
  for (int64_t r = 0; r < rows; ++r)
    if (row_ptr[r + 1] < row_ptr[r]) bad("row_ptr must be non-decreasing (row " + std::to_string(r) + ")");
}

void validate(const SparseMmArgs& g, int num_threads, CpuIsa isa) {
  if (g.M < 0) bad("M must be >= 0, got " + std::to_string(g.M));
  if (g.N < 0) bad("N must be >= 0, got " + std::to_string(g.N));
  if (g.K < 0) bad("K must be >= 0, got " + std::to_string(g.K));
  if (g.K > INT32_MAX) bad("K must be < 2^31, got " + std::to_string(g.K));
  if (g.M > 1 && g.ldx < g.K) bad("ldx must be >= K (" + std::to_string(g.K) + "), got " + std::to_string(g.ldx));
  if (g.ldy < g.N) bad("ldy must be >= N (" + std::to_string(g.N) + "), got " + std::to_string(g.ldy));
  if (num_threads < 1) bad("num_threads must be >= 1, got " + std::to_string(num_threads));
  if (!isa_supported(isa)) bad(std::string("isa '") + isa_name(isa) + "' is not supported on this CPU/build");
  const bool int8 = g.value_kind == SparseValue::kInt8;
  if (int8 && !g.scales) bad("int8 values need scales (float32 [N]), got none");
  if (!int8 && g.scales) bad("scales go with int8 values only");
  int64_t entries = 0;  // stored values
  if (g.format == SparseFormat::kNm) {
    if (g.group != 4 && g.group != 8) bad("group must be 4 or 8, got " + std::to_string(g.group));
    if (g.K % g.group) bad("K=" + std::to_string(g.K) + " must be a multiple of group " + std::to_string(g.group));
    entries = g.N * (g.K / 2);
    if (entries && !g.positions) bad("positions must not be null");
  } else {
    if (g.bn < 1 || g.bk < 1) bad("block must be at least 1 x 1, got " + std::to_string(g.bn) + " x " + std::to_string(g.bk));
    if (g.format == SparseFormat::kCsr && (g.bn != 1 || g.bk != 1)) bad("CSR has 1 x 1 blocks");
    if (g.N % g.bn) bad("bn=" + std::to_string(g.bn) + " must divide N=" + std::to_string(g.N));
    if (g.K % g.bk) bad("bk=" + std::to_string(g.bk) + " must divide K=" + std::to_string(g.K));
    if (g.nnz < 0 || g.nnz > INT32_MAX) bad("nnz must be in [0, 2^31), got " + std::to_string(g.nnz));
    check_row_ptr(g.row_ptr, g.N / g.bn, g.nnz);
    entries = g.nnz * g.bn * g.bk;
    if (g.nnz && !g.col_idx) bad("col_idx must not be null");
  }
  if (entries && !g.values) bad("values must not be null");
}

// y = bias (or 0): an empty reduction.
void store_bias(const SparseMmArgs& g) {
  for (int64_t m = 0; m < g.M; ++m)
    for (int64_t n = 0; n < g.N; ++n) {
      const float v = g.bias ? g.bias[n] : 0.f;
      const int64_t off = m * g.ldy + n;
      if (g.x_kind == InKind::kFloat32) static_cast<float*>(g.y)[off] = v;
      else if (g.x_kind == InKind::kFloat16) static_cast<uint16_t*>(g.y)[off] = f32_to_f16(v);
      else static_cast<uint16_t*>(g.y)[off] = f32_to_bf16(v);
    }
}

// x (float16 / bfloat16) -> float32 [M, K] contiguous.
void convert_x(const SparseMmArgs& g, float* xf) {
  for (int64_t m = 0; m < g.M; ++m) {
    const uint16_t* row = static_cast<const uint16_t*>(g.x) + m * g.ldx;
    float* o = xf + m * g.K;
    if (g.x_kind == InKind::kFloat16)
      for (int64_t k = 0; k < g.K; ++k) o[k] = f16_to_f32(row[k]);
    else
      for (int64_t k = 0; k < g.K; ++k) o[k] = bf16_to_f32(row[k]);
  }
}

// The split of the weight's units (rows; block rows for BSR) into tasks of about equal work: a unit
// costs its stored values plus a fixed per-row overhead, so dense and empty rows both balance.
std::vector<int64_t> split_units(const SparseMmArgs& g, int64_t units, int64_t per_row, int64_t tasks) {
  auto cost = [&](int64_t u) -> int64_t {
    const int64_t stored = g.format == SparseFormat::kNm ? u * (g.K / 2) : int64_t(g.row_ptr[u]) * g.bn * g.bk;
    return stored + u * per_row;
  };
  const int64_t total = cost(units);
  std::vector<int64_t> bounds(size_t(tasks) + 1, units);
  bounds[0] = 0;
  for (int64_t t = 1; t < tasks; ++t) {
    const int64_t want = total / tasks * t + (total % tasks) * t / tasks;
    int64_t lo = bounds[size_t(t) - 1], hi = units;  // first unit u with cost(u) >= want
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (cost(mid) < want) lo = mid + 1;
      else hi = mid;
    }
    bounds[size_t(t)] = lo;
  }
  return bounds;
}

}  // namespace

void spmm_rows_scalar(const SparseMmArgs& g, const float* xf, int64_t ldxf, const float* xt, int64_t n0, int64_t n1) {
  int32_t* cols = g.format == SparseFormat::kNm && xt
                      ? static_cast<int32_t*>(thread_scratch(2, size_t(g.K / 2 + 1) * sizeof(int32_t)))
                      : nullptr;
  sparse_rows_for<ScalarPolicy>(g, xf, ldxf, xt, n0, n1, cols);
}

void spmm_transpose_scalar(const float* xf, int64_t ldxf, int64_t M, int64_t K, float* xt, int64_t t0, int64_t t1) {
  sparse_transpose_for<ScalarPolicy>(xf, ldxf, M, K, xt, t0, t1);
}

void spmm(const SparseMmArgs& g, int num_threads, CpuIsa isa) {
  validate(g, num_threads, isa);
  if (g.M == 0 || g.N == 0) return;
  if (!g.y) bad("y must not be null");
  if (g.K == 0) return store_bias(g);
  if (!g.x) bad("x must not be null");

  const Kernels kern = kernels_for(isa);
  // x in float32: read in place, or converted once per call (M x K floats).
  const float* xf = static_cast<const float*>(g.x);
  int64_t ldxf = g.M > 1 ? g.ldx : g.K;
  if (g.x_kind != InKind::kFloat32 || ldxf > INT32_MAX / 64) {  // 64: the widest tile's row gather
    float* buf = static_cast<float*>(thread_scratch(0, size_t(g.M) * size_t(g.K) * sizeof(float) + 64));
    if (g.x_kind == InKind::kFloat32)
      for (int64_t m = 0; m < g.M; ++m) std::memcpy(buf + m * g.K, xf + m * g.ldx, size_t(g.K) * sizeof(float));
    else
      convert_x(g, buf);
    xf = buf;
    ldxf = g.K;
  }

  const int64_t units = g.format == SparseFormat::kBsr ? g.N / g.bn : g.N;
  const int64_t entries = g.format == SparseFormat::kNm ? g.N * (g.K / 2) : g.nnz * g.bn * g.bk;
  const double work = double(entries + g.N) * double(g.M);
  const int nt = work < double(1 << 16) ? 1 : int(std::min<int64_t>(num_threads, units));

  // Tiles of x (M > kSparseRowsMaxM): transposed once, shared read-only by every thread.
  float* xt = nullptr;
  if (g.M > kSparseRowsMaxM) {
    const int64_t tile = sparse_tile(g.M), tiles = (g.M + tile - 1) / tile;
    xt = static_cast<float*>(thread_scratch(1, size_t(tiles * g.K * tile) * sizeof(float)));
    if (nt > 1 && tiles > 1) {
      parallel_for(nt, [&](int tid, int nth) {
        kern.transpose(xf, ldxf, g.M, g.K, xt, tiles * tid / nth, tiles * (tid + 1) / nth);
      });
    } else {
      kern.transpose(xf, ldxf, g.M, g.K, xt, 0, tiles);
    }
  }

  const int64_t per_row = 8 * (g.format == SparseFormat::kBsr ? g.bn : 1);
  if (nt <= 1) {
    kern.rows(g, xf, ldxf, xt, 0, units);
    return;
  }
  const int64_t tasks = std::min<int64_t>(units, 16 * int64_t(nt));
  const std::vector<int64_t> bounds = split_units(g, units, per_row, tasks);
  std::atomic<int64_t> next{0};
  parallel_for(nt, [&](int, int) {
    for (int64_t t; (t = next.fetch_add(1, std::memory_order_relaxed)) < tasks;)
      if (bounds[size_t(t)] < bounds[size_t(t) + 1]) kern.rows(g, xf, ldxf, xt, bounds[size_t(t)], bounds[size_t(t) + 1]);
  });
}

}  // namespace slim
