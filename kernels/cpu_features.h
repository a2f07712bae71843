// The one place that decides which instruction set the kernels use.
#pragma once

#include <string_view>
#include <vector>

namespace w8a8::kernels {

enum class Isa {
  kScalar,      // Plain C++ reference.
  kAvx2,        // AVX2 + FMA.
  kAvx512Vnni,  // AVX-512 F/BW/VL with VNNI int8 dot products.
};

// The best ISA this CPU supports, lowered by the W8A8_ISA environment variable
// ("scalar", "avx2", "avx512vnni") for tests and benchmarks. Decided once per process.
Isa ActiveIsa();
std::string_view IsaName(Isa isa);
// Whether the CPU itself supports `isa`, ignoring W8A8_ISA.
bool CpuSupports(Isa isa);
// Every ISA this CPU supports, from kScalar up, ignoring W8A8_ISA. Tests run each of them.
std::vector<Isa> SupportedIsas();
// Whether the kernels may run AMX BF16 tile instructions: ActiveIsa() is kAvx512Vnni (so
// W8A8_ISA can turn AMX off), the CPU has AMX-TILE and AMX-BF16, and Linux granted the process
// the tile data state (arch_prctl ARCH_REQ_XCOMP_PERM, which the first call requests).
// Decided once.
bool AmxBf16Usable();

}  // namespace w8a8::kernels
