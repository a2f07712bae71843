#include "kernels/cpu_features.h"

#include <asm/prctl.h>
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

// Linux headers before 5.16 lack the request for extended state, such as AMX tile data.
#ifndef ARCH_REQ_XCOMP_PERM
#define ARCH_REQ_XCOMP_PERM 0x1023
#endif

#include <cstdio>
#include <cstdlib>
#include <string>

namespace w8a8::kernels {
namespace {

Isa DetectIsa() {
  Isa best = Isa::kScalar;
  if (CpuSupports(Isa::kAvx512Vnni)) {
    best = Isa::kAvx512Vnni;
  } else if (CpuSupports(Isa::kAvx2)) {
    best = Isa::kAvx2;
  }
  const char* requested = std::getenv("W8A8_ISA");
  if (requested == nullptr || *requested == '\0') return best;
  const std::string name = requested;
  Isa wanted = best;
  if (name == "scalar") {
    wanted = Isa::kScalar;
  } else if (name == "avx2") {
    wanted = Isa::kAvx2;
  } else if (name == "avx512vnni") {
    wanted = Isa::kAvx512Vnni;
  } else {
    std::fprintf(stderr, "W8A8_ISA=%s is not one of scalar, avx2, avx512vnni; using %s.\n",
                 requested, std::string(IsaName(best)).c_str());
    return best;
  }
  if (!CpuSupports(wanted)) {
    std::fprintf(stderr, "W8A8_ISA=%s is not supported by this CPU; using %s.\n", requested,
                 std::string(IsaName(best)).c_str());
    return best;
  }
  return wanted;
}

bool RequestAmxBf16() {
  unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) == 0) return false;
  // CPUID leaf 7, subleaf 0, EDX: bit 22 is AMX-BF16 and bit 24 AMX-TILE.
  const bool amx_bf16 = ((edx >> 22) & 1u) != 0;
  const bool amx_tile = ((edx >> 24) & 1u) != 0;
  if (!amx_bf16 || !amx_tile) return false;
  // Feature number 18 is the tile data state. Kernels before Linux 5.16 lack the request and
  // return an error, and so do kernels that do not enable AMX.
  constexpr long kXfeatureTileData = 18;
  return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, kXfeatureTileData) == 0;
}

}  // namespace

bool AmxBf16Usable() {
  static const bool usable = ActiveIsa() == Isa::kAvx512Vnni && RequestAmxBf16();
  return usable;
}

bool CpuSupports(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return true;
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::kAvx512Vnni:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  }
  return false;
}

std::vector<Isa> SupportedIsas() {
  std::vector<Isa> isas;
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512Vnni}) {
    if (CpuSupports(isa)) isas.push_back(isa);
  }
  return isas;
}

Isa ActiveIsa() {
  static const Isa isa = DetectIsa();
  return isa;
}

std::string_view IsaName(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return "scalar";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512Vnni:
      return "avx512vnni";
  }
  return "unknown";
}

}  // namespace w8a8::kernels
