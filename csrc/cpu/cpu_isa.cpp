// Run-time CPU feature detection for the ISA tiers of the native CPU kernels.
#include "slim/cpu_isa.h"

#include <stdexcept>

#ifdef SLIM_X86
#include <cpuid.h>
#endif
#if defined(SLIM_X86) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace slim {

const char* isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512Vnni: return "avx512_vnni";
    case CpuIsa::kAvx512Bf16: return "avx512_bf16";
    case CpuIsa::kAvx2: return "avx2";
    default: return "scalar";
  }
}

#ifdef SLIM_X86
namespace {
// XCR0: which register states the OS saves on context switch. CPUID alone does not say whether
// ymm/zmm state is enabled; without it AVX instructions fault.
unsigned long long xcr0() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return 0;  // no OSXSAVE
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<unsigned long long>(hi) << 32) | lo;
}
bool detect_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
         (xcr0() & 0x6) == 0x6;  // SSE + AVX state
}
bool detect_avx512_vnni() {
  __builtin_cpu_init();
  return detect_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vnni") && (xcr0() & 0xE6) == 0xE6;  // + opmask, zmm0-15 hi, zmm16-31
}
bool detect_avx512_bf16() {
  unsigned a, b, c, d;
  if (!detect_avx512_vnni() || !__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
  return (a & (1u << 5)) != 0;  // CPUID.(7,1):EAX[5] AVX512-BF16
}
// AMX tiles usable: CPUID AMX-TILE plus `feature_bit` of CPUID.(7,0):EDX, the tile state enabled by
// the OS, and (Linux) this process's permission.
bool detect_amx(unsigned feature_bit) {
  unsigned a, b, c, d;
  if (!detect_avx512_vnni() || !__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  if (!(d & (1u << feature_bit)) || !(d & (1u << 24))) return false;  // the feature, AMX-TILE
  if ((xcr0() & 0x60000) != 0x60000) return false;                     // XTILECFG + XTILEDATA state
#if defined(__linux__)
  // Linux hands out the 8 KB of tile state only to processes that ask (ARCH_REQ_XCOMP_PERM for
  // XFEATURE_XTILEDATA); without it the first tile instruction kills the process. Asking twice is harmless.
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}
bool detect_amx_bf16() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 1, &a, &b, &c, &d) || !(a & (1u << 5))) return false;  // AVX512-BF16
  return detect_amx(22);                                                             // AMX-BF16
}
bool detect_amx_int8() { return detect_amx(25); }  // AMX-INT8
}  // namespace
#endif

bool amx_bf16_supported() {
#ifdef SLIM_X86
  static const bool ok = detect_amx_bf16();
  return ok;
#else
  return false;
#endif
}

bool amx_int8_supported() {
#ifdef SLIM_X86
  static const bool ok = detect_amx_int8();
  return ok;
#else
  return false;
#endif
}

CpuAmx parse_cpu_amx(const std::string& name, const char* arg_name) {
  if (name == "auto" || name.empty()) return CpuAmx::kAuto;
  if (name == "on") return CpuAmx::kOn;
  if (name == "off") return CpuAmx::kOff;
  throw std::invalid_argument(std::string(arg_name) + ": expected 'auto', 'on' or 'off', got '" + name + "'");
}

bool isa_supported(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar: return true;
#ifdef SLIM_X86
    case CpuIsa::kAvx2: { static const bool ok = detect_avx2(); return ok; }
    case CpuIsa::kAvx512Vnni: { static const bool ok = detect_avx512_vnni(); return ok; }
#endif
#ifdef SLIM_AVX512_BF16
    case CpuIsa::kAvx512Bf16: { static const bool ok = detect_avx512_bf16(); return ok; }
#endif
    default: return false;
  }
}

CpuIsa best_isa() {
  if (isa_supported(CpuIsa::kAvx512Vnni)) return CpuIsa::kAvx512Vnni;
  if (isa_supported(CpuIsa::kAvx2)) return CpuIsa::kAvx2;
  return CpuIsa::kScalar;
}

std::vector<CpuIsa> supported_isas() {
  std::vector<CpuIsa> v;
  for (CpuIsa i : {CpuIsa::kAvx512Vnni, CpuIsa::kAvx2, CpuIsa::kScalar})
    if (isa_supported(i)) v.push_back(i);
  return v;
}

CpuIsa resolve_isa(const std::string& name, const char* arg_name) {
  if (name.empty()) return best_isa();
  for (CpuIsa i : {CpuIsa::kAvx512Bf16, CpuIsa::kAvx512Vnni, CpuIsa::kAvx2, CpuIsa::kScalar}) {
    if (name == isa_name(i)) {
      if (!isa_supported(i))
        throw std::invalid_argument(std::string(arg_name) + ": ISA '" + name +
                                    "' is not supported by this build or CPU (best is '" + isa_name(best_isa()) + "')");
      return i;
    }
  }
  throw std::invalid_argument(std::string(arg_name) + ": unknown ISA '" + name +
                              "', expected one of 'avx512_bf16' (weight-only kernels), 'avx512_vnni', 'avx2', 'scalar' or ''");
}

}  // namespace slim
