#include "tools/bench_machine.h"

#include <immintrin.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "kernels/cpu_features.h"
#include "kernels/weight_memory.h"
#include "tools/bench_common.h"

namespace w8a8::tools {
namespace {

constexpr int64_t kMiB = int64_t{1} << 20;
constexpr int64_t kGiB = int64_t{1} << 30;

// Bytes that one read-loop iteration loads from each stream: four 64-byte loads.
constexpr int64_t kBytesPerStreamStep = 256;
// How far ahead of each stream the software-prefetch patterns prefetch: 8 loop iterations.
// NOTE: the distance is a fixed choice, not tuned per CPU.
constexpr int64_t kPrefetchDistance = 2048;
constexpr int kStreamCounts[] = {1, 2, 4};

// Bytes of the buffer that one timed read covers, split among the threads.
constexpr int64_t kChunkBytes = 16 * kMiB;
// Chunks that each pattern reads per round (256 MiB), so that rounds are short and the
// patterns interleave finely.
constexpr int kChunksPerTurn = 16;
// Minimum rounds of a read measurement. Each round runs every pattern once.
constexpr int kMinReadRounds = 3;
// MeasureMachine reads for this many times `seconds`, because its one figure stands for many
// patterns and thread counts.
constexpr double kReadSecondsFactor = 10.0;
constexpr int kMinComputeRuns = 3;

// ---------------------------------------------------------------------------------------------
// Read probes.

// Four 64-byte loads into registers that nothing reads back. The asm keeps the compiler from
// dropping them, and the destination registers carry no dependency from one load to the next.
__attribute__((target("avx512f"))) inline void Load256(const uint8_t* p) {
  asm volatile(
      "vmovdqa64 (%0), %%zmm16\n\t"
      "vmovdqa64 64(%0), %%zmm17\n\t"
      "vmovdqa64 128(%0), %%zmm18\n\t"
      "vmovdqa64 192(%0), %%zmm19\n\t"
      :
      : "r"(p)
      : "xmm16", "xmm17", "xmm18", "xmm19");
}

// Reads `bytes` at `data` (a multiple of kStreams * kBytesPerStreamStep) as kStreams
// consecutive parts read side by side.
template <int kStreams, bool kPrefetch>
__attribute__((target("avx512f"))) void ReadStreams(const uint8_t* data, int64_t bytes) {
  const int64_t part = bytes / kStreams;
  for (int64_t offset = 0; offset < part; offset += kBytesPerStreamStep) {
    for (int stream = 0; stream < kStreams; ++stream) {
      const uint8_t* p = data + stream * part + offset;
      if constexpr (kPrefetch) {
        // One prefetch per 64-byte line. A prefetch past the end of the buffer does not fault.
        for (int64_t line = 0; line < kBytesPerStreamStep; line += 64) {
          _mm_prefetch(p + kPrefetchDistance + line, _MM_HINT_T0);
        }
      }
      Load256(p);
    }
  }
}

void ReadSlice(const ReadPattern& pattern, const uint8_t* data, int64_t bytes) {
  switch (pattern.streams * 2 + (pattern.prefetch ? 1 : 0)) {
    case 2: return ReadStreams<1, false>(data, bytes);
    case 3: return ReadStreams<1, true>(data, bytes);
    case 4: return ReadStreams<2, false>(data, bytes);
    case 5: return ReadStreams<2, true>(data, bytes);
    case 8: return ReadStreams<4, false>(data, bytes);
    case 9: return ReadStreams<4, true>(data, bytes);
    default: std::abort();  // Only kStreamCounts are built.
  }
}

// A buffer of DramResidentBytes() whose pages are touched, so that reads measure DRAM and not
// page faults. It comes from AllocateWeightBytes like the model's weight buffers, on
// transparent huge pages where Linux grants them, so that the ceiling is one that weight reads
// can reach. Owned by one measurement; freed on destruction.
class ReadBuffer {
 public:
  ReadBuffer() : bytes_(DramResidentBytes()) {
    try {
      data_ = static_cast<uint8_t*>(kernels::AllocateWeightBytes(static_cast<size_t>(bytes_)));
    } catch (const std::bad_alloc&) {
      std::fprintf(stderr,
                   "w8a8 bench: failed to allocate the %lld-byte read buffer, so read bandwidth "
                   "is not measured. Free memory or run on a larger machine.\n",
                   static_cast<long long>(bytes_));
      bytes_ = 0;
      return;
    }
    uint8_t* data = data_;
    const int64_t bytes = bytes_;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < bytes; i += 4096) {
      std::fill(data + i, data + std::min(i + 4096, bytes), uint8_t{1});
    }
  }
  ~ReadBuffer() {
    if (data_ != nullptr) kernels::FreeWeightBytes(data_, static_cast<size_t>(bytes_));
  }
  ReadBuffer(const ReadBuffer&) = delete;
  ReadBuffer& operator=(const ReadBuffer&) = delete;

