// pybind11 module slimkernels._C: the native CPU kernels over raw pointers (Python ints from
// tensor.data_ptr()), sizes and strides in elements. No libtorch. std::invalid_argument -> ValueError.
//
// Each op family's glue lives in csrc/bind/cpu_<family>.cpp as slim::bind::bind_<family>(m);
// adding a family is one entry in SLIM_CPU_FAMILIES (CMake globs csrc/bind/cpu_*.cpp into _C).
#include <pybind11/pybind11.h>

#define SLIM_CPU_FAMILIES(X) \
  X(runtime)                 \
  X(quantize)                \
  X(int8_mm)                 \
  X(dequant_int8)            \
  X(lowbit)                  \
  X(sparse)                  \
  X(sparse_conv)             \
  X(hashed)                  \
  X(kmeans)                  \
  X(low_rank)

namespace slim {
namespace bind {
#define SLIM_DECLARE_BIND(family) void bind_##family(pybind11::module_& m);
SLIM_CPU_FAMILIES(SLIM_DECLARE_BIND)
#undef SLIM_DECLARE_BIND
}  // namespace bind
}  // namespace slim

PYBIND11_MODULE(_C, m) {
  m.doc() = "slimkernels native CPU kernels (raw pointers, no libtorch)";
#define SLIM_CALL_BIND(family) slim::bind::bind_##family(m);
  SLIM_CPU_FAMILIES(SLIM_CALL_BIND)
#undef SLIM_CALL_BIND
}
