// slimkernels CUDA: small helpers shared by the .cu files (error checks, cached device queries).
//
// For csrc/cuda/*.cu only: it includes <cuda_runtime.h>, so the bind glue (bind_cuda.cpp and
// bind/cuda_*.cpp: host compiler, no CUDA headers) must not include it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace slim {
namespace cuda_detail {

constexpr int kMaxDevices = 64;

// Throws std::runtime_error("slimkernels CUDA: <what>: <cudaGetErrorString>") on failure and
// clears the (non-sticky) error so later calls are not blamed for it.
inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    throw std::runtime_error(std::string("slimkernels CUDA: ") + what + ": " + cudaGetErrorString(err));
  }
}

inline int current_device() {
  int dev = -1;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  if (dev < 0 || dev >= kMaxDevices) throw std::runtime_error("slimkernels CUDA: device index out of range");
  return dev;
}

// Multiprocessor count of `dev`, cached (a benign race: every thread computes the same value).
inline int sm_count(int dev) {
  static std::atomic<int> cache[kMaxDevices];
  int v = cache[dev].load(std::memory_order_relaxed);
  if (v <= 0) {
    check(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute(SM count)");
    cache[dev].store(v, std::memory_order_relaxed);
  }
  return v;
}

inline void throw_invalid(const std::string& msg) { throw std::invalid_argument("slimkernels CUDA: " + msg); }

inline bool aligned_to(const void* p, std::uintptr_t bytes) {
  return (reinterpret_cast<std::uintptr_t>(p) % bytes) == 0;
}

// float32 <-> the activation types, rounding to nearest even.
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

}  // namespace cuda_detail
}  // namespace slim