  int64_t bytes() const { return bytes_; }

  // Reads kChunksPerTurn chunks of about kChunkBytes with `pattern`, one parallel region per
  // chunk, and appends each chunk's rate in GB/s to `rates`. The chunks continue where the
  // previous call stopped and wrap around the buffer, so every chunk was last read at least a
  // buffer (2 x L3) ago and comes from DRAM. Timing chunks instead of whole passes keeps the
  // interruptions by other processes from hiding the rate of the uninterrupted chunks, and a
  // chunk is about the size of the largest int8 weight matrix that the kernel suite times.
  void ReadChunks(const ReadPattern& pattern, std::vector<double>& rates) {
    const int64_t granule = int64_t{pattern.streams} * kBytesPerStreamStep;
    const int64_t slice = kChunkBytes / pattern.threads / granule * granule;
    const int64_t chunk = slice * pattern.threads;
    for (int turn = 0; turn < kChunksPerTurn; ++turn) {
      if (cursor_ + chunk > bytes_) cursor_ = 0;
      const uint8_t* data = data_ + cursor_;
      cursor_ += chunk;
      const double seconds = TimeOnce([&] {
#pragma omp parallel num_threads(pattern.threads)
        {
          // OpenMP may start fewer threads than requested (OMP_THREAD_LIMIT, OMP_DYNAMIC), and
          // then some threads read more than one slice.
          for (int part = omp_get_thread_num(); part < pattern.threads;
               part += omp_get_num_threads()) {
            ReadSlice(pattern, data + part * slice, slice);
          }
        }
      });
      if (seconds > 0) rates.push_back(static_cast<double>(chunk) / seconds * 1e-9);
    }
  }

