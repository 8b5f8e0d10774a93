// slimkernels._C: the hashed family (HashedNets weight sharing): hashed_linear, hashed_weight and
// hashed_bucket_grad (csrc/cpu/hashed*.cpp; the hash is specified in slim/hashed.h).
#include <cstdint>
#include <string>

#include "bind_common.h"
#include "slim/cpu_isa.h"
#include "slim/hashed.h"

namespace slim {
namespace bind {
namespace {

slim::HashedArgs weight(uintptr_t buckets, int64_t num_buckets, int64_t seed, int64_t N, int64_t K) {
  return {ptr<const float>(buckets), num_buckets, seed, N, K};
}

}  // namespace

void bind_hashed(py::module_& m) {
  m.def(
      "hashed_linear",
      [](uintptr_t x, int64_t ldx, uintptr_t buckets, int64_t num_buckets, int64_t seed, uintptr_t bias, uintptr_t y,
         int64_t ldy, int64_t M, int64_t N, int64_t K, int num_threads, const std::string& isa) {
        const slim::CpuIsa i = slim::resolve_isa(isa, "isa");
        const slim::HashedArgs w = weight(buckets, num_buckets, seed, N, K);
        py::gil_scoped_release nogil;
        slim::hashed_linear(w, ptr<const float>(x), ldx, ptr<const float>(bias), ptr<float>(y), ldy, M, num_threads, i);
      },
      py::arg("x"), py::arg("ldx"), py::arg("buckets"), py::arg("num_buckets"), py::arg("seed"), py::arg("bias"),
      py::arg("y"), py::arg("ldy"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("num_threads"),
      py::arg("isa") = "",
      "y[M, N] = x[M, K] @ W.T + bias[n] (0 = none), all float32, W the hashed virtual weight of buckets "
      "float32 [num_buckets] under seed (slim/hashed.h), never materialized.");
  m.def(
      "hashed_weight",
      [](uintptr_t buckets, int64_t num_buckets, int64_t seed, uintptr_t out, int64_t N, int64_t K, int num_threads,
         const std::string& isa) {
        const slim::CpuIsa i = slim::resolve_isa(isa, "isa");
        const slim::HashedArgs w = weight(buckets, num_buckets, seed, N, K);
        py::gil_scoped_release nogil;
        slim::hashed_weight(w, ptr<float>(out), num_threads, i);
      },
      py::arg("buckets"), py::arg("num_buckets"), py::arg("seed"), py::arg("out"), py::arg("N"), py::arg("K"),
      py::arg("num_threads"), py::arg("isa") = "", "out float32 [N, K] = the hashed virtual weight.");
  m.def(
      "hashed_bucket_grad",
      [](uintptr_t grad_w, int64_t num_buckets, int64_t seed, uintptr_t grad_buckets, int64_t N, int64_t K,
         int num_threads) {
        const slim::HashedArgs w = weight(0, num_buckets, seed, N, K);
        py::gil_scoped_release nogil;
        slim::hashed_bucket_grad(w, ptr<const float>(grad_w), ptr<float>(grad_buckets), num_threads);
      },
      py::arg("grad_w"), py::arg("num_buckets"), py::arg("seed"), py::arg("grad_buckets"), py::arg("N"), py::arg("K"),
      py::arg("num_threads"),
      "grad_buckets float32 [num_buckets] = sum of sign * grad_w[n, k] over the entries each bucket feeds "
      "(grad_w float32 [N, K]).");
}

}  // namespace bind
}  // namespace slim
