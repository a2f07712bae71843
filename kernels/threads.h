// The number of OpenMP threads that the kernels use, the same for every thread of the process.
//
// OpenMP keeps the team size of omp_set_num_threads per calling thread, and a thread started
// with std::thread begins with OMP_NUM_THREADS or one per core. A --threads flag applied only
// on the main thread would therefore not reach an engine or loader thread. SetComputeThreads
// records the setting for the process, and each thread that runs kernels applies it first
// with UseComputeThreads. Both are thread-safe.
#pragma once

namespace w8a8::kernels {

// Sets the team size of the kernels' parallel regions for the calling thread and for every
// thread that calls UseComputeThreads afterwards. `threads` <= 0 records no setting, so
// threads keep OpenMP's default.
void SetComputeThreads(int threads);

// Gives the calling thread the team size recorded by SetComputeThreads, if any.
void UseComputeThreads();

}  // namespace w8a8::kernels
