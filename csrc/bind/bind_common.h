// Shared pybind11 glue for slimkernels._C (csrc/bind/cpu_*.cpp) and slimkernels._C_cuda
// (csrc/bind/cuda_*.cpp). Each op family binds itself in its own file through
// `void slim::bind::bind_<family>(pybind11::module_&)`; the module files csrc/bind_cpu.cpp and
// csrc/bind_cuda.cpp list the families once (an X-macro) and call them.
//
// Compiled by the host C++ compiler only: plain declarations, no CUDA headers.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "slim/quantize_cuda.h"  // FloatKind (the CUDA module's float type names)

namespace slim {
namespace bind {

namespace py = pybind11;

// Pointers cross the boundary as Python ints (tensor.data_ptr(), a stream's cuda_stream).
template <typename T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

// CUDA module: 'float32' | 'float16' | 'bfloat16' -> FloatKind; std::invalid_argument (ValueError)
// naming the op and argument otherwise.
inline FloatKind parse_float_kind(const std::string& s, const char* op = "quantize_per_token_int8",
                                  const char* arg = "x_kind") {
  if (s == "float32") return FloatKind::Float32;
  if (s == "float16") return FloatKind::Float16;
  if (s == "bfloat16") return FloatKind::BFloat16;
  throw std::invalid_argument(std::string("slimkernels CUDA: ") + op + ": " + arg +
                              " must be 'float32', 'float16' or 'bfloat16', got '" + s + "'");
}

}  // namespace bind
}  // namespace slim
