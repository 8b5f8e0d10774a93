// slimkernels CUDA: build and device queries (no kernels), defined in csrc/cuda/runtime.cu.
//
// Plain declarations only (no <cuda_runtime.h>): csrc/bind/cuda_*.cpp is compiled by the host compiler.
#pragma once

namespace slim {

// Comma-separated __CUDA_ARCH_LIST__ the .cu files were compiled for (e.g. "800,860,890,900"),
// or "" when unknown.
const char* cuda_compiled_archs();

// cudaGetDeviceCount; 0 (never throws) when there is no GPU or driver.
int cuda_device_count();

}  // namespace slim
