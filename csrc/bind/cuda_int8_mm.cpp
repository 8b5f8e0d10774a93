// slimkernels._C_cuda: W8A8 int8 GEMM with the fused dequantizing epilogue (csrc/cuda/int8_mm.cu).
#include <cstdint>
#include <stdexcept>
#include <string>

#include "bind_common.h"
#include "slim/int8_mm_cuda.h"

namespace slim {
namespace bind {
namespace {

Int8MmOutKind parse_out_kind(const std::string& s) {
  if (s == "int32") return Int8MmOutKind::Int32;
  if (s == "float32") return Int8MmOutKind::Float32;
  if (s == "float16") return Int8MmOutKind::Float16;
  if (s == "bfloat16") return Int8MmOutKind::BFloat16;
  throw std::invalid_argument("slimkernels CUDA: int8_mm: out_kind must be 'int32', 'float32', 'float16' or 'bfloat16', got '" + s +
                              "'");
}

}  // namespace

void bind_int8_mm(py::module_& m) {
  m.def(
      "int8_mm",
      [](std::uintptr_t a, int64_t lda, std::uintptr_t b, int64_t ldb, int64_t M, int64_t N, int64_t K,
         std::uintptr_t out, int64_t ldc, const std::string& out_kind, std::uintptr_t a_scale,
         std::uintptr_t b_scale, std::uintptr_t bias, std::uintptr_t stream) {
        const slim::Int8MmOutKind kind = parse_out_kind(out_kind);
        py::gil_scoped_release nogil;
        slim::int8_mm_cuda(ptr<const int8_t>(a), lda, ptr<const int8_t>(b), ldb, M, N, K, ptr<void>(out), ldc, kind,
                           ptr<const float>(a_scale), ptr<const float>(b_scale), ptr<const float>(bias),
                           ptr<void>(stream));
      },
      py::arg("a"), py::arg("lda"), py::arg("b"), py::arg("ldb"), py::arg("M"), py::arg("N"), py::arg("K"),
      py::arg("out"), py::arg("ldc"), py::arg("out_kind"), py::arg("a_scale"), py::arg("b_scale"), py::arg("bias"),
      py::arg("stream"),
      "out[M,N] = a[M,K] @ b[N,K].T (int8 x int8 -> exact int32), then out_kind 'int32' or "
      "'float32'|'float16'|'bfloat16' = ((acc * a_scale[m]) * b_scale[n]) + bias[n] (bias 0 = none). "
      "Requires K % 16 == 0, lda % 16 == 0, ldb % 16 == 0, a and b 16-byte aligned.");

  m.def(
      "int8_mm_config",
      [](int64_t M, int64_t N, int64_t K) { return std::string(slim::int8_mm_cuda_config(M, N, K)); },
      py::arg("M"), py::arg("N"), py::arg("K"),
      "Tile configuration int8_mm picks for this shape on the current device: small|mid|wide|large.");
}

}  // namespace bind
}  // namespace slim
