// slimkernels._C: int8 GEMM with the fused epilogue on prepacked weights, and the fused W8A8
// int8_dynamic_linear (csrc/cpu/int8_mm*.cpp).
#include <cstdint>
#include <string>

#include "bind_common.h"
#include "slim/cpu_isa.h"
#include "slim/int8_mm.h"
#include "slim/int8_mm_dynamic.h"
#include "slim/quantize.h"

namespace slim {
namespace bind {
namespace {

void int8_mm(uintptr_t a, int64_t lda, uintptr_t packed, int64_t M, int64_t N, int64_t K, uintptr_t out,
             int64_t ldc, const std::string& out_kind, uintptr_t a_scale, uintptr_t b_scale, uintptr_t bias,
             int num_threads, const std::string& isa, const std::string& amx) {
  slim::Int8MmArgs g{ptr<const int8_t>(a), lda, ptr<const int8_t>(packed), M, N, K, ptr<void>(out), ldc,
                     slim::parse_out_kind(out_kind, "out_kind"), ptr<const float>(a_scale),
                     ptr<const float>(b_scale), ptr<const float>(bias)};
  const slim::CpuIsa i = slim::resolve_isa(isa, "isa");
  const slim::CpuAmx mode = slim::parse_cpu_amx(amx, "amx");
  py::gil_scoped_release nogil;  // long-running, touches no Python objects
  slim::int8_mm(g, num_threads, i, mode);
}

void int8_dynamic_linear(uintptr_t x, int64_t ldx, const std::string& x_kind, uintptr_t packed, uintptr_t w_scale,
                         uintptr_t bias, int64_t M, int64_t N, int64_t K, uintptr_t out, int64_t ldc, int num_threads,
                         const std::string& isa, int act_qmax, const std::string& amx) {
  slim::Int8DynamicLinearArgs g{ptr<const void>(x), ldx, slim::parse_in_kind(x_kind, "x_kind"),
                                ptr<const int8_t>(packed), ptr<const float>(w_scale), ptr<const float>(bias), M, N, K,
                                ptr<void>(out), ldc, act_qmax};
  const slim::CpuIsa i = slim::resolve_isa(isa, "isa");
  const slim::CpuAmx mode = slim::parse_cpu_amx(amx, "amx");
  py::gil_scoped_release nogil;
  slim::int8_dynamic_linear(g, num_threads, i, mode);
}

}  // namespace

void bind_int8_mm(py::module_& m) {
  m.def("int8_mm", &int8_mm, py::arg("a"), py::arg("lda"), py::arg("packed"), py::arg("M"), py::arg("N"),
        py::arg("K"), py::arg("out"), py::arg("ldc"), py::arg("out_kind"), py::arg("a_scale"), py::arg("b_scale"),
        py::arg("bias"), py::arg("num_threads"), py::arg("isa") = "", py::arg("amx") = "auto",
        "out[M, N] = epilogue(int8 a[M, K] @ b[N, K].T) with b in the pack_int8_cpu layout; exact int32 "
        "accumulation; out_kind 'int32' | 'float32' | 'float16' | 'bfloat16' (float: ((acc * a_scale[m]) * "
        "b_scale[n]) + bias[n], bias 0 = none). amx: 'auto' (AMX-INT8 tiles from a few rows of a, where "
        "usable) | 'on' (every M; ValueError where not usable) | 'off'; the same results.");
  m.def("int8_dynamic_linear", &int8_dynamic_linear, py::arg("x"), py::arg("ldx"), py::arg("x_kind"), py::arg("packed"),
        py::arg("w_scale"), py::arg("bias"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("out"), py::arg("ldc"),
        py::arg("num_threads"), py::arg("isa") = "", py::arg("act_qmax") = 127, py::arg("amx") = "auto",
        "W8A8 linear: per-token quantize of float x [M, K] to |q| <= act_qmax (127, or 63 for 7-bit activations) "
        "(scratch), then int8_mm against the packed weight; out [M, N] in x's float kind; amx as int8_mm's.");
}

}  // namespace bind
}  // namespace slim
