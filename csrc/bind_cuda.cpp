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
#include "slim/lowbit_gemm_cuda.h"
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

slim::FloatKind parse_float_kind(const std::string& s, const char* op = "quantize_per_token_int8",
                                 const char* arg = "x_kind") {
  if (s == "float32") return slim::FloatKind::Float32;
  if (s == "float16") return slim::FloatKind::Float16;
  if (s == "bfloat16") return slim::FloatKind::BFloat16;
  throw std::invalid_argument(std::string("slimkernels CUDA: ") + op + ": " + arg +
                              " must be 'float32', 'float16' or 'bfloat16', got '" + s + "'");
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
        const slim::FloatKind kind = parse_float_kind(x_kind);
        py::gil_scoped_release nogil;
        slim::quantize_per_token_int8_cuda(ptr<const void>(x), ldx, M, K, kind, ptr<int8_t>(q), ldq,
                                           ptr<float>(scale), ptr<void>(stream));
      },
      py::arg("x"), py::arg("ldx"), py::arg("M"), py::arg("K"), py::arg("x_kind"), py::arg("q"), py::arg("ldq"),
      py::arg("scale"), py::arg("stream"),
      "Per-row symmetric int8: scale[m] = amax/127 (NaN if the row has inf/NaN, 1 if all zero), "
      "q = clamp(rint(x/scale), -127, 127).");

  // ---- weight-only low-bit (canonical layouts of slimkernels/quant/lowbit.py) ----
  m.attr("lowbit_gemv_max_m") = slim::kLowbitGemvMaxM;

  m.def(
      "dequant_mm_int4_gemv",
      [](std::uintptr_t x, int64_t ldx, int64_t M, int64_t K, const std::string& x_kind, std::uintptr_t qweight,
         std::uintptr_t scales, std::uintptr_t zeros, int64_t group_size, int64_t N, std::uintptr_t bias,
         std::uintptr_t out, int64_t ldo, std::uintptr_t stream) {
        const slim::FloatKind kind = parse_float_kind(x_kind, "dequant_mm_int4", "x_kind");
        py::gil_scoped_release nogil;
        slim::dequant_mm_int4_gemv_cuda(ptr<const void>(x), ldx, M, K, kind, ptr<const uint8_t>(qweight),
                                        ptr<const float>(scales), ptr<const uint8_t>(zeros), group_size, N,
                                        ptr<const float>(bias), ptr<void>(out), ldo, ptr<void>(stream));
      },
      py::arg("x"), py::arg("ldx"), py::arg("M"), py::arg("K"), py::arg("x_kind"), py::arg("qweight"),
      py::arg("scales"), py::arg("zeros"), py::arg("group_size"), py::arg("N"), py::arg("bias"), py::arg("out"),
      py::arg("ldo"), py::arg("stream"),
      "out[M,N] (x_kind) = x[M,K] @ ((q - z) * s).T + bias, M <= lowbit_gemv_max_m; qweight uint8 [N, ceil(K/2)], "
      "scales float32 [N, K/group_size], zeros uint8 [N, K/group_size] or 0 (zero point 8), bias float32 [N] or 0.");

  m.def(
      "lut_mm_gemv",
      [](std::uintptr_t x, int64_t ldx, int64_t M, int64_t K, const std::string& x_kind, std::uintptr_t indices,
         std::uintptr_t codebook, int64_t codebook_rows, int64_t bits, int64_t N, std::uintptr_t bias,
         std::uintptr_t out, int64_t ldo, std::uintptr_t stream) {
        const slim::FloatKind kind = parse_float_kind(x_kind, "lut_mm", "x_kind");
        py::gil_scoped_release nogil;
        slim::lut_mm_gemv_cuda(ptr<const void>(x), ldx, M, K, kind, ptr<const uint8_t>(indices),
                               ptr<const float>(codebook), codebook_rows, bits, N, ptr<const float>(bias),
                               ptr<void>(out), ldo, ptr<void>(stream));
      },
      py::arg("x"), py::arg("ldx"), py::arg("M"), py::arg("K"), py::arg("x_kind"), py::arg("indices"),
      py::arg("codebook"), py::arg("codebook_rows"), py::arg("bits"), py::arg("N"), py::arg("bias"), py::arg("out"),
      py::arg("ldo"), py::arg("stream"),
      "out[M,N] (x_kind) = x[M,K] @ codebook[row, idx].T + bias, M <= lowbit_gemv_max_m; indices uint8 "
      "[N, ceil(K*bits/8)], codebook float32 [1 or N, 2^bits], bias float32 [N] or 0.");

  m.def(
      "dequantize_int4",
      [](std::uintptr_t qweight, std::uintptr_t scales, std::uintptr_t zeros, int64_t group_size, int64_t N,
         int64_t K, std::uintptr_t w, int64_t ldw, const std::string& w_kind, std::uintptr_t stream) {
        const slim::FloatKind kind = parse_float_kind(w_kind, "dequantize_int4", "w_kind");
        py::gil_scoped_release nogil;
        slim::dequantize_int4_cuda(ptr<const uint8_t>(qweight), ptr<const float>(scales), ptr<const uint8_t>(zeros),
                                   group_size, N, K, ptr<void>(w), ldw, kind, ptr<void>(stream));
      },
      py::arg("qweight"), py::arg("scales"), py::arg("zeros"), py::arg("group_size"), py::arg("N"), py::arg("K"),
      py::arg("w"), py::arg("ldw"), py::arg("w_kind"), py::arg("stream"),
      "w[N,K] (w_kind) = (q - z) * s computed in float32 (the large-M path of dequant_mm_int4).");

  m.def(
      "dequantize_codebook",
      [](std::uintptr_t indices, std::uintptr_t codebook, int64_t codebook_rows, int64_t bits, int64_t N, int64_t K,
         std::uintptr_t w, int64_t ldw, const std::string& w_kind, std::uintptr_t stream) {
        const slim::FloatKind kind = parse_float_kind(w_kind, "dequantize_codebook", "w_kind");
        py::gil_scoped_release nogil;
        slim::dequantize_codebook_cuda(ptr<const uint8_t>(indices), ptr<const float>(codebook), codebook_rows, bits,
                                       N, K, ptr<void>(w), ldw, kind, ptr<void>(stream));
      },
      py::arg("indices"), py::arg("codebook"), py::arg("codebook_rows"), py::arg("bits"), py::arg("N"), py::arg("K"),
      py::arg("w"), py::arg("ldw"), py::arg("w_kind"), py::arg("stream"),
      "w[N,K] (w_kind) = codebook[row, idx] (the large-M path of lut_mm).");

  m.def("compiled_archs", []() { return std::string(slim::cuda_compiled_archs()); },
        "Comma-separated CUDA architectures compiled in (__CUDA_ARCH_LIST__), or ''.");
  m.def("device_count", []() { return slim::cuda_device_count(); },
        "Number of CUDA devices (0, without raising, when there is no GPU or driver).");
}
