// slimkernels._C: ISA, AMX and thread-runtime queries shared by all CPU op families.
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "bind_common.h"
#include "slim/cpu_isa.h"
#include "slim/thread_pool.h"

namespace slim {
namespace bind {

void bind_runtime(py::module_& m) {
  m.def("cpu_isa", [] { return std::string(slim::isa_name(slim::best_isa())); },
        "Best ISA compiled in and supported at run time: 'avx512_vnni', 'avx2' or 'scalar'.");
  m.def("supported_isas", [] {
        std::vector<std::string> v;
        for (slim::CpuIsa i : slim::supported_isas()) v.emplace_back(slim::isa_name(i));
        return v;
      },
      "All usable ISAs, best first.");
  m.def("use_openmp_runtime", &slim::use_openmp_runtime, py::arg("path"),
        "Run the kernels' threads on the already-loaded OpenMP runtime at `path` (torch's); '' detaches. "
        "Returns False if it is not loaded or lacks GOMP_parallel.");
  m.def("thread_runtime", &slim::thread_runtime, "'openmp:<path>' or 'own pool'.");
  m.def("amx_bf16_supported",
        [] {
#ifdef SLIM_AMX
          return slim::amx_bf16_supported();
#else
          return false;
#endif
        },
        "Whether this CPU, OS and process can run AMX-BF16 tiles (the low-bit kernels' path for larger M); "
        "False when the build lacks it too.");
  m.def("amx_int8_supported",
        [] {
#ifdef SLIM_AMX
          return slim::amx_int8_supported();
#else
          return false;
#endif
        },
        "Whether this CPU, OS and process can run AMX-INT8 tiles (int8_mm's path for larger M); "
        "False when the build lacks it too.");
}

}  // namespace bind
}  // namespace slim
