#include "kernels/parallel.h"

#include <omp.h>

#include <atomic>
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"

namespace w8a8::kernels {
namespace {

// Team size for the lifetime of a test. The destructor restores the previous one.
class ScopedTeamSize {
 public:
  explicit ScopedTeamSize(int threads) : saved_(omp_get_max_threads()) {
    omp_set_num_threads(threads);
  }
  ~ScopedTeamSize() { omp_set_num_threads(saved_); }

 private:
  int saved_;
};

// What one loop saw: how often each index ran, and the deepest OpenMP nesting level and
// largest team any call ran in.
struct Visits {
  std::vector<std::atomic<int>> counts;
  std::atomic<int> max_level{0};
  std::atomic<int> max_team{0};

  explicit Visits(int64_t n) : counts(static_cast<size_t>(n)) {}

  void Record(int64_t i) {
    counts[static_cast<size_t>(i)].fetch_add(1);
    int level = omp_get_level();
    int seen = max_level.load();
    while (level > seen && !max_level.compare_exchange_weak(seen, level)) {
    }
    int team = omp_get_num_threads();
    seen = max_team.load();
    while (team > seen && !max_team.compare_exchange_weak(seen, team)) {
    }
  }

  bool EachOnce() const {
    for (const std::atomic<int>& count : counts) {
      if (count.load() != 1) return false;
    }
    return true;
  }
};

TEST(ParallelFor, OneThreadRunsInlineWithoutARegion) {
  ScopedTeamSize team(1);
  Visits visits(100);
  ParallelFor(100, true, [&](int64_t i) { visits.Record(i); });
  EXPECT_TRUE(visits.EachOnce());
  // omp_get_level counts regions of one thread too, so 0 means none was started.
  EXPECT_EQ(visits.max_level.load(), 0);

  Visits dynamic(37);
  ParallelForDynamic(37, true, [&](int64_t i) { dynamic.Record(i); });
  EXPECT_TRUE(dynamic.EachOnce());
  EXPECT_EQ(dynamic.max_level.load(), 0);
}

TEST(ParallelFor, SmallLoopRunsInlineOnAnyTeamSize) {
  ScopedTeamSize team(4);
  Visits visits(64);
  ParallelFor(64, false, [&](int64_t i) { visits.Record(i); });
  EXPECT_TRUE(visits.EachOnce());
  EXPECT_EQ(visits.max_level.load(), 0);
  // One index needs no second thread either.
  Visits single(1);
  ParallelForDynamic(1, true, [&](int64_t i) { single.Record(i); });
  EXPECT_TRUE(single.EachOnce());
  EXPECT_EQ(single.max_level.load(), 0);
}

TEST(ParallelFor, ThreadedLoopUsesTheTeam) {
  ScopedTeamSize team(3);
  for (const int64_t n : {2, 3, 10, 1001}) {
    Visits visits(n);
    ParallelFor(n, true, [&](int64_t i) { visits.Record(i); });
    EXPECT_TRUE(visits.EachOnce()) << "n = " << n;
    EXPECT_EQ(visits.max_level.load(), 1) << "n = " << n;
    EXPECT_EQ(visits.max_team.load(), 3) << "n = " << n;

    Visits dynamic(n);
    ParallelForDynamic(n, true, [&](int64_t i) { dynamic.Record(i); });
    EXPECT_TRUE(dynamic.EachOnce()) << "n = " << n;
    EXPECT_EQ(dynamic.max_team.load(), 3) << "n = " << n;
  }
}

TEST(ParallelFor, InsideARegionRunsInline) {
  ScopedTeamSize team(2);
  Visits first(50), second(50);
  Visits* const inner[2] = {&first, &second};
#pragma omp parallel num_threads(2)
  {
    Visits& visits = *inner[omp_get_thread_num()];
    ParallelFor(50, true, [&](int64_t i) { visits.Record(i); });
  }
  for (const Visits* visits : inner) {
    EXPECT_TRUE(visits->EachOnce());
    // The outer region is level 1, and a nested one would make it 2.
    EXPECT_EQ(visits->max_level.load(), 1);
  }
}

TEST(ParallelRegion, IndicesCoverTheTeam) {
  ScopedTeamSize team(4);
  for (const int64_t threads : {1, 2, 4, 9}) {
    std::vector<std::atomic<int>> calls(4);
    std::atomic<int64_t> counts_seen{-1};
    std::atomic<bool> mismatch{false};
    ParallelRegion(threads, [&](int64_t index, int64_t count) {
      calls[static_cast<size_t>(index)].fetch_add(1);
      int64_t expected = -1;
      if (!counts_seen.compare_exchange_strong(expected, count) && expected != count) {
        mismatch = true;
      }
    });
    const int64_t team_size = threads < 4 ? threads : 4;
    EXPECT_FALSE(mismatch.load()) << "threads = " << threads;
    EXPECT_EQ(counts_seen.load(), team_size) << "threads = " << threads;
    for (int64_t i = 0; i < 4; ++i) {
      EXPECT_EQ(calls[static_cast<size_t>(i)].load(), i < team_size ? 1 : 0)
          << "threads = " << threads << ", index " << i;
    }
  }
}

TEST(ParallelRegion, OneThreadRunsInline) {
  ScopedTeamSize team(1);
  int level = -1;
  int64_t seen_index = -1, seen_count = -1;
  ParallelRegion(8, [&](int64_t index, int64_t count) {
    level = omp_get_level();
    seen_index = index;
    seen_count = count;
  });
  EXPECT_EQ(level, 0);
  EXPECT_EQ(seen_index, 0);
  EXPECT_EQ(seen_count, 1);
}

}  // namespace
}  // namespace w8a8::kernels
