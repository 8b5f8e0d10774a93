// slimkernels._C_cuda: build and device queries shared by all CUDA op families (csrc/cuda/runtime.cu).
#include <string>

#include "bind_common.h"
#include "slim/runtime_cuda.h"

namespace slim {
namespace bind {

void bind_runtime(py::module_& m) {
  m.def("compiled_archs", []() { return std::string(slim::cuda_compiled_archs()); },
        "Comma-separated CUDA architectures compiled in (__CUDA_ARCH_LIST__), or ''.");
  m.def("device_count", []() { return slim::cuda_device_count(); },
        "Number of CUDA devices (0, without raising, when there is no GPU or driver).");
}

}  // namespace bind
}  // namespace slim
