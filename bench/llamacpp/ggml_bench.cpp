// A stack of L [N, K] weight matrices in one ggml type (Q4_0, Q8_0, Q4_K, F32, ...), multiplied by
// the same x [M, K] through ggml's CPU backend: what llama.cpp runs for a linear layer. Built as a
// shared library and driven from bench/llamacpp_compare.py (ctypes), so its timings interleave with
// ours and FBGEMM's in one process.
//
// Weights go into the CPU backend's CPU_REPACK buffer type when it has one (the repacked Q4_0/Q8_0
// layouts llama.cpp itself uses on AVX2/AVX-512 CPUs), else into the plain CPU buffer: repack=0 forces
// the plain layout.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

namespace {

struct Stack {
  ggml_backend_t backend = nullptr;
  ggml_context* weights_ctx = nullptr;
  ggml_context* graph_ctx = nullptr;
  ggml_backend_buffer_t weights_buf = nullptr;
  ggml_gallocr_t galloc = nullptr;
  ggml_cgraph* graph = nullptr;
  ggml_tensor* x = nullptr;
  std::vector<ggml_tensor*> outs;
  bool repacked = false;
};

// The extra buffer type whose name contains `want` ("REPACK": the AVX2/AVX-512 repacked Q4_0/Q8_0 layouts
// llama.cpp uses on most x86 CPUs; "AMX": its AMX layouts), or null.
ggml_backend_buffer_type_t extra_buffer_type(ggml_backend_t backend, const char* want) {
  ggml_backend_dev_t dev = ggml_backend_get_device(backend);
  ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
  auto get_extra = reinterpret_cast<ggml_backend_dev_get_extra_bufts_t>(
      ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts"));
  if (!get_extra) return nullptr;
  for (ggml_backend_buffer_type_t* extra = get_extra(dev); extra && *extra; ++extra)
    if (std::strstr(ggml_backend_buft_name(*extra), want)) return *extra;
  return nullptr;
}

void quiet(ggml_log_level level, const char* text, void*) {
  if (level == GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
}

}  // namespace

extern "C" {

// weights: float32 [layers, N, K], quantized here by ggml's own quantizer. Returns nullptr on failure.
void* gb_create(int type, int64_t layers, int64_t n, int64_t k, int64_t m, const float* weights, int threads,
                int repack) {
  ggml_log_set(quiet, nullptr);  // no line per repacked tensor
  auto* s = new Stack;
  s->backend = ggml_backend_cpu_init();
  if (!s->backend) return nullptr;
  ggml_backend_cpu_set_n_threads(s->backend, threads);

  ggml_init_params wp = {ggml_tensor_overhead() * (layers + 1), nullptr, true};
  s->weights_ctx = ggml_init(wp);
  std::vector<ggml_tensor*> ws;
  for (int64_t l = 0; l < layers; ++l) ws.push_back(ggml_new_tensor_2d(s->weights_ctx, ggml_type(type), k, n));
  // repack 1: the CPU_REPACK layouts; 2: AMX (crashed here at M > 1 outside llama.cpp's scheduler); 0: plain.
  ggml_backend_buffer_type_t buft =
      repack == 1 ? extra_buffer_type(s->backend, "REPACK") : repack == 2 ? extra_buffer_type(s->backend, "AMX") : nullptr;
  if (buft) s->weights_buf = ggml_backend_alloc_ctx_tensors_from_buft(s->weights_ctx, buft);
  s->repacked = s->weights_buf != nullptr;
  if (!s->weights_buf)
    s->weights_buf = ggml_backend_alloc_ctx_tensors_from_buft(s->weights_ctx, ggml_backend_get_default_buffer_type(s->backend));
  if (!s->weights_buf) return nullptr;
  std::vector<uint8_t> bytes(ggml_row_size(ggml_type(type), k) * n);
  for (int64_t l = 0; l < layers; ++l) {
    const float* src = weights + l * n * k;
    if (type == GGML_TYPE_F32) std::memcpy(bytes.data(), src, n * k * sizeof(float));
    else ggml_quantize_chunk(ggml_type(type), src, bytes.data(), 0, n, k, nullptr);
    ggml_backend_tensor_set(ws[l], bytes.data(), 0, bytes.size());  // the repack buffer repacks here
  }

  ggml_init_params gp = {ggml_tensor_overhead() * (2 * layers + 8) + ggml_graph_overhead(), nullptr, true};
  s->graph_ctx = ggml_init(gp);
  s->x = ggml_new_tensor_2d(s->graph_ctx, GGML_TYPE_F32, k, m);
  ggml_set_input(s->x);
  s->graph = ggml_new_graph(s->graph_ctx);
  for (int64_t l = 0; l < layers; ++l) {
    ggml_tensor* y = ggml_mul_mat(s->graph_ctx, ws[l], s->x);  // [N, M]
    ggml_set_output(y);
    s->outs.push_back(y);
    ggml_build_forward_expand(s->graph, y);
  }
  s->galloc = ggml_gallocr_new(ggml_backend_get_default_buffer_type(s->backend));
  if (!ggml_gallocr_alloc_graph(s->galloc, s->graph)) return nullptr;
  return s;
}

int gb_repacked(void* handle) { return static_cast<Stack*>(handle)->repacked ? 1 : 0; }

// One pass through the stack: x float32 [M, K] in, layer 0's output float32 [M, N] out (may be null).
int gb_run(void* handle, const float* x, float* y0) {
  auto* s = static_cast<Stack*>(handle);
  ggml_backend_tensor_set(s->x, x, 0, ggml_nbytes(s->x));
  if (ggml_backend_graph_compute(s->backend, s->graph) != GGML_STATUS_SUCCESS) return 1;
  if (y0) ggml_backend_tensor_get(s->outs[0], y0, 0, ggml_nbytes(s->outs[0]));
  return 0;
}

void gb_free(void* handle) {
  auto* s = static_cast<Stack*>(handle);
  ggml_gallocr_free(s->galloc);
  ggml_backend_buffer_free(s->weights_buf);
  ggml_free(s->graph_ctx);
  ggml_free(s->weights_ctx);
  ggml_backend_free(s->backend);
  delete s;
}

}  // extern "C"
