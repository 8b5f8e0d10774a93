// pybind11 module slimkernels._C_cuda: raw-pointer entry points to the CUDA kernels.
//
// Compiled by the host C++ compiler: it sees only the plain declarations in slim/*_cuda.h (no CUDA
// headers). Pointers and the stream are Python ints (tensor.data_ptr(),
// torch.cuda.current_stream().cuda_stream); strides are in elements. std::invalid_argument becomes
// ValueError, std::runtime_error (CUDA errors, no GPU) becomes RuntimeError.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "slim/int8_gemm_cuda.h"
#include "slim/quantize_cuda.h"

namespace py = pybind11;

namespace {

template <typename T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

slim::GemmOutKind parse_out_kind(const std::string& s) {
  if (s == "int32") return slim::GemmOutKind::Int32;
  if (s == "float32") return slim::GemmOutKind::Float32;
  if (s == "float16") return slim::GemmOutKind::Float16;
  if (s == "bfloat16") return slim::GemmOutKind::BFloat16;
  throw std::invalid_argument("slimkernels CUDA: int8_gemm: out_kind must be 'int32', 'float32', 'float16' or 'bfloat16', got '" + s +
                              "'");
}

slim::FloatKind parse_x_kind(const std::string& s) {
  if (s == "float32") return slim::FloatKind::Float32;
  if (s == "float16") return slim::FloatKind::Float16;
  if (s == "bfloat16") return slim::FloatKind::BFloat16;
  throw std::invalid_argument("slimkernels CUDA: quantize_per_token_int8: x_kind must be 'float32', 'float16' or 'bfloat16', got '" +
                              s + "'");
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "slimkernels CUDA kernels (raw device pointers as ints; no libtorch)";

  m.def(
      "int8_gemm",
      [](std::uintptr_t a, int64_t lda, std::uintptr_t b, int64_t ldb, int64_t M, int64_t N, int64_t K,
         std::uintptr_t out, int64_t ldc, const std::string& out_kind, std::uintptr_t a_scale,
         std::uintptr_t b_scale, std::uintptr_t bias, std::uintptr_t stream) {
        const slim::GemmOutKind kind = parse_out_kind(out_kind);
        py::gil_scoped_release nogil;
        slim::int8_gemm_cuda(ptr<const int8_t>(a), lda, ptr<const int8_t>(b), ldb, M, N, K, ptr<void>(out), ldc, kind,
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
      "int8_gemm_config",
      [](int64_t M, int64_t N, int64_t K) { return std::string(slim::int8_gemm_cuda_config(M, N, K)); },
      py::arg("M"), py::arg("N"), py::arg("K"),
      "Tile configuration int8_gemm picks for this shape on the current device: small|mid|wide|large.");

  m.def(
      "quantize_per_token_int8",
      [](std::uintptr_t x, int64_t ldx, int64_t M, int64_t K, const std::string& x_kind, std::uintptr_t q,
         int64_t ldq, std::uintptr_t scale, std::uintptr_t stream) {
        const slim::FloatKind kind = parse_x_kind(x_kind);
        py::gil_scoped_release nogil;
        slim::quantize_per_token_int8_cuda(ptr<const void>(x), ldx, M, K, kind, ptr<int8_t>(q), ldq,
                                           ptr<float>(scale), ptr<void>(stream));
      },
      py::arg("x"), py::arg("ldx"), py::arg("M"), py::arg("K"), py::arg("x_kind"), py::arg("q"), py::arg("ldq"),
      py::arg("scale"), py::arg("stream"),
      "Per-row symmetric int8: scale[m] = amax/127 (NaN if the row has inf/NaN, 1 if all zero), "
      "q = clamp(rint(x/scale), -127, 127).");

  m.def("compiled_archs", []() { return std::string(slim::cuda_compiled_archs()); },
        "Comma-separated CUDA architectures compiled in (__CUDA_ARCH_LIST__), or ''.");
  m.def("device_count", []() { return slim::cuda_device_count(); },
        "Number of CUDA devices (0, without raising, when there is no GPU or driver).");
}
