// int8_dynamic_linear: quantize_per_token_int8 into scratch, then int8_mm (see int8_mm_dynamic.h).
#include "slim/int8_mm_dynamic.h"

#include <stdexcept>
#include <string>

#include "slim/int8_mm.h"
#include "slim/scratch.h"

namespace slim {

void int8_dynamic_linear(const Int8DynamicLinearArgs& g, int num_threads, CpuIsa isa, CpuAmx amx) {
  if (g.M < 0 || g.K < 0) throw std::invalid_argument("int8_dynamic_linear: M and K must be >= 0");
  if (g.ldx < g.K) throw std::invalid_argument("int8_dynamic_linear: ldx must be >= K (" + std::to_string(g.K) + ")");
  if (g.act_qmax < 1 || g.act_qmax > 127)
    throw std::invalid_argument("int8_dynamic_linear: act_qmax must be in [1, 127], got " + std::to_string(g.act_qmax));
  if (g.M > 0 && g.K > 0 && !g.x) throw std::invalid_argument("int8_dynamic_linear: x must not be null");
  // Slot 1: int8_mm stages its activations in slot 0 of the same thread.
  const size_t q_bytes = (size_t(g.M) * size_t(g.K) + 63) / 64 * 64;
  auto* q = static_cast<int8_t*>(thread_scratch(1, q_bytes + sizeof(float) * size_t(g.M) + 64));
  auto* scale = reinterpret_cast<float*>(q + q_bytes);
  quantize_per_token_int8(QuantizeArgs{g.x, g.ldx, g.M, g.K, g.x_kind, q, g.K, scale, g.act_qmax}, num_threads, isa);
  static constexpr OutKind kOut[] = {OutKind::kFloat32, OutKind::kFloat16, OutKind::kBFloat16};
  int8_mm(Int8MmArgs{q, g.K, g.packed, g.M, g.N, g.K, g.out, g.ldc, kOut[int(g.x_kind)], scale, g.w_scale, g.bias},
          num_threads, isa, amx);
}

}  // namespace slim
