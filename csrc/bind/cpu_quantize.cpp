// slimkernels._C: per-token int8 quantization (csrc/cpu/quantize*.cpp).
#include <cstdint>
#include <string>

#include "bind_common.h"
#include "slim/cpu_isa.h"
#include "slim/quantize.h"

namespace slim {
namespace bind {
namespace {

void quantize_per_token_int8(uintptr_t x, int64_t ldx, int64_t M, int64_t K, const std::string& x_kind, uintptr_t q,
                             int64_t ldq, uintptr_t scale, int num_threads, const std::string& isa, int qmax) {
  slim::QuantizeArgs g{ptr<const void>(x), ldx, M, K, slim::parse_in_kind(x_kind, "x_kind"), ptr<int8_t>(q), ldq,
                       ptr<float>(scale), qmax};
  const slim::CpuIsa i = slim::resolve_isa(isa, "isa");
  py::gil_scoped_release nogil;
  slim::quantize_per_token_int8(g, num_threads, i);
}

}  // namespace

void bind_quantize(py::module_& m) {
  m.def("quantize_per_token_int8", &quantize_per_token_int8, py::arg("x"), py::arg("ldx"), py::arg("M"),
        py::arg("K"), py::arg("x_kind"), py::arg("q"), py::arg("ldq"), py::arg("scale"), py::arg("num_threads"),
        py::arg("isa") = "", py::arg("qmax") = 127,
        "Per-row symmetric int8: scale = amax / qmax (NaN for non-finite rows, 1 for zero rows), q = "
        "clamp(rint(x / scale), -qmax, qmax); qmax 127, or 63 for 7-bit activations.");
}

}  // namespace bind
}  // namespace slim
