// pybind11 module slimkernels._C_cuda: raw-pointer entry points to the CUDA kernels.
//
// Compiled by the host C++ compiler, like the csrc/bind/cuda_*.cpp glue: they see only the plain
// declarations in slim/*_cuda.h (no CUDA headers). Pointers and the stream are Python ints
// (tensor.data_ptr(), torch.cuda.current_stream().cuda_stream); strides are in elements.
// std::invalid_argument becomes ValueError, std::runtime_error (CUDA errors, no GPU) becomes RuntimeError.
//
// Each op family's glue lives in csrc/bind/cuda_<family>.cpp as slim::bind::bind_<family>(m);
// adding a family is one entry in SLIM_CUDA_FAMILIES (CMake globs csrc/bind/cuda_*.cpp into _C_cuda).
#include <pybind11/pybind11.h>

#define SLIM_CUDA_FAMILIES(X) \
  X(int8_mm)                  \
  X(quantize)                 \
  X(lowbit)                   \
  X(sparse)                   \
  X(runtime)

namespace slim {
namespace bind {
#define SLIM_DECLARE_BIND(family) void bind_##family(pybind11::module_& m);
SLIM_CUDA_FAMILIES(SLIM_DECLARE_BIND)
#undef SLIM_DECLARE_BIND
}  // namespace bind
}  // namespace slim

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "slimkernels CUDA kernels (raw device pointers as ints; no libtorch)";
#define SLIM_CALL_BIND(family) slim::bind::bind_##family(m);
  SLIM_CUDA_FAMILIES(SLIM_CALL_BIND)
#undef SLIM_CALL_BIND
}
