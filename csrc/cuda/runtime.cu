// slimkernels CUDA: capability queries (no kernels). Contract: csrc/include/slim/runtime_cuda.h.
#include <cuda_runtime.h>

#include "slim/runtime_cuda.h"

namespace slim {

#define SLIM_STR2(...) #__VA_ARGS__
#define SLIM_STR(...) SLIM_STR2(__VA_ARGS__)

const char* cuda_compiled_archs() {
#if defined(__CUDA_ARCH_LIST__)
  // nvcc defines it in every pass as the comma-separated list of targets, e.g. 800,860,890,900
  return SLIM_STR(__CUDA_ARCH_LIST__);
#else
  return "";
#endif
}

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

}  // namespace slim
