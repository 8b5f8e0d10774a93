// slimkernels._C: the sparse family's matmuls spmm_csr, spmm_bsr and spmm_nm (csrc/cpu/sparse*.cpp).
#include <cstdint>
#include <string>

#include "bind_common.h"
#include "slim/cpu_isa.h"
#include "slim/quantize.h"
#include "slim/sparse.h"

namespace slim {
namespace bind {
namespace {

struct Common {  // what the three calls share: x, values, scales, bias, y, sizes
  uintptr_t x;
  int64_t ldx;
  std::string x_kind;
  uintptr_t values;
  std::string value_kind;
  uintptr_t scales, bias, y;
  int64_t ldy, M, N, K;
};

void run(slim::SparseMmArgs g, const Common& c, int num_threads, const std::string& isa) {
  g.x = ptr<const void>(c.x);
  g.ldx = c.ldx;
  g.x_kind = slim::parse_in_kind(c.x_kind, "x_kind");
  g.values = ptr<const void>(c.values);
  g.value_kind = slim::parse_sparse_value(c.value_kind, "value_kind");
  g.scales = ptr<const float>(c.scales);
  g.bias = ptr<const float>(c.bias);
  g.y = ptr<void>(c.y);
  g.ldy = c.ldy;
  g.M = c.M;
  g.N = c.N;
  g.K = c.K;
  const slim::CpuIsa i = slim::resolve_isa(isa, "isa");
  py::gil_scoped_release nogil;
  slim::spmm(g, num_threads, i);
}

slim::SparseMmArgs blocks(slim::SparseFormat format, uintptr_t row_ptr, uintptr_t col_idx,
                          const std::string& index_kind, int64_t nnz, int64_t bn, int64_t bk) {
  slim::SparseMmArgs g{};
  g.format = format;
  g.row_ptr = ptr<const int32_t>(row_ptr);
  g.col_idx = ptr<const void>(col_idx);
  g.index_kind = slim::parse_sparse_index(index_kind, "index_kind");
  g.nnz = nnz;
  g.bn = bn;
  g.bk = bk;
  return g;
}

}  // namespace

void bind_sparse(py::module_& m) {
  m.def(
      "spmm_csr",
      [](uintptr_t x, int64_t ldx, const std::string& x_kind, uintptr_t row_ptr, uintptr_t col_idx,
         const std::string& index_kind, int64_t nnz, uintptr_t values, const std::string& value_kind, uintptr_t scales,
         uintptr_t bias, uintptr_t y, int64_t ldy, int64_t M, int64_t N, int64_t K, int num_threads,
         const std::string& isa) {
        run(blocks(slim::SparseFormat::kCsr, row_ptr, col_idx, index_kind, nnz, 1, 1),
            {x, ldx, x_kind, values, value_kind, scales, bias, y, ldy, M, N, K}, num_threads, isa);
      },
      py::arg("x"), py::arg("ldx"), py::arg("x_kind"), py::arg("row_ptr"), py::arg("col_idx"), py::arg("index_kind"),
      py::arg("nnz"), py::arg("values"), py::arg("value_kind"), py::arg("scales"), py::arg("bias"), py::arg("y"),
      py::arg("ldy"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("num_threads"), py::arg("isa") = "",
      "Unstructured sparse: y[M, N] = x[M, K] @ W.T (* scales[n] for int8 values) + bias[n] (0 = none), W in CSR "
      "(row_ptr int32 [N + 1], col_idx index_kind 'int16' | 'int32' [nnz], values value_kind 'float32' | "
      "'float16' | 'bfloat16' | 'int8' [nnz]; scales float32 [N] with int8 values, else 0). x and y of x_kind "
      "'float32' | 'float16' | 'bfloat16'. row_ptr is checked (starts at 0, ends at nnz, non-decreasing); "
      "col_idx must lie in [0, K) (quant.sparse.validate_csr).");
  m.def(
      "spmm_bsr",
      [](uintptr_t x, int64_t ldx, const std::string& x_kind, uintptr_t row_ptr, uintptr_t col_idx,
         const std::string& index_kind, int64_t nnzb, uintptr_t values, const std::string& value_kind, int64_t bn,
         int64_t bk, uintptr_t scales, uintptr_t bias, uintptr_t y, int64_t ldy, int64_t M, int64_t N, int64_t K,
         int num_threads, const std::string& isa) {
        run(blocks(slim::SparseFormat::kBsr, row_ptr, col_idx, index_kind, nnzb, bn, bk),
            {x, ldx, x_kind, values, value_kind, scales, bias, y, ldy, M, N, K}, num_threads, isa);
      },
      py::arg("x"), py::arg("ldx"), py::arg("x_kind"), py::arg("row_ptr"), py::arg("col_idx"), py::arg("index_kind"),
      py::arg("nnzb"), py::arg("values"), py::arg("value_kind"), py::arg("bn"), py::arg("bk"), py::arg("scales"),
      py::arg("bias"), py::arg("y"), py::arg("ldy"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("num_threads"),
      py::arg("isa") = "",
      "Block-sparse: as spmm_csr with bn x bk blocks (row_ptr [N / bn + 1] over block rows, col_idx [nnzb] block "
      "columns, values [nnzb, bn, bk] each block row-major). Any block shape dividing N x K.");
  m.def(
      "spmm_nm",
      [](uintptr_t x, int64_t ldx, const std::string& x_kind, uintptr_t values, const std::string& value_kind,
         uintptr_t positions, int group, uintptr_t scales, uintptr_t bias, uintptr_t y, int64_t ldy, int64_t M,
         int64_t N, int64_t K, int num_threads, const std::string& isa) {
        slim::SparseMmArgs g{};
        g.format = slim::SparseFormat::kNm;
        g.positions = ptr<const uint8_t>(positions);
        g.group = group;
        g.bn = g.bk = 1;
        run(g, {x, ldx, x_kind, values, value_kind, scales, bias, y, ldy, M, N, K}, num_threads, isa);
      },
      py::arg("x"), py::arg("ldx"), py::arg("x_kind"), py::arg("values"), py::arg("value_kind"), py::arg("positions"),
      py::arg("group"), py::arg("scales"), py::arg("bias"), py::arg("y"), py::arg("ldy"), py::arg("M"), py::arg("N"),
      py::arg("K"), py::arg("num_threads"), py::arg("isa") = "",
      "N:M semi-structured (2:4 with group 4, 4:8 with group 8): values [N, K / 2], positions uint8 "
      "[N, ceil(K / 2 * log2(group) / 8)] (the kept values' in-group positions, packed as quant.lowbit.pack_codes).");
}

}  // namespace bind
}  // namespace slim
