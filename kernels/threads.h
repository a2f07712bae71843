// The number of OpenMP threads that the kernels use, the same for every thread of the process.
//
// OpenMP keeps the team size of omp_set_num_threads per calling thread, and a thread started
// with std::thread begins with OMP_NUM_THREADS or one per core. A --threads flag applied only
// on the main thread would therefore not reach an engine or loader thread. SetComputeThreads
// records the setting for the process, and each thread that runs kernels applies it first
// with UseComputeThreads. Both are thread-safe.
#pragma once

#include <optional>
#include <thread>
#include <type_traits>
#include <utility>

namespace w8a8::kernels {

// Sets the team size of the kernels' parallel regions for the calling thread and for every
// thread that calls UseComputeThreads afterwards. `threads` <= 0 records no setting, so
// threads keep OpenMP's default.
void SetComputeThreads(int threads);

// Gives the calling thread the team size recorded by SetComputeThreads, if any.
void UseComputeThreads();

// Runs `work` on a new thread with UseComputeThreads applied, waits for it and returns its
// result. OpenMP keeps a pool of worker threads for each thread that starts parallel regions,
// and with OMP_WAIT_POLICY=active idle workers spin for as long as that thread lives. Work
// that runs once (loading a model, a benchmark suite) goes through here, so that its workers
// exit with it instead of spinning beside the engine thread's.
template <typename Work>
auto RunOnTransientThread(Work&& work) -> std::invoke_result_t<Work&> {
  using Result = std::invoke_result_t<Work&>;
  if constexpr (std::is_void_v<Result>) {
    std::thread thread([&] {
      UseComputeThreads();
      work();
    });
    thread.join();
  } else {
    std::optional<Result> result;
    std::thread thread([&] {
      UseComputeThreads();
      result.emplace(work());
    });
    thread.join();
    return std::move(*result);
  }
}

}  // namespace w8a8::kernels
