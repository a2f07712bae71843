// Machine ceilings for `w8a8 bench`, measured in the same process so that kernel and model
// figures can be stated as fractions of them.
#pragma once

#include <cstdint>

namespace w8a8::tools {

// One ceiling on 1 thread and on every OpenMP thread (omp_get_max_threads()).
struct Ceiling {
  double one_thread = 0.0;
  double all_threads = 0.0;
};

struct MachineCeilings {
  int threads = 1;         // OpenMP threads of the "all threads" figures.
  bool avx512 = false;     // Whether the AVX-512 probes ran; without them every figure is 0.
  int64_t buffer_bytes = 0;
  Ceiling read_gbs;        // Sequential 64-byte loads over buffer_bytes, best repeat, GB/s.
  Ceiling int8_gops;       // vpdpbusd in registers: 128 operations per instruction, GOPS.
  Ceiling fp32_gflops;     // vfmadd on 16 floats in registers: 32 operations each, GFLOPS.
};

// Measures every ceiling. Each figure is the best of repeated runs, with at least `seconds`
// of runs per figure (and at least 3 reads of the buffer), because on a shared machine the
// best run is the one least disturbed by other processes. The buffer is 1 GiB, far larger
// than the last-level cache, so reads come from DRAM.
MachineCeilings MeasureMachine(double seconds);

}  // namespace w8a8::tools
