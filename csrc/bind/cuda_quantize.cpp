// slimkernels._C_cuda: per-token int8 quantization (csrc/cuda/quantize.cu).
#include <cstdint>
#include <string>

#include "bind_common.h"
#include "slim/quantize_cuda.h"

namespace slim {
namespace bind {

void bind_quantize(py::module_& m) {
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
}

}  // namespace bind
}  // namespace slim
