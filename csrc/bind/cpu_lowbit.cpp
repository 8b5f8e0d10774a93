// slimkernels._C: weight-only int4 and 2/3/4-bit codebook matmul, the ops dequant_mm_int4 and lut_mm
// (csrc/cpu/lowbit*.cpp), and W4A8, dequant_mm_int4_a8 (csrc/cpu/lowbit_a8*.cpp).
#include <cstdint>
#include <string>

#include "bind_common.h"
#include "slim/cpu_isa.h"
#include "slim/lowbit.h"
#include "slim/lowbit_a8.h"
#include "slim/quantize.h"

namespace slim {
namespace bind {
namespace {

void lowbit_mm(uintptr_t x, int64_t ldx, const std::string& x_kind, uintptr_t codes, int bits,
               const std::string& lut_kind, uintptr_t scales, uintptr_t zeros, int64_t group_size, uintptr_t codebook,
               int64_t codebook_rows, uintptr_t bias, uintptr_t y, int64_t ldy, int64_t M, int64_t N, int64_t K,
               int num_threads, const std::string& isa, const std::string& amx) {
  slim::LowbitMmArgs g{ptr<const void>(x), ldx, slim::parse_in_kind(x_kind, "x_kind"), ptr<const uint8_t>(codes),
                       bits, slim::parse_lut_kind(lut_kind, "lut_kind"), ptr<const float>(scales),
                       ptr<const uint8_t>(zeros), group_size, ptr<const float>(codebook), codebook_rows,
                       ptr<const float>(bias), ptr<void>(y), ldy, M, N, K};
  const slim::CpuIsa i = slim::resolve_isa(isa, "isa");
  const slim::CpuAmx a = slim::parse_cpu_amx(amx, "amx");
  py::gil_scoped_release nogil;
  slim::lowbit_mm(g, num_threads, i, a);
}

void dequant_mm_int4_a8(uintptr_t x, int64_t ldx, const std::string& x_kind, uintptr_t qweight, uintptr_t scales,
                        uintptr_t zeros, int64_t group_size, uintptr_t bias, uintptr_t y, int64_t ldy, int64_t M,
                        int64_t N, int64_t K, int num_threads, const std::string& isa, bool avx_vnni) {
  slim::LowbitA8Args g{ptr<const void>(x), ldx, slim::parse_in_kind(x_kind, "x_kind"), ptr<const uint8_t>(qweight),
                       ptr<const float>(scales), ptr<const uint8_t>(zeros), group_size, ptr<const float>(bias),
                       ptr<void>(y), ldy, M, N, K};
  const slim::CpuIsa i = slim::resolve_isa(isa, "isa");
  py::gil_scoped_release nogil;
  slim::dequant_mm_int4_a8(g, num_threads, i, avx_vnni);
}

bool a8_avx_vnni_supported() {
#ifdef SLIM_X86
  return slim::avx_vnni_supported();
#else
  return false;
#endif
}

}  // namespace

void bind_lowbit(py::module_& m) {
  m.def("lowbit_mm", &lowbit_mm, py::arg("x"), py::arg("ldx"), py::arg("x_kind"), py::arg("codes"),
        py::arg("bits"), py::arg("lut_kind"), py::arg("scales"), py::arg("zeros"), py::arg("group_size"),
        py::arg("codebook"), py::arg("codebook_rows"), py::arg("bias"), py::arg("y"), py::arg("ldy"), py::arg("M"),
        py::arg("N"), py::arg("K"), py::arg("num_threads"), py::arg("isa") = "", py::arg("amx") = "auto",
        "Weight-only low-bit: y[M, N] = x[M, K] @ W.T + bias[n] (bias 0 = none) with W in the canonical "
        "packed layouts of slimkernels.quant.lowbit: lut_kind 'int4' (codes uint8 [N, ceil(K/2)], scales "
        "float32 [N, K/group_size], zeros uint8 or 0 = zero point 8; w = (q - z) * s) or 'codebook' "
        "(bits-bit codes [N, ceil(K*bits/8)], codebook float32 [codebook_rows = 1 or N, 2^bits]). x and y "
        "of x_kind 'float32' | 'float16' | 'bfloat16', float32 accumulation, RNE output. amx: 'auto' (AMX-BF16 "
        "tiles from 6 rows of x for int4 and 16 for 2- and 4-bit codebooks, where supported), 'on' (at any "
        "M; an error where unsupported) or 'off'.");
  m.def("dequant_mm_int4_a8", &dequant_mm_int4_a8, py::arg("x"), py::arg("ldx"), py::arg("x_kind"),
        py::arg("qweight"), py::arg("scales"), py::arg("zeros"), py::arg("group_size"), py::arg("bias"), py::arg("y"),
        py::arg("ldy"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("num_threads"), py::arg("isa") = "",
        py::arg("avx_vnni") = true,
        "W4A8: x[M, K] quantized per token to int8 (as quantize_per_token_int8), times int4 group-wise weights "
        "(qweight uint8 [N, ceil(K/2)], scales float32 [N, K/group_size], zeros uint8 or 0 = zero point 8) "
        "with exact int32 sums per group: y = sx[m] * sum_g s[n, g] * (sum q * xq - z * sum xq) + bias[n] "
        "(bias 0 = none). x and y of x_kind 'float32' | 'float16' | 'bfloat16'. avx_vnni: the avx2 tier's "
        "kernel uses AVX-VNNI where the CPU has it (False: vpmaddubsw + vpmaddwd).");
  m.def("a8_avx_vnni_supported", &a8_avx_vnni_supported,
        "Whether dequant_mm_int4_a8's avx2 tier runs AVX-VNNI here (CPU and build).");
}

}  // namespace bind
}  // namespace slim