 private:
  int64_t bytes_;
  int64_t cursor_ = 0;  // Offset of the next chunk to read.
  uint8_t* data_ = nullptr;
};

std::vector<ReadPattern> PatternsFor(int threads) {
  std::vector<ReadPattern> patterns;
  for (int streams : kStreamCounts) {
    for (bool prefetch : {false, true}) patterns.push_back({threads, streams, prefetch});
  }
  return patterns;
}

// Runs every pattern once per round, at least kMinReadRounds rounds and until `seconds` have
// passed, and returns each pattern's fastest and median chunk rates. Sets `rounds` to the
// rounds run.
std::vector<ReadResult> MeasurePatterns(ReadBuffer& buffer,
                                        const std::vector<ReadPattern>& patterns, double seconds,
                                        int* rounds) {
  std::vector<ReadResult> results;
  for (const ReadPattern& pattern : patterns) results.push_back({pattern, 0.0, 0.0});
  std::vector<std::vector<double>> rates(patterns.size());
  const auto start = std::chrono::steady_clock::now();
  int round = 0;
  for (;; ++round) {
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (round >= kMinReadRounds && elapsed >= seconds) break;
    for (size_t i = 0; i < results.size(); ++i) buffer.ReadChunks(patterns[i], rates[i]);
  }
  for (size_t i = 0; i < results.size(); ++i) {
    // A chunk too short for the clock to time leaves no rate.
    if (rates[i].empty()) continue;
    results[i].gbs = *std::max_element(rates[i].begin(), rates[i].end());
    results[i].median_gbs = Median(rates[i]);
  }
  if (rounds != nullptr) *rounds = round;
  return results;
}

// The best result among those whose thread count satisfies `accept`.
template <typename Accept>
ReadResult BestOf(const std::vector<ReadResult>& results, Accept accept) {
  ReadResult best;
  for (const ReadResult& result : results) {
    if (accept(result.pattern.threads) && result.gbs > best.gbs) best = result;
  }
  return best;
}

// ---------------------------------------------------------------------------------------------
// Compute probes.

// On the Xeon (AVX-512 VNNI, AMX) these probes were written on, one thread ran 4 vpdpbusd
// chains at 0.37 of its peak and 12 chains at the peak. That fits a latency of about 5 cycles
// at 2 instructions per cycle, so at least 10 chains are needed. kChains = 24 leaves a margin,
// and the half-chain probe (12) shows on each run whether the full probe is latency-bound.
constexpr int kChains = 24;
constexpr int kHalfChains = 12;
constexpr int64_t kComputeIterations = int64_t{1} << 17;
constexpr double kMacsPerVpdpbusd = 64;  // 16 int32 lanes x 4 byte products.
constexpr double kFmasPerVfmadd = 16;    // 16 float lanes.

#define W8A8_ZERO(n) "vpxord %%zmm" #n ", %%zmm" #n ", %%zmm" #n "\n\t"
#define W8A8_DOT(n) "vpdpbusd %[b], %[a], %%zmm" #n "\n\t"
#define W8A8_FMA(n) "vfmadd231ps %[b], %[a], %%zmm" #n "\n\t"
#define W8A8_REGS_0_11(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define W8A8_REGS_12_23(X) \
  X(12) X(13) X(14) X(15) X(16) X(17) X(18) X(19) X(20) X(21) X(22) X(23)
#define W8A8_ACCUMULATOR_CLOBBERS                                                             \
  "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",   \
      "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19",       \
      "xmm20", "xmm21", "xmm22", "xmm23", "cc"

// The compute probes run independent accumulator chains in zmm0..zmm23 for `iterations`
// rounds, in one asm block so that the compiler can neither fold the loop nor move the
// accumulators to the stack. The sources stay in two of zmm24..zmm31. Zeroed accumulators
// keep the FP32 chains free of denormals.
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void RunDotProducts(int64_t iterations) {
  const __m512i a = _mm512_set1_epi8(1);
  const __m512i b = _mm512_set1_epi8(2);
  asm volatile(W8A8_REGS_0_11(W8A8_ZERO) W8A8_REGS_12_23(W8A8_ZERO)
               "1:\n\t" W8A8_REGS_0_11(W8A8_DOT) W8A8_REGS_12_23(W8A8_DOT)
               "dec %[n]\n\t"
               "jnz 1b\n\t"
               : [n] "+r"(iterations)
               : [a] "v"(a), [b] "v"(b)
               : W8A8_ACCUMULATOR_CLOBBERS);
}

// The same with kHalfChains chains, to check that kChains is not limited by latency.
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void RunDotProductsHalf(
    int64_t iterations) {
  const __m512i a = _mm512_set1_epi8(1);
  const __m512i b = _mm512_set1_epi8(2);
  asm volatile(W8A8_REGS_0_11(W8A8_ZERO)
               "1:\n\t" W8A8_REGS_0_11(W8A8_DOT)
               "dec %[n]\n\t"
               "jnz 1b\n\t"
               : [n] "+r"(iterations)
               : [a] "v"(a), [b] "v"(b)
               : W8A8_ACCUMULATOR_CLOBBERS);
}

__attribute__((target("avx512f"))) void RunFmas(int64_t iterations) {
  const __m512 a = _mm512_set1_ps(1.0f);
  const __m512 b = _mm512_set1_ps(1e-7f);
  asm volatile(W8A8_REGS_0_11(W8A8_ZERO) W8A8_REGS_12_23(W8A8_ZERO)
               "1:\n\t" W8A8_REGS_0_11(W8A8_FMA) W8A8_REGS_12_23(W8A8_FMA)
               "dec %[n]\n\t"
               "jnz 1b\n\t"
               : [n] "+r"(iterations)
               : [a] "v"(a), [b] "v"(b)
               : W8A8_ACCUMULATOR_CLOBBERS);
}

#undef W8A8_ZERO
#undef W8A8_DOT
#undef W8A8_FMA
#undef W8A8_REGS_0_11
#undef W8A8_REGS_12_23
#undef W8A8_ACCUMULATOR_CLOBBERS

// Runs `probe` on `threads` threads at once, at least kMinComputeRuns times and for at least
// `seconds`, and returns the best rate in units of `work_per_thread` per second.
template <typename Probe>
double BestRate(int threads, double seconds, double work_per_thread, Probe probe) {
  const double fastest = FastestRun(seconds, kMinComputeRuns, [&] {
#pragma omp parallel num_threads(threads)
    probe();
  });
  return fastest > 0 ? threads * work_per_thread / fastest : 0.0;
}

// The rate of `probe` on 1 thread and on `threads` threads.
template <typename Probe>
Ceiling MeasureCeiling(int threads, double seconds, double work_per_thread, Probe probe) {
  return {BestRate(1, seconds, work_per_thread, probe),
          BestRate(threads, seconds, work_per_thread, probe)};
}

int64_t ParseCacheSize(std::string text) {
  // sysfs writes sizes such as "491520K".
  absl::string_view view = absl::StripAsciiWhitespace(text);
  int64_t unit = 1;
  if (absl::ConsumeSuffix(&view, "K")) unit = 1024;
  else if (absl::ConsumeSuffix(&view, "M")) unit = kMiB;
  int64_t value = 0;
  return absl::SimpleAtoi(view, &value) ? value * unit : 0;
}

}  // namespace

