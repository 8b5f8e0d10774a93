// pybind11 module slimkernels._C: the native CPU kernels over raw pointers (Python ints from
// tensor.data_ptr()), sizes and strides in elements. No libtorch. std::invalid_argument -> ValueError.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "slim/cpu_isa.h"
#include "slim/dequant_int8.h"
#include "slim/dynamic_linear.h"
#include "slim/int8_gemm.h"
#include "slim/lowbit_gemm.h"
#include "slim/quantize.h"
#include "slim/thread_pool.h"

namespace py = pybind11;

namespace {

template <typename T>
T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

void int8_gemm(uintptr_t a, int64_t lda, uintptr_t packed, int64_t M, int64_t N, int64_t K, uintptr_t out,
               int64_t ldc, const std::string& out_kind, uintptr_t a_scale, uintptr_t b_scale, uintptr_t bias,
               int num_threads, const std::string& isa) {
  slim::Int8GemmArgs g{ptr<const int8_t>(a), lda, ptr<const int8_t>(packed), M, N, K, ptr<void>(out), ldc,
                       slim::parse_out_kind(out_kind, "out_kind"), ptr<const float>(a_scale),
                       ptr<const float>(b_scale), ptr<const float>(bias)};
  const slim::CpuIsa i = slim::resolve_isa(isa, "isa");
  py::gil_scoped_release nogil;  // long-running, touches no Python objects
  slim::int8_gemm(g, num_threads, i);
}

void quantize_per_token_int8(uintptr_t x, int64_t ldx, int64_t M, int64_t K, const std::string& x_kind, uintptr_t q,
                             int64_t ldq, uintptr_t scale, int num_threads, const std::string& isa) {
  slim::QuantizeArgs g{ptr<const void>(x), ldx, M, K, slim::parse_in_kind(x_kind, "x_kind"), ptr<int8_t>(q), ldq,
                       ptr<float>(scale)};
  const slim::CpuIsa i = slim::resolve_isa(isa, "isa");
  py::gil_scoped_release nogil;
  slim::quantize_per_token_int8(g, num_threads, i);
}

void dequant_mm_int8(uintptr_t x, int64_t ldx, const std::string& x_kind, uintptr_t w, int64_t ldw, uintptr_t scale,
                     uintptr_t bias, uintptr_t y, int64_t ldy, int64_t M, int64_t N, int64_t K, int num_threads,
                     const std::string& isa) {
  slim::DequantInt8Args g{ptr<const void>(x), ldx, slim::parse_in_kind(x_kind, "x_kind"), ptr<const int8_t>(w), ldw,
                          ptr<const float>(scale), ptr<const float>(bias), ptr<void>(y), ldy, M, N, K};
  const slim::CpuIsa i = slim::resolve_isa(isa, "isa");
  py::gil_scoped_release nogil;
  slim::dequant_mm_int8(g, num_threads, i);
}

void int8_dynamic_linear(uintptr_t x, int64_t ldx, const std::string& x_kind, uintptr_t packed, uintptr_t w_scale,
                         uintptr_t bias, int64_t M, int64_t N, int64_t K, uintptr_t out, int64_t ldc, int num_threads,
                         const std::string& isa) {
  slim::DynamicLinearArgs g{ptr<const void>(x), ldx, slim::parse_in_kind(x_kind, "x_kind"), ptr<const int8_t>(packed),
                            ptr<const float>(w_scale), ptr<const float>(bias), M, N, K, ptr<void>(out), ldc};
  const slim::CpuIsa i = slim::resolve_isa(isa, "isa");
  py::gil_scoped_release nogil;
  slim::int8_dynamic_linear(g, num_threads, i);
}

void lowbit_gemm(uintptr_t x, int64_t ldx, const std::string& x_kind, uintptr_t codes, int bits,
                 const std::string& lut_kind, uintptr_t scales, uintptr_t zeros, int64_t group_size, uintptr_t codebook,
                 int64_t codebook_rows, uintptr_t bias, uintptr_t y, int64_t ldy, int64_t M, int64_t N, int64_t K,
                 int num_threads, const std::string& isa, const std::string& amx) {
  slim::LowbitGemmArgs g{ptr<const void>(x), ldx, slim::parse_in_kind(x_kind, "x_kind"), ptr<const uint8_t>(codes),
                         bits, slim::parse_lut_kind(lut_kind, "lut_kind"), ptr<const float>(scales),
                         ptr<const uint8_t>(zeros), group_size, ptr<const float>(codebook), codebook_rows,
                         ptr<const float>(bias), ptr<void>(y), ldy, M, N, K};
  const slim::CpuIsa i = slim::resolve_isa(isa, "isa");
  const slim::LowbitAmx a = slim::parse_lowbit_amx(amx, "amx");
  py::gil_scoped_release nogil;
  slim::lowbit_gemm(g, num_threads, i, a);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "slimkernels native CPU kernels (raw pointers, no libtorch)";
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
  m.def("int8_gemm", &int8_gemm, py::arg("a"), py::arg("lda"), py::arg("packed"), py::arg("M"), py::arg("N"),
        py::arg("K"), py::arg("out"), py::arg("ldc"), py::arg("out_kind"), py::arg("a_scale"), py::arg("b_scale"),
        py::arg("bias"), py::arg("num_threads"), py::arg("isa") = "",
        "out[M, N] = epilogue(int8 a[M, K] @ b[N, K].T) with b in the pack_int8_cpu layout; exact int32 "
        "accumulation; out_kind 'int32' | 'float32' | 'float16' | 'bfloat16' (float: ((acc * a_scale[m]) * "
        "b_scale[n]) + bias[n], bias 0 = none).");
  m.def("int8_dynamic_linear", &int8_dynamic_linear, py::arg("x"), py::arg("ldx"), py::arg("x_kind"), py::arg("packed"),
        py::arg("w_scale"), py::arg("bias"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("out"), py::arg("ldc"),
        py::arg("num_threads"), py::arg("isa") = "",
        "W8A8 linear: per-token quantize of float x [M, K] (scratch), then int8_gemm against the packed weight; "
        "out [M, N] in x's float kind.");
  m.def("quantize_per_token_int8", &quantize_per_token_int8, py::arg("x"), py::arg("ldx"), py::arg("M"),
        py::arg("K"), py::arg("x_kind"), py::arg("q"), py::arg("ldq"), py::arg("scale"), py::arg("num_threads"),
        py::arg("isa") = "",
        "Per-row symmetric int8: scale = amax / 127 (NaN for non-finite rows, 1 for zero rows), q = "
        "clamp(rint(x / scale), -127, 127).");
  m.def("dequant_mm_int8", &dequant_mm_int8, py::arg("x"), py::arg("ldx"), py::arg("x_kind"), py::arg("w"),
        py::arg("ldw"), py::arg("scale"), py::arg("bias"), py::arg("y"), py::arg("ldy"), py::arg("M"), py::arg("N"),
        py::arg("K"), py::arg("num_threads"), py::arg("isa") = "",
        "W8A16: y[M, N] = (x[M, K] @ w[N, K].T) * scale[n] + bias[n] (bias 0 = none); x and y of x_kind "
        "'float32' | 'float16' | 'bfloat16', w int8 row-major, float32 accumulation, RNE output.");
  m.def("lowbit_gemm", &lowbit_gemm, py::arg("x"), py::arg("ldx"), py::arg("x_kind"), py::arg("codes"),
        py::arg("bits"), py::arg("lut_kind"), py::arg("scales"), py::arg("zeros"), py::arg("group_size"),
        py::arg("codebook"), py::arg("codebook_rows"), py::arg("bias"), py::arg("y"), py::arg("ldy"), py::arg("M"),
        py::arg("N"), py::arg("K"), py::arg("num_threads"), py::arg("isa") = "", py::arg("amx") = "auto",
        "Weight-only low-bit: y[M, N] = x[M, K] @ W.T + bias[n] (bias 0 = none) with W in the canonical "
        "packed layouts of slimkernels.quant.lowbit: lut_kind 'int4' (codes uint8 [N, ceil(K/2)], scales "
        "float32 [N, K/group_size], zeros uint8 or 0 = zero point 8; w = (q - z) * s) or 'codebook' "
        "(bits-bit codes [N, ceil(K*bits/8)], codebook float32 [codebook_rows = 1 or N, 2^bits]). x and y "
        "of x_kind 'float32' | 'float16' | 'bfloat16', float32 accumulation, RNE output. amx: 'auto' (AMX-BF16 "
        "tiles from 6 rows of x for int4 and 16 for 2- and 4-bit codebooks, where supported), 'on' (at any "
        "M; an error where unsupported) or 'off'.");
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
}
