// slimkernels._C: the low_rank family: low_rank_linear, y = (x V^T) U^T + bias with the rank-r
// intermediate kept in cache (csrc/cpu/low_rank*.cpp, slim/low_rank.h).
#include <cstdint>
#include <string>

#include "bind_common.h"
#include "slim/cpu_isa.h"
#include "slim/low_rank.h"

namespace slim {
namespace bind {

void bind_low_rank(py::module_& m) {
  m.def(
      "low_rank_linear",
      [](uintptr_t x, int64_t ldx, uintptr_t v, uintptr_t u, uintptr_t bias, uintptr_t y, int64_t ldy, int64_t M,
         int64_t N, int64_t K, int64_t r, int num_threads, const std::string& isa) {
        const slim::CpuIsa i = slim::resolve_isa(isa, "isa");
        const slim::LowRankArgs w{ptr<const float>(v), ptr<const float>(u), ptr<const float>(bias), N, K, r};
        py::gil_scoped_release nogil;
        slim::low_rank_linear(w, ptr<const float>(x), ldx, ptr<float>(y), ldy, M, num_threads, i);
      },
      py::arg("x"), py::arg("ldx"), py::arg("v"), py::arg("u"), py::arg("bias"), py::arg("y"), py::arg("ldy"),
      py::arg("M"), py::arg("N"), py::arg("K"), py::arg("r"), py::arg("num_threads"), py::arg("isa") = "",
      "y[M, N] = (x[M, K] @ v[r, K].T) @ u[N, r].T + bias[N] (0 = none), all float32; rows of x and y at "
      "strides ldx and ldy.");
}

}  // namespace bind
}  // namespace slim
