// CPU ISA tiers for the native CPU kernels: what was compiled in and what this CPU can run.
#pragma once
#include <string>
#include <vector>

namespace slim {

enum class CpuIsa { kScalar = 0, kAvx2 = 1, kAvx512Vnni = 2 };

const char* isa_name(CpuIsa isa);
// True when the tier is compiled in (x86 builds) and this CPU + OS can run it.
bool isa_supported(CpuIsa isa);
// Best supported tier.
CpuIsa best_isa();
// All supported tiers, best first.
std::vector<CpuIsa> supported_isas();
// "" -> best_isa(); otherwise the named tier, which must be supported (std::invalid_argument if not).
CpuIsa resolve_isa(const std::string& name, const char* arg_name = "isa");

// AMX-BF16 tile instructions (Sapphire Rapids and later), an extra of the avx512_vnni tier: compiled
// in, supported by the CPU, tile state enabled by the OS, and (Linux) the process's permission to use
// it, requested on the first call. Only the low-bit kernels use it (lowbit_amx.cpp).
bool amx_bf16_supported();

}  // namespace slim
