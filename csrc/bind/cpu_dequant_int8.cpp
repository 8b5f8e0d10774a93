// slimkernels._C: W8A16 weight-only int8 (csrc/cpu/dequant_int8*.cpp).
#include <cstdint>
#include <string>

#include "bind_common.h"
#include "slim/cpu_isa.h"
#include "slim/dequant_int8.h"
#include "slim/quantize.h"

namespace slim {
namespace bind {
namespace {

void dequant_mm_int8(uintptr_t x, int64_t ldx, const std::string& x_kind, uintptr_t w, int64_t ldw, uintptr_t scale,
                     uintptr_t bias, uintptr_t y, int64_t ldy, int64_t M, int64_t N, int64_t K, int num_threads,
                     const std::string& isa, const std::string& amx) {
  slim::DequantInt8Args g{ptr<const void>(x), ldx, slim::parse_in_kind(x_kind, "x_kind"), ptr<const int8_t>(w), ldw,
                          ptr<const float>(scale), ptr<const float>(bias), ptr<void>(y), ldy, M, N, K};
  const slim::CpuIsa i = slim::resolve_isa(isa, "isa");
  const slim::CpuAmx a = slim::parse_cpu_amx(amx, "amx");
  py::gil_scoped_release nogil;
  slim::dequant_mm_int8(g, num_threads, i, a);
}

}  // namespace

void bind_dequant_int8(py::module_& m) {
  m.def("dequant_mm_int8", &dequant_mm_int8, py::arg("x"), py::arg("ldx"), py::arg("x_kind"), py::arg("w"),
        py::arg("ldw"), py::arg("scale"), py::arg("bias"), py::arg("y"), py::arg("ldy"), py::arg("M"), py::arg("N"),
        py::arg("K"), py::arg("num_threads"), py::arg("isa") = "", py::arg("amx") = "auto",
        "W8A16: y[M, N] = (x[M, K] @ w[N, K].T) * scale[n] + bias[n] (bias 0 = none); x and y of x_kind "
        "'float32' | 'float16' | 'bfloat16', w int8 row-major, float32 accumulation, RNE output; amx 'auto' | "
        "'on' | 'off': AMX-BF16 tiles (as lowbit_mm).");
}

}  // namespace bind
}  // namespace slim
