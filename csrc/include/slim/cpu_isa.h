// CPU ISA tiers for the native CPU kernels: what was compiled in and what this CPU can run.
#pragma once
#include <string>
#include <vector>

namespace slim {

// kAvx512Bf16: the avx512_vnni tier plus AVX512-BF16 (vdpbf16ps). Only the weight-only kernels
// (lowbit, dequant_int8) have such a path, and only when asked by name: best_isa() and
// supported_isas() never return it (the other families have no kernels for it).
enum class CpuIsa { kScalar = 0, kAvx2 = 1, kAvx512Vnni = 2, kAvx512Bf16 = 3 };

const char* isa_name(CpuIsa isa);
// True when the tier is compiled in (x86 builds) and this CPU + OS can run it.
bool isa_supported(CpuIsa isa);
// Best supported tier.
CpuIsa best_isa();
// All supported tiers, best first.
std::vector<CpuIsa> supported_isas();
// "" -> best_isa(); otherwise the named tier ("avx512_bf16" included), which must be supported (std::invalid_argument if not).
CpuIsa resolve_isa(const std::string& name, const char* arg_name = "isa");

// AMX-BF16 tile instructions (Sapphire Rapids and later), an extra of the avx512_vnni tier: compiled
// in, supported by the CPU, tile state enabled by the OS, and (Linux) the process's permission to use
// it, requested on the first call. Only the low-bit kernels use it (lowbit_amx.cpp).
bool amx_bf16_supported();
// AMX-INT8 tiles (tdpbssd), likewise: the int8 GEMM's path for larger M (int8_mm_amx.cpp).
bool amx_int8_supported();

// When a kernel family with an AMX path takes it (the cpu_amx switch): kAuto from the family's
// measured row threshold on, kOn at every M (an error where AMX is not usable), kOff never.
enum class CpuAmx { kOff = 0, kOn = 1, kAuto = 2 };
// "auto" (or "") | "on" | "off"; std::invalid_argument naming arg_name otherwise.
CpuAmx parse_cpu_amx(const std::string& name, const char* arg_name = "amx");

}  // namespace slim
