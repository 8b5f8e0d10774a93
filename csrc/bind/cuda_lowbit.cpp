// slimkernels._C_cuda: weight-only int4 and 2/3/4-bit codebook matmul, the ops dequant_mm_int4 and
// lut_mm (csrc/cuda/lowbit.cu; canonical layouts of slimkernels/quant/lowbit.py).
#include <cstdint>
#include <string>

#include "bind_common.h"
#include "slim/lowbit_cuda.h"

namespace slim {
namespace bind {

void bind_lowbit(py::module_& m) {
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
}

}  // namespace bind
}  // namespace slim
