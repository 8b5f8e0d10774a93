// slimkernels._C: the kmeans family: kmeans_codebook, the 1-D k-means codebook fit of
// slimkernels.quant.codebook on the CPU (csrc/cpu/kmeans.cpp, slim/kmeans.h).
#include <cstdint>

#include "bind_common.h"
#include "slim/kmeans.h"

namespace slim {
namespace bind {

void bind_kmeans(py::module_& m) {
  m.def(
      "kmeans_codebook",
      [](uintptr_t data, int64_t rows, int64_t cols, int entries, int iters, int restarts, uintptr_t uniforms,
         uintptr_t normal_z, bool keep_zero, uintptr_t codebook, uintptr_t codes, int num_threads,
         uintptr_t code_data, int64_t code_cols) {
        const slim::KmeansArgs a{ptr<const float>(data), rows, cols, entries, iters, restarts, ptr<const double>(uniforms),
                                 ptr<const double>(normal_z), keep_zero, ptr<const float>(code_data), code_cols};
        py::gil_scoped_release nogil;
        slim::kmeans_codebook(a, ptr<float>(codebook), ptr<uint8_t>(codes), num_threads);
      },
      py::arg("data"), py::arg("rows"), py::arg("cols"), py::arg("entries"), py::arg("iters"), py::arg("restarts"),
      py::arg("uniforms"), py::arg("normal_z"), py::arg("keep_zero"), py::arg("codebook"), py::arg("codes"),
      py::arg("num_threads"), py::arg("code_data") = 0, py::arg("code_cols") = 0,
      "One k-means codebook per row of data float32 [rows, cols] -> codebook float32 [rows, entries] "
      "(ascending) and, unless codes is 0, codes uint8 [rows, code_cols] of code_data float32 [rows, code_cols] "
      "(0: data itself, code_cols = cols; e.g. a whole layer fitted on a sample). uniforms float64 [rows, restarts, 2 F - 1] "
      "feed the k-means++ seedings, normal_z float64 [F] = ndtri((j + 1/2) / F); F = entries, or entries - 1 "
      "with keep_zero (an exact 0 entry, the others fitted to the nonzero weights).");
}

}  // namespace bind
}  // namespace slim
