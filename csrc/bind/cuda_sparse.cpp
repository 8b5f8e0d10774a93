// slimkernels._C_cuda: 2:4 sparse matmul on the sparse tensor cores, the op spmm_24 (csrc/cuda/sparse.cu;
// canonical layout of slimkernels/quant/sparse.py).
#include <cstdint>
#include <stdexcept>
#include <string>

#include "bind_common.h"
#include "slim/sparse_cuda.h"

namespace slim {
namespace bind {

namespace {

slim::SparseValueKind parse_value_kind(const std::string& s) {
  if (s == "float32") return slim::SparseValueKind::Float32;
  if (s == "float16") return slim::SparseValueKind::Float16;
  if (s == "bfloat16") return slim::SparseValueKind::BFloat16;
  if (s == "int8") return slim::SparseValueKind::Int8;
  throw std::invalid_argument("slimkernels CUDA: spmm_24: value_kind must be 'float32', 'float16', 'bfloat16' or "
                              "'int8', got '" + s + "'");
}

}  // namespace

void bind_sparse(py::module_& m) {
  m.def(
      "spmm_24",
      [](std::uintptr_t x, int64_t ldx, int64_t M, int64_t K, const std::string& x_kind, std::uintptr_t values,
         const std::string& value_kind, std::uintptr_t indices, std::uintptr_t scales, int64_t N, std::uintptr_t bias,
         std::uintptr_t out, int64_t ldo, std::uintptr_t stream) {
        const slim::FloatKind xk = parse_float_kind(x_kind, "spmm_24", "x_kind");
        const slim::SparseValueKind vk = parse_value_kind(value_kind);
        py::gil_scoped_release nogil;
        slim::spmm_24_cuda(ptr<const void>(x), ldx, M, K, xk, ptr<const void>(values), vk,
                           ptr<const uint8_t>(indices), ptr<const float>(scales), N, ptr<const float>(bias),
                           ptr<void>(out), ldo, ptr<void>(stream));
      },
      py::arg("x"), py::arg("ldx"), py::arg("M"), py::arg("K"), py::arg("x_kind"), py::arg("values"),
      py::arg("value_kind"), py::arg("indices"), py::arg("scales"), py::arg("N"), py::arg("bias"), py::arg("out"),
      py::arg("ldo"), py::arg("stream"),
      "out[M,N] (x_kind: float16 or bfloat16) = x[M,K] @ W.T (* scales) + bias, W 2:4 sparse in the canonical "
      "layout: values [N, K/2] (value_kind), indices uint8 [N, ceil(K/8)], scales float32 [N] for int8 values "
      "or 0, bias float32 [N] or 0.");
}

}  // namespace bind
}  // namespace slim
