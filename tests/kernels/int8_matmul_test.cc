#include <omp.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cpu_features.h"
#include "kernels/gemm.h"
#include "kernels/int8_packed.h"
#include "kernels/onednn_int8_matmul.h"
#include "kernels/parallel.h"
#include "kernels/reference.h"
#include "oneapi/dnnl/dnnl.hpp"

namespace w8a8::kernels {
namespace {

std::vector<int8_t> RandomInt8(int64_t count, int low, int high, uint32_t seed) {
  std::mt19937 engine(seed);
  std::uniform_int_distribution<int> distribution(low, high);
  std::vector<int8_t> values(count);
  for (int8_t& value : values) value = static_cast<int8_t>(distribution(engine));
  return values;
}

std::vector<float> RandomScales(int64_t count, uint32_t seed) {
  std::mt19937 engine(seed);
  std::uniform_real_distribution<float> distribution(1e-4f, 1e-1f);
  std::vector<float> values(count);
  for (float& value : values) value = distribution(engine);
  return values;
}

int64_t GroupCount(int64_t k, int64_t group_size) {
  return group_size == 0 ? 1 : (k + group_size - 1) / group_size;
}

std::string Describe(Isa isa, int64_t m, int64_t n, int64_t k, int64_t group_size) {
  return std::string(IsaName(isa)) + " m=" + std::to_string(m) + " n=" + std::to_string(n) +
         " k=" + std::to_string(k) + " group_size=" + std::to_string(group_size);
}

std::unique_ptr<Int8Matmul> CreateOrDie(const std::vector<int8_t>& weights, int64_t n,
                                        int64_t k, const std::vector<float>& scales,
                                        int64_t group_size, Isa isa) {
  absl::StatusOr<std::unique_ptr<Int8Matmul>> matmul =
      Int8Matmul::Create(weights, n, k, scales, group_size, isa);
  EXPECT_TRUE(matmul.ok()) << matmul.status();
  return matmul.ok() ? std::move(matmul).value() : nullptr;
}

// Both the reference and a fast path compute x_scale * sum_g(S_g * w_g) from exact int32 group
// sums S_g. Each result passes through at most G + 2 roundings of relative size u = 2^-24:
// the conversion of S_g, the product, G - 1 additions and the final product (an FMA rounds
// once for two of them). It is therefore within gamma_{G+2} * |x_scale| * sum_g |S_g * w_g|
// of the exact value, with gamma_j = j u / (1 - j u), and the two differ by at most twice that.
double RoundingBound(const int32_t* sums, int64_t groups, const float* weight_scales,
                     float x_scale) {
  double magnitude = 0.0;
  for (int64_t g = 0; g < groups; ++g) {
    magnitude += std::fabs(double{weight_scales[g]} * static_cast<double>(sums[g]));
  }
  const double u = std::ldexp(1.0, -24);
  const double j = static_cast<double>(groups + 2);
  return 2.0 * (j * u / (1.0 - j * u)) * std::fabs(double{x_scale}) * magnitude + 1e-30;
}

// Runs every supported ISA on one shape and compares with the reference. With unit scales
// every group sum and partial total is an integer below 2^24, which FP32 represents exactly,
// so the comparison is exact. Otherwise it allows RoundingBound.
void ExpectMatchesReference(int64_t m, int64_t n, int64_t k, int64_t group_size, bool unit_scales,
                            uint32_t seed) {
  const int64_t groups = GroupCount(k, group_size);
  const std::vector<int8_t> weights = RandomInt8(n * k, -127, 127, seed);
  const std::vector<int8_t> xq = RandomInt8(m * k, -127, 127, seed + 1);
  const std::vector<float> scales =
      unit_scales ? std::vector<float>(n * groups, 1.0f) : RandomScales(n * groups, seed + 2);
  const std::vector<float> x_scales =
      unit_scales ? std::vector<float>(m, 1.0f) : RandomScales(m, seed + 3);

  std::vector<int32_t> sums(m * n * groups);
  reference::Int8GroupSums(xq.data(), m, weights.data(), n, k, group_size, sums.data());
  std::vector<float> expected(m * n);
  reference::Int8Matmul(xq.data(), x_scales.data(), m, weights.data(), n, k, scales.data(),
                        group_size, expected.data());

  for (Isa isa : SupportedIsas()) {
    const std::string context = Describe(isa, m, n, k, group_size);
    std::unique_ptr<Int8Matmul> matmul = CreateOrDie(weights, n, k, scales, group_size, isa);
    ASSERT_NE(matmul, nullptr) << context;
    std::vector<float> actual(m * n, std::nanf(""));
    matmul->Run(xq.data(), x_scales.data(), m, actual.data());
    for (int64_t row = 0; row < m; ++row) {
      for (int64_t col = 0; col < n; ++col) {
        const int64_t at = row * n + col;
        if (unit_scales) {
          ASSERT_EQ(actual[at], expected[at]) << context << " at row " << row << ", column "
                                              << col;
          continue;
        }
        const float* weight_scales =
            group_size == 0 ? &scales[col] : &scales[col * groups];
        const double bound = RoundingBound(&sums[at * groups], groups, weight_scales,
                                           x_scales[row]);
        ASSERT_NEAR(actual[at], expected[at], bound)
            << context << " at row " << row << ", column " << col;
      }
    }
  }
}

class Int8MatmulShapes : public ::testing::TestWithParam<int64_t> {};

TEST_P(Int8MatmulShapes, IntegerSumsAreExact) {
  const int64_t group_size = GetParam();
  uint32_t seed = 100;
  for (int64_t m : {1, 2, 7, 64}) {
    for (int64_t n : {1, 5, 130}) {
      for (int64_t k : {1, 3, 17, 172, 1000}) {
        ExpectMatchesReference(m, n, k, group_size, /*unit_scales=*/true, seed += 4);
      }
    }
  }
}

TEST_P(Int8MatmulShapes, ScaledResultsWithinRounding) {
  const int64_t group_size = GetParam();
  uint32_t seed = 5000;
  for (int64_t m : {1, 2, 7, 64}) {
    for (int64_t n : {1, 5, 130}) {
      for (int64_t k : {1, 3, 17, 172, 1000}) {
        ExpectMatchesReference(m, n, k, group_size, /*unit_scales=*/false, seed += 4);
      }
    }
  }
}

// 0 is per-channel; 128 gives stories260K's down projection (k = 172) groups of 128 and 44;
// 5 and 17 are not multiples of the 4-byte dot-product lane.
INSTANTIATE_TEST_SUITE_P(GroupSizes, Int8MatmulShapes, ::testing::Values(0, 32, 128, 5, 17),
                         [](const ::testing::TestParamInfo<int64_t>& info) {
                           return "GroupSize" + std::to_string(info.param);
                         });

// The AVX-512 loop computes one row over 16 blocks (256 columns) at a time, then single quads
// of 4 blocks (64 columns), and the packed weights are padded to whole quads. These widths
// end inside a decode tile, on a quad, one past a quad and inside a block.
TEST(Int8Matmul, DecodeTileEdgesAreExact) {
  uint32_t seed = 9000;
  for (int64_t n : {63, 64, 65, 255, 256, 257, 320, 335, 600}) {
    for (int64_t group_size : {0, 16, 32, 5}) {
      ExpectMatchesReference(/*m=*/1, n, /*k=*/72, group_size, /*unit_scales=*/true, seed += 4);
      ExpectMatchesReference(/*m=*/1, n, /*k=*/72, group_size, /*unit_scales=*/false,
                             seed += 4);
    }
  }
}

// Up to 6 rows run one tile, and above 16 rows tiles of 6 rows by one quad run over all of k.
// These row counts end on a tile, one past it, and in the middle of one, on widths that end
// inside a quad. 7 to 16 rows take the chunked tiles (ChunkedRowTilesAreExact).
TEST(Int8Matmul, PrefillTileEdgesAreExact) {
  uint32_t seed = 9500;
  for (int64_t m : {5, 6, 7, 12, 13, 17, 19, 23, 37}) {
    for (int64_t n : {16, 49, 64, 80, 200}) {
      for (int64_t group_size : {0, 16, 128, 17}) {
        ExpectMatchesReference(m, n, /*k=*/300, group_size, /*unit_scales=*/true, seed += 4);
      }
    }
  }
}

// From 7 to 16 rows, every tile of rows reads a chunk of the weights before the next chunk.
// These k leave partial chunks and steps past the four streams of a group (k = 1000 and 2052
// per channel, groups of 512, 100 and 17 inputs), and the row counts end tiles of 6 rows or
// not, with up to three tiles. One thread runs all rows: with more, Run splits the rows of
// these narrow matrices among the threads.
TEST(Int8Matmul, ChunkedRowTilesAreExact) {
  const int saved_threads = omp_get_max_threads();
  omp_set_num_threads(1);
  uint32_t seed = 10100;
  for (int64_t m : {7, 8, 12, 13, 16}) {
    for (int64_t k : {1000, 2052}) {
      for (int64_t group_size : {0, 512, 100, 17}) {
        ExpectMatchesReference(m, /*n=*/80, k, group_size, /*unit_scales=*/true, seed += 4);
      }
      ExpectMatchesReference(m, /*n=*/80, k, /*group_size=*/128, /*unit_scales=*/false,
                             seed += 4);
    }
  }
  omp_set_num_threads(saved_threads);
}

// Many short groups per row, with a short last group (1000 = 62 * 16 + 8), each converted and
// scaled on its own.
TEST(Int8Matmul, ManyShortGroupsAreExact) {
  uint32_t seed = 9900;
  for (int64_t m : {1, 2, 6, 9}) {
    for (int64_t group_size : {4, 8, 16}) {
      ExpectMatchesReference(m, /*n=*/96, /*k=*/1000, group_size, /*unit_scales=*/true,
                             seed += 4);
      ExpectMatchesReference(m, /*n=*/96, /*k=*/1000, group_size, /*unit_scales=*/false,
                             seed += 4);
    }
  }
}

// Per-channel weights on AVX-512 take the packed loop for m <= 16 and oneDNN for larger m.
// Both sides of that switch must agree with the reference.
TEST(Int8Matmul, PerChannelBatchDispatchIsExact) {
  uint32_t seed = 9800;
  for (int64_t m : {2, 4, 5, 16, 17}) {
    ExpectMatchesReference(m, /*n=*/2048, /*k=*/2048, /*group_size=*/0, /*unit_scales=*/true,
                           seed += 4);
  }
}

// With k a multiple of 64, oneDNN may read the packed per-channel weights in place. Widths
// below 128 columns make oneDNN 2.6 with AMX fall back to its reference implementation for
// m <= 4, where the packed loop takes over. Every row count and width must stay exact.
// oneDNN takes products of more than 16 rows and at least 2^20 multiply-adds, which
// m = 1100 reaches at every width here.
TEST(Int8Matmul, PerChannelSharedLayoutIsExact) {
  uint32_t seed = 9600;
  for (int64_t k : {64, 192}) {
    for (int64_t n : {16, 49, 64, 100, 200}) {
      ASSERT_GE(1100 * n * k, kMinThreadedMacs);
      for (int64_t m : {2, 3, 5, 8, 16, 17, 20, 37, 1100}) {
        ExpectMatchesReference(m, n, k, /*group_size=*/0, /*unit_scales=*/true, seed += 4);
      }
      ExpectMatchesReference(/*m=*/16, n, k, /*group_size=*/0, /*unit_scales=*/false,
                             seed += 4);
    }
  }
}

// oneDNN's int8 matmul takes the packed layout where its kernels use vpdpbusd or AMX.
bool OneDnnHasInt8DotProducts() {
  return dnnl::get_effective_cpu_isa() >= dnnl::cpu_isa::avx512_core_vnni;
}

// oneDNN's layout for per-channel weights with k a multiple of 64 is the packed one, with or
// without AMX, so the weights are kept once. With another k, each side keeps its own copy.
TEST(Int8Matmul, KeepsPerChannelWeightsOnce) {
  if (!CpuSupports(Isa::kAvx512Vnni) || !OneDnnHasInt8DotProducts()) {
    GTEST_SKIP() << "the packed layout is shared only on CPUs with AVX-512 VNNI";
  }
  for (int64_t k : {256, 300}) {
    const int64_t n = 192;
    const std::vector<int8_t> weights = RandomInt8(n * k, -127, 127, 31);
    const std::vector<float> scales(n, 1.0f);
    std::unique_ptr<Int8Matmul> matmul =
        CreateOrDie(weights, n, k, scales, /*group_size=*/0, Isa::kAvx512Vnni);
    ASSERT_NE(matmul, nullptr);
    const size_t once = static_cast<size_t>(n * k);
    if (k % 64 == 0) {
      EXPECT_LT(matmul->memory_bytes(), once + once / 4) << "k=" << k;
    } else {
      EXPECT_GE(matmul->memory_bytes(), 2 * once) << "k=" << k;
    }
  }
}

// The oneDNN matmul adopts a buffer only when it contains exactly the bytes of its layout.
TEST(Int8Matmul, OneDnnAdoptsOnlyAMatchingBuffer) {
  if (!CpuSupports(Isa::kAvx512Vnni) || !OneDnnHasInt8DotProducts()) {
    GTEST_SKIP() << "the packed layout is shared only on CPUs with AVX-512 VNNI";
  }
  const int64_t m = 20, n = 128, k = 128;
  const std::vector<int8_t> weights = RandomInt8(n * k, -127, 127, 41);
  const std::vector<float> scales(n, 1.0f);
  const internal::PackedInt8Weights packed =
      internal::PackInt8Weights(weights.data(), n, k, scales.data(), /*group_size=*/0);
  const std::vector<int8_t> xq = RandomInt8(m * k, -127, 127, 42);
  const std::vector<float> x_scales(m, 1.0f);
  std::vector<float> expected(m * n);
  reference::Int8Matmul(xq.data(), x_scales.data(), m, weights.data(), n, k, scales.data(),
                        /*group_size=*/0, expected.data());
  const std::span<const int8_t> whole(packed.weights);
  const std::span<const int32_t> compensation =
      std::span<const int32_t>(packed.compensation).first(n);
  for (bool matching : {true, false}) {
    absl::StatusOr<std::unique_ptr<internal::OneDnnInt8Matmul>> matmul =
        internal::CreateOneDnnInt8Matmul(weights, n, k, scales, compensation,
                                         matching ? whole : whole.first(whole.size() - 64));
    ASSERT_TRUE(matmul.ok()) << matmul.status();
    EXPECT_EQ((*matmul)->SharesWeights(), matching);
    ASSERT_TRUE((*matmul)->Accelerated(m));
    std::vector<float> actual(m * n);
    (*matmul)->Run(xq.data(), x_scales.data(), m, actual.data());
    EXPECT_EQ(actual, expected) << "matching=" << matching;
  }
}

TEST(Int8Matmul, OneDnnRejectsShortCompensation) {
  const int64_t n = 64, k = 64;
  const std::vector<int8_t> weights = RandomInt8(n * k, -127, 127, 43);
  const std::vector<float> scales(n, 1.0f);
  const std::vector<int32_t> compensation(n - 1, 0);
  absl::StatusOr<std::unique_ptr<internal::OneDnnInt8Matmul>> matmul =
      internal::CreateOneDnnInt8Matmul(weights, n, k, scales, compensation);
  EXPECT_EQ(matmul.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(matmul.status().message().find("63 entries, expected n = 64"), std::string::npos)
      << matmul.status();
}

// Run splits the column quads among OpenMP threads when there are at least two per thread,
// and the rows otherwise. Uneven splits must still cover every column and row exactly once.
// Every shape here has enough multiply-adds for Run to use the threads at all. Their sums can
// pass 2^24, so the scales are random and the comparison allows RoundingBound.
TEST(Int8Matmul, ThreadSplitsAreExact) {
  const int saved_threads = omp_get_max_threads();
  uint32_t seed = 9700;
  for (int threads : {2, 3}) {
    omp_set_num_threads(threads);
    // 336 columns are 21 blocks in 6 quads, the last one partial, so the threads split columns.
    for (int64_t m : {1, 2, 4, 7}) {
      ASSERT_GE(m * 336 * 3200, kMinThreadedMacs);
      ExpectMatchesReference(m, /*n=*/336, /*k=*/3200, /*group_size=*/32, /*unit_scales=*/false,
                             seed += 4);
    }
    // 48 columns are one quad, so the threads split rows.
    for (int64_t m : {3, 5, 13}) {
      ASSERT_GE(m * 48 * 7300, kMinThreadedMacs);
      ExpectMatchesReference(m, /*n=*/48, /*k=*/7300, /*group_size=*/0, /*unit_scales=*/false,
                             seed += 4);
    }
  }
  omp_set_num_threads(saved_threads);
}

TEST(Int8Matmul, ExtremeValuesAreExact) {
  // Weights at +-127 and activations over the whole int8 range, including -128, for the
  // largest sums: 128 * 127 * 1024 < 2^24, so unit scales keep them exact in FP32. Three row
  // patterns repeat down m. 24 rows take the packed loop, and 48 rows (over 2^20
  // multiply-adds) take oneDNN's path for per-channel weights, where k = 1024 lets it read
  // the packed layout.
  const int64_t n = 33;
  for (int64_t k : {1000, 1024}) {
    for (int64_t m : {3, 24, 48}) {
      for (int64_t group_size : {0, 128}) {
        const int64_t groups = GroupCount(k, group_size);
        std::vector<int8_t> weights(n * k);
        for (int64_t i = 0; i < n * k; ++i) weights[i] = (i / k) % 2 == 0 ? 127 : -127;
        std::vector<int8_t> xq(m * k);
        for (int64_t row = 0; row < m; ++row) {
          for (int64_t i = 0; i < k; ++i) {
            const int64_t pattern = row % 3;
            xq[row * k + i] = pattern == 0   ? int8_t{127}
                              : pattern == 1 ? int8_t{-128}
                                             : static_cast<int8_t>(i % 2 == 0 ? 127 : -128);
          }
        }
        const std::vector<float> scales(n * groups, 1.0f);
        const std::vector<float> x_scales(m, 1.0f);
        const float kf = static_cast<float>(k);
        for (Isa isa : SupportedIsas()) {
          const std::string context = Describe(isa, m, n, k, group_size);
          std::unique_ptr<Int8Matmul> matmul =
              CreateOrDie(weights, n, k, scales, group_size, isa);
          ASSERT_NE(matmul, nullptr) << context;
          std::vector<float> y(m * n);
          matmul->Run(xq.data(), x_scales.data(), m, y.data());
          for (int64_t row = 0; row < m; ++row) {
            const float* y_row = y.data() + row * n;
            const std::string where = absl::StrCat(context, " row ", row);
            switch (row % 3) {
              case 0:
                EXPECT_EQ(y_row[0], 127.0f * 127.0f * kf) << where;
                EXPECT_EQ(y_row[1], -127.0f * 127.0f * kf) << where;
                break;
              case 1:
                EXPECT_EQ(y_row[0], -128.0f * 127.0f * kf) << where;
                EXPECT_EQ(y_row[1], 128.0f * 127.0f * kf) << where;
                break;
              default:
                EXPECT_EQ(y_row[0], -127.0f * kf / 2.0f) << where;
                EXPECT_EQ(y_row[1], 127.0f * kf / 2.0f) << where;
                break;
            }
          }
        }
      }
    }
  }
}

TEST(Int8Matmul, ReportsRequestedIsaAndShape) {
  const std::vector<int8_t> weights(6 * 10, 1);
  for (Isa isa : SupportedIsas()) {
    for (int64_t group_size : {0, 4}) {
      const std::vector<float> scales(6 * GroupCount(10, group_size), 1.0f);
      std::unique_ptr<Int8Matmul> matmul = CreateOrDie(weights, 6, 10, scales, group_size, isa);
      ASSERT_NE(matmul, nullptr);
      EXPECT_EQ(matmul->isa(), isa);
      EXPECT_EQ(matmul->n(), 6);
      EXPECT_EQ(matmul->k(), 10);
      EXPECT_EQ(matmul->group_size(), group_size);
      EXPECT_GE(matmul->memory_bytes(), size_t{6 * 10}) << IsaName(isa);
    }
  }
}

TEST(Int8Matmul, RunsAnyRowCountOnOneMatrix) {
  // One prepared matrix serves many m in turn, as decode (m = 1) and prefill alternate.
  const int64_t n = 40, k = 64;
  const std::vector<int8_t> weights = RandomInt8(n * k, -127, 127, 11);
  for (Isa isa : SupportedIsas()) {
    for (int64_t group_size : {0, 16}) {
      const std::vector<float> scales(n * GroupCount(k, group_size), 1.0f);
      std::unique_ptr<Int8Matmul> matmul = CreateOrDie(weights, n, k, scales, group_size, isa);
      ASSERT_NE(matmul, nullptr);
      for (int64_t m : {1, 9, 1, 3, 9}) {
        const std::vector<int8_t> xq = RandomInt8(m * k, -127, 127, static_cast<uint32_t>(m));
        const std::vector<float> x_scales(m, 1.0f);
        std::vector<float> expected(m * n);
        reference::Int8Matmul(xq.data(), x_scales.data(), m, weights.data(), n, k,
                              scales.data(), group_size, expected.data());
        std::vector<float> actual(m * n);
        matmul->Run(xq.data(), x_scales.data(), m, actual.data());
        EXPECT_EQ(actual, expected) << Describe(isa, m, n, k, group_size);
      }
    }
  }
}

// Four threads run one matmul at once. With k = 1024 the products of 11 and 16 rows have
// over 2^20 multiply-adds, so those calls open OpenMP teams of their own.
TEST(Int8Matmul, ConcurrentRunsAgree) {
  const int64_t n = 96, k = 1024;
  const std::vector<int8_t> weights = RandomInt8(n * k, -127, 127, 21);
  for (Isa isa : SupportedIsas()) {
    for (int64_t group_size : {0, 64}) {
      const std::vector<float> scales(n * GroupCount(k, group_size), 1.0f);
      std::unique_ptr<Int8Matmul> matmul = CreateOrDie(weights, n, k, scales, group_size, isa);
      ASSERT_NE(matmul, nullptr);
      std::vector<std::vector<float>> results(4);
      std::vector<std::vector<float>> expected(4);
      std::vector<std::thread> threads;
      for (int t = 0; t < 4; ++t) {
        const int64_t m = 1 + 5 * t;
        const std::vector<int8_t> xq = RandomInt8(m * k, -127, 127, 30 + t);
        const std::vector<float> x_scales(m, 1.0f);
        expected[t].resize(m * n);
        reference::Int8Matmul(xq.data(), x_scales.data(), m, weights.data(), n, k,
                              scales.data(), group_size, expected[t].data());
        results[t].resize(m * n);
        threads.emplace_back([&, t, m, xq, x_scales] {
          for (int repeat = 0; repeat < 20; ++repeat) {
            matmul->Run(xq.data(), x_scales.data(), m, results[t].data());
          }
        });
      }
      for (std::thread& thread : threads) thread.join();
      for (int t = 0; t < 4; ++t) {
        EXPECT_EQ(results[t], expected[t]) << Describe(isa, 1 + 5 * t, n, k, group_size);
      }
    }
  }
}

TEST(Int8Matmul, CreateRejectsInvalidArguments) {
  const std::vector<int8_t> weights(4 * 8, 1);
  const std::vector<float> scales(4, 1.0f);
  EXPECT_EQ(Int8Matmul::Create(weights, 4, 7, scales, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Int8Matmul::Create(weights, 0, 8, scales, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Int8Matmul::Create(weights, 4, 8, scales, -1).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Group size 3 over k = 8 needs 3 scales per row.
  EXPECT_EQ(Int8Matmul::Create(weights, 4, 8, scales, 3).status().code(),
            absl::StatusCode::kInvalidArgument);
  const std::vector<float> infinite = {1.0f, INFINITY, 1.0f, 1.0f};
  const absl::Status status = Int8Matmul::Create(weights, 4, 8, infinite, 0).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("scale 1"), std::string::npos) << status;
}

}  // namespace
}  // namespace w8a8::kernels
