#include "kernels/threads.h"

#include <omp.h>

#include <chrono>
#include <filesystem>
#include <iterator>
#include <memory>
#include <thread>

#include "gtest/gtest.h"

namespace w8a8::kernels {
namespace {

// Threads of this process, from /proc/self/task.
int ThreadCount() {
  const std::filesystem::directory_iterator tasks("/proc/self/task");
  return static_cast<int>(std::distance(begin(tasks), end(tasks)));
}

// Waits up to 5 s for the thread count to fall to `count`, and returns the last count seen.
int WaitForThreadCount(int count) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  int seen = ThreadCount();
  while (seen > count && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    seen = ThreadCount();
  }
  return seen;
}

// Starts a parallel region of `threads` threads and returns how many ran.
int RunParallelRegion(int threads) {
  int team = 0;
#pragma omp parallel num_threads(threads)
  {
#pragma omp single
    team = omp_get_num_threads();
  }
  return team;
}

TEST(ComputeThreads, TransientThreadReturnsTheResult) {
  std::unique_ptr<int> value = RunOnTransientThread([] { return std::make_unique<int>(7); });
  ASSERT_NE(value, nullptr);
  EXPECT_EQ(*value, 7);
  int calls = 0;
  RunOnTransientThread([&] { ++calls; });
  EXPECT_EQ(calls, 1);
}

// A new thread starts with OpenMP's default team size, so the setting must be applied there.
TEST(ComputeThreads, TransientThreadUsesTheSetting) {
  const int default_threads = omp_get_max_threads();
  SetComputeThreads(default_threads + 1);
  const int inside = RunOnTransientThread([] { return omp_get_max_threads(); });
  int plain = 0;
  std::thread([&] { plain = omp_get_max_threads(); }).join();
  SetComputeThreads(0);
  omp_set_num_threads(default_threads);

  EXPECT_EQ(inside, default_threads + 1);
  EXPECT_EQ(plain, default_threads);
}

// The OpenMP workers of a transient thread exit with it. Those of a thread that lives on
// stay, which shows that ThreadCount counts them.
TEST(ComputeThreads, TransientThreadWorkersExit) {
  const int before = ThreadCount();
  EXPECT_EQ(RunOnTransientThread([] { return RunParallelRegion(3); }), 3);
  EXPECT_EQ(WaitForThreadCount(before), before);

  EXPECT_EQ(RunParallelRegion(3), 3);
  EXPECT_EQ(ThreadCount(), before + 2);
}

}  // namespace
}  // namespace w8a8::kernels
