// Machine ceilings for `w8a8 bench`, measured in the same process so that kernel and model
// figures can be stated as fractions of them. Every function here blocks for the whole
// measurement and starts its own OpenMP parallel regions, so call them from one thread at a
// time and not while other work of this process runs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace w8a8::tools {

// One ceiling on 1 thread and on every OpenMP thread (omp_get_max_threads()).
struct Ceiling {
  double one_thread = 0.0;
  double all_threads = 0.0;
};

// One way of reading the bandwidth buffer. `threads` OpenMP threads each read an equal slice
// of a chunk, split into `streams` parts that the thread reads side by side. Each loop
// iteration reads 256 bytes of each part as four 64-byte vmovdqa64 loads. With `prefetch`, each iteration
// also issues prefetcht0 for the same 4 cache lines of every part 2 KiB ahead.
struct ReadPattern {
  int threads = 1;
  int streams = 1;
  bool prefetch = false;

  // For example "2 threads, 4 streams, prefetch".
  std::string Describe() const;
};

// The fastest and median chunk rates of one read pattern in a measurement.
struct ReadResult {
  ReadPattern pattern;
  double gbs = 0.0;         // The fastest chunk's rate.
  double median_gbs = 0.0;  // The median chunk's rate.
};

struct MachineCeilings {
  int threads = 1;         // OpenMP threads of the "all threads" figures.
  bool avx512 = false;     // Whether the AVX-512 probes ran; without them every figure is 0.
  int64_t buffer_bytes = 0;      // Size of the read buffer: DramResidentBytes(), 0 if not allocated.
  int64_t l3_bytes = 0;          // Last-level cache size as LastLevelCacheBytes() reads it.
  // Best GB/s over every read pattern. "all_threads" is the best of omp_get_max_threads()
  // threads and of twice as many, whichever reads faster.
  Ceiling read_gbs;
  ReadPattern read_best_one_thread;   // The pattern that gave read_gbs.one_thread.
  ReadPattern read_best_all_threads;  // The pattern that gave read_gbs.all_threads.
  std::vector<ReadResult> read_results;  // Every pattern tried, with its rates.
  int read_rounds = 0;                   // Turns each pattern had.
  int64_t read_chunk_bytes = 0;          // Bytes of one timed read, over all its threads.
  // vpdpbusd on zmm registers in independent accumulator chains: 64 multiply-accumulates per
  // instruction, counted as 128 operations (2 per multiply-accumulate), GOPS.
  Ceiling int8_gops;
  // vfmadd231ps on zmm registers: 16 fused multiply-adds per instruction, counted as 32
  // operations, GFLOPS.
  Ceiling fp32_gflops;
  int compute_chains = 0;  // Independent accumulator chains of the compute probes.
  // The int8 probe on 1 thread with half of compute_chains. About the same rate as
  // int8_gops.one_thread means the full probe is bound by throughput, not by latency.
  double int8_half_chains_gops = 0.0;
};

// The last-level (L3) cache size in bytes from /sys/devices/system/cpu/cpu0/cache, the source
// `lscpu` reads, else from sysconf(_SC_LEVEL3_CACHE_SIZE); 0 when neither reports it.
int64_t LastLevelCacheBytes();

// Bytes that a working set needs so that reading it in a cycle comes from DRAM: 2 x the L3
// size, at most 1 GiB and at least 512 MiB (1 GiB when the L3 size is unknown).
int64_t DramResidentBytes();

// Whether cycling through `bytes` of data reads DRAM: true when `bytes` is at least 2 x a
// known L3 size. With an L3 larger than 512 MiB the 1 GiB cap of DramResidentBytes() is below
// that, so such machines report false and their figures count as possibly cache-resident.
bool ReadsDram(int64_t bytes);

// Measures every ceiling. The read patterns take turns in rounds, at least 3 rounds and until
// 10 x `seconds` have passed. In each turn a pattern reads 16 chunks of 16 MiB of a buffer of
// DramResidentBytes(), each chunk timed on its own, and keeps its fastest chunk. Interleaving
// lets every pattern see the same drift in load, and short timed chunks let the best one
// escape interruptions by other processes. Each compute figure is the best of at least 3 runs
// over at least `seconds`.
MachineCeilings MeasureMachine(double seconds);

// Re-measures the read bandwidth on `threads` OpenMP threads (at least 1) as MeasureMachine
// does, with the 6 patterns of that thread count for at least 3 rounds and at least `seconds`,
// and returns the best GB/s. It allocates and touches a fresh buffer of DramResidentBytes()
// for the call. Returns 0 without AVX-512 or when the buffer cannot be allocated.
double MeasureReadBandwidth(int threads, double seconds);

}  // namespace w8a8::tools
