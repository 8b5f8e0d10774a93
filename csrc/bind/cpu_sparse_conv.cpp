// slimkernels._C: sparse 2-D convolution over a CSR weight (csrc/cpu/sparse_conv*.cpp).
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <pybind11/stl.h>

#include "bind_common.h"
#include "slim/cpu_isa.h"
#include "slim/quantize.h"
#include "slim/sparse_conv.h"

namespace slim {
namespace bind {
namespace {

slim::SparseValueKind parse_value_kind(const std::string& s) {
  if (s == "float32") return slim::SparseValueKind::kFloat32;
  if (s == "float16") return slim::SparseValueKind::kFloat16;
  if (s == "bfloat16") return slim::SparseValueKind::kBFloat16;
  if (s == "int8") return slim::SparseValueKind::kInt8;
  throw std::invalid_argument("sparse_conv2d: value_kind must be 'float32', 'float16', 'bfloat16' or 'int8', got '" +
                              s + "'");
}

bool parse_index_kind(const std::string& s) {
  if (s == "int16") return false;
  if (s == "int32") return true;
  throw std::invalid_argument("sparse_conv2d: index_kind must be 'int16' or 'int32', got '" + s + "'");
}

std::vector<int64_t> pair(const std::vector<int64_t>& v, const char* name) {
  if (v.size() != 2)
    throw std::invalid_argument(std::string("sparse_conv2d: ") + name + " must have 2 entries, got " +
                                std::to_string(v.size()));
  return v;
}

void sparse_conv2d(uintptr_t x, const std::string& x_kind, bool channels_last, int64_t B, int64_t Cin, int64_t H, int64_t W,
                   uintptr_t row_ptr, uintptr_t col_idx, const std::string& index_kind, uintptr_t values,
                   const std::string& value_kind, uintptr_t scales, uintptr_t bias, int64_t Cout, int64_t nnz,
                   const std::vector<int64_t>& kernel_size, const std::vector<int64_t>& stride,
                   const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation, int64_t groups,
                   uintptr_t y, int64_t OH, int64_t OW, int num_threads, const std::string& isa) {
  const auto k = pair(kernel_size, "kernel_size"), s = pair(stride, "stride"), p = pair(padding, "padding"),
             d = pair(dilation, "dilation");
  slim::SparseConvArgs g{ptr<const void>(x), slim::parse_in_kind(x_kind, "x_kind"), channels_last, B, Cin, H, W,
                         ptr<const int32_t>(row_ptr), ptr<const void>(col_idx), parse_index_kind(index_kind),
                         ptr<const void>(values), parse_value_kind(value_kind), ptr<const float>(scales),
                         ptr<const float>(bias), Cout, nnz, k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1], groups,
                         ptr<void>(y), OH, OW};
  const slim::CpuIsa i = slim::resolve_isa(isa, "isa");
  py::gil_scoped_release nogil;
  slim::sparse_conv2d(g, num_threads, i);
}

}  // namespace

void bind_sparse_conv(py::module_& m) {
  m.def("sparse_conv2d", &sparse_conv2d, py::arg("x"), py::arg("x_kind"), py::arg("channels_last"), py::arg("B"), py::arg("Cin"), py::arg("H"),
        py::arg("W"), py::arg("row_ptr"), py::arg("col_idx"), py::arg("index_kind"), py::arg("values"),
        py::arg("value_kind"), py::arg("scales"), py::arg("bias"), py::arg("Cout"), py::arg("nnz"),
        py::arg("kernel_size"), py::arg("stride"), py::arg("padding"), py::arg("dilation"), py::arg("groups"),
        py::arg("y"), py::arg("OH"), py::arg("OW"), py::arg("num_threads"), py::arg("isa") = "",
        "Sparse conv2d: y [B, Cout, OH, OW] = conv(x [B, Cin, H, W], W) + bias, both NCHW contiguous (NHWC if "
        "channels_last) of x_kind, W "
        "CSR over output channels of [Cout, Cin/groups*kh*kw] (row_ptr int32, col_idx index_kind, values "
        "value_kind; int8 times scales[co]); bias float32 or 0. Checks the sizes, row_ptr and col_idx.");
}

}  // namespace bind
}  // namespace slim