std::string ReadPattern::Describe() const {
  return absl::StrCat(threads, threads == 1 ? " thread, " : " threads, ", streams,
                      streams == 1 ? " stream" : " streams", prefetch ? ", prefetch" : "");
}

int64_t LastLevelCacheBytes() {
  const std::filesystem::path caches = "/sys/devices/system/cpu/cpu0/cache";
  for (int index = 0; index < 8; ++index) {
    const std::filesystem::path dir = caches / ("index" + std::to_string(index));
    std::ifstream level_file(dir / "level");
    std::ifstream size_file(dir / "size");
    int level = 0;
    std::string size;
    if (!(level_file >> level) || !(size_file >> size)) continue;
    if (level == 3) {
      const int64_t bytes = ParseCacheSize(size);
      if (bytes > 0) return bytes;
    }
  }
  const long bytes = sysconf(_SC_LEVEL3_CACHE_SIZE);
  return bytes > 0 ? bytes : 0;
}

int64_t DramResidentBytes() {
  const int64_t l3 = LastLevelCacheBytes();
  if (l3 <= 0) return kGiB;
  return std::max(512 * kMiB, std::min(kGiB, 2 * l3));
}

bool ReadsDram(int64_t bytes) {
  const int64_t l3 = LastLevelCacheBytes();
  return l3 > 0 && bytes >= 2 * l3;
}

double MeasureReadBandwidth(int threads, double seconds) {
  if (threads < 1 || !kernels::CpuSupports(kernels::Isa::kAvx512Vnni)) return 0.0;
  ReadBuffer buffer;
  if (buffer.bytes() == 0) return 0.0;
  const std::vector<ReadResult> results =
      MeasurePatterns(buffer, PatternsFor(threads), seconds, nullptr);
  return BestOf(results, [](int) { return true; }).gbs;
}

MachineCeilings MeasureMachine(double seconds) {
  MachineCeilings machine;
  machine.threads = omp_get_max_threads();
  machine.avx512 = kernels::CpuSupports(kernels::Isa::kAvx512Vnni);
  machine.l3_bytes = LastLevelCacheBytes();
  if (!machine.avx512) return machine;

  {
    ReadBuffer buffer;
    machine.buffer_bytes = buffer.bytes();
    machine.read_chunk_bytes = kChunkBytes;
    if (buffer.bytes() > 0) {
      // 1 thread, every OpenMP thread, and twice as many software threads as that.
      std::vector<ReadPattern> patterns = PatternsFor(1);
      for (int threads : {machine.threads, 2 * machine.threads}) {
        if (threads == 1) continue;
        for (const ReadPattern& pattern : PatternsFor(threads)) patterns.push_back(pattern);
      }
      machine.read_results = MeasurePatterns(buffer, patterns, kReadSecondsFactor * seconds,
                                             &machine.read_rounds);
      const ReadResult one = BestOf(machine.read_results, [](int t) { return t == 1; });
      const int all = machine.threads;
      const ReadResult many =
          BestOf(machine.read_results, [all](int t) { return t >= all; });
      machine.read_gbs = {one.gbs, many.gbs};
      machine.read_best_one_thread = one.pattern;
      machine.read_best_all_threads = many.pattern;
    }
  }

  machine.compute_chains = kChains;
  const double instructions = static_cast<double>(kChains) * kComputeIterations;
  machine.int8_gops =
      MeasureCeiling(machine.threads, seconds, instructions * 2 * kMacsPerVpdpbusd * 1e-9,
                     [] { RunDotProducts(kComputeIterations); });
  machine.fp32_gflops =
      MeasureCeiling(machine.threads, seconds, instructions * 2 * kFmasPerVfmadd * 1e-9,
                     [] { RunFmas(kComputeIterations); });
  const double half_instructions = static_cast<double>(kHalfChains) * kComputeIterations;
  machine.int8_half_chains_gops =
      BestRate(1, seconds, half_instructions * 2 * kMacsPerVpdpbusd * 1e-9,
               [] { RunDotProductsHalf(kComputeIterations); });
  return machine;
}

}  // namespace w8a8::tools
