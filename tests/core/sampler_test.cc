#include "core/sampler.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace w8a8 {
namespace {

SamplingParams Seeded(uint64_t seed) {
  SamplingParams params;
  params.seed = seed;
  params.has_seed = true;
  return params;
}

// Draws `count` tokens from fresh copies of `logits` with one sampler.
std::map<int32_t, int> Histogram(const SamplingParams& params, const std::vector<float>& logits,
                                 int count) {
  Sampler sampler(params);
  std::map<int32_t, int> histogram;
  for (int i = 0; i < count; ++i) {
    std::vector<float> copy = logits;
    ++histogram[sampler.Sample(copy, {})];
  }
  return histogram;
}

struct InvalidCase {
  const char* field;
  SamplingParams params;
};

TEST(SamplingParamsTest, ValidateNamesFieldAndRange) {
  std::vector<InvalidCase> cases;
  auto add = [&cases](const char* field, auto mutate) {
    SamplingParams params;
    mutate(params);
    cases.push_back({field, params});
  };
  add("temperature", [](SamplingParams& p) { p.temperature = -0.5; });
  add("temperature", [](SamplingParams& p) { p.temperature = INFINITY; });
  add("temperature", [](SamplingParams& p) { p.temperature = NAN; });
  add("top_p", [](SamplingParams& p) { p.top_p = 0.0; });
  add("top_p", [](SamplingParams& p) { p.top_p = 1.5; });
  add("top_p", [](SamplingParams& p) { p.top_p = NAN; });
  add("top_k", [](SamplingParams& p) { p.top_k = -1; });
  add("min_p", [](SamplingParams& p) { p.min_p = -0.1; });
  add("min_p", [](SamplingParams& p) { p.min_p = 1.1; });
  add("repetition_penalty", [](SamplingParams& p) { p.repetition_penalty = 0.0; });
  add("frequency_penalty", [](SamplingParams& p) { p.frequency_penalty = 2.5; });
  add("presence_penalty", [](SamplingParams& p) { p.presence_penalty = -3.0; });
  add("max_tokens", [](SamplingParams& p) { p.max_tokens = 0; });
  add("stop[1]", [](SamplingParams& p) { p.stop = {"x", ""}; });
  add("stop_token_ids[0]", [](SamplingParams& p) { p.stop_token_ids = {-4}; });
  for (const InvalidCase& c : cases) {
    const absl::Status status = c.params.Validate();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_EQ(status.message().rfind(c.field, 0), 0u) << c.field << ": " << status;
  }
  SamplingParams wide_top_p;
  wide_top_p.top_p = 1.5;
  EXPECT_NE(wide_top_p.Validate().message().find("1.5; it must be in (0, 1]"), std::string::npos)
      << wide_top_p.Validate();
}

TEST(SamplingParamsTest, BoundaryValuesAreValid) {
  SamplingParams params;
  params.temperature = 0.0;
  params.top_p = 1.0;
  params.min_p = 1.0;
  params.frequency_penalty = -2.0;
  params.presence_penalty = 2.0;
  params.max_tokens = 1;
  EXPECT_TRUE(params.Validate().ok()) << params.Validate();
}

TEST(SamplerTest, GreedyPicksLargestLogitAndLowestIdOnTie) {
  SamplingParams params;
  params.temperature = 0.0;
  Sampler sampler(params);
  std::vector<float> logits = {0.5f, 3.0f, -1.0f, 3.0f};
  EXPECT_EQ(sampler.Sample(logits, {}), 1);
}

TEST(SamplerTest, DrawUsesTop53BitsOfMt19937_64) {
  // Two equally likely tokens: token 0 exactly when the uniform draw is below 0.5.
  for (uint64_t seed : {0u, 1u, 42u, 12345u}) {
    std::mt19937_64 rng(seed);
    Sampler sampler(Seeded(seed));
    for (int i = 0; i < 50; ++i) {
      const double uniform = static_cast<double>(rng() >> 11) * 0x1.0p-53;
      std::vector<float> logits = {1.0f, 1.0f};
      EXPECT_EQ(sampler.Sample(logits, {}), uniform < 0.5 ? 0 : 1) << "seed " << seed;
    }
  }
}

TEST(SamplerTest, SameSeedRepeatsDifferentSeedDiffers) {
  const std::vector<float> logits = {0.1f, 0.4f, 0.2f, 0.9f, 0.3f, 0.0f, 0.5f, 0.6f};
  auto draw = [&logits](uint64_t seed) {
    Sampler sampler(Seeded(seed));
    std::vector<int32_t> tokens;
    for (int i = 0; i < 64; ++i) {
      std::vector<float> copy = logits;
      tokens.push_back(sampler.Sample(copy, {}));
    }
    return tokens;
  };
  EXPECT_EQ(draw(7), draw(7));
  EXPECT_NE(draw(7), draw(8));
}

TEST(SamplerTest, FrequenciesFollowSoftmaxOfScaledLogits) {
  const std::vector<float> logits = {0.0f, 1.0f, 2.0f};
  SamplingParams params = Seeded(3);
  params.temperature = 2.0;
  const int count = 40000;
  const std::map<int32_t, int> histogram = Histogram(params, logits, count);
  const double z = std::exp(0.0) + std::exp(0.5) + std::exp(1.0);
  for (int32_t token = 0; token < 3; ++token) {
    const double expected = std::exp(logits[token] / 2.0) / z;
    EXPECT_NEAR(histogram.at(token) / static_cast<double>(count), expected, 0.01) << token;
  }
}

TEST(SamplerTest, TopKKeepsOnlyKMostLikely) {
  SamplingParams params = Seeded(4);
  params.top_k = 2;
  const std::map<int32_t, int> histogram = Histogram(params, {3.0f, 0.0f, 2.9f, 2.8f}, 2000);
  EXPECT_EQ(histogram.size(), 2u);
  EXPECT_TRUE(histogram.contains(0));
  EXPECT_TRUE(histogram.contains(2));
}

TEST(SamplerTest, TopPKeepsSmallestPrefixReachingP) {
  // Probabilities 0.5, 0.25, 0.125, 0.125 (logits are log2-spaced).
  const std::vector<float> logits = {std::log(4.0f), std::log(2.0f), 0.0f, 0.0f};
  SamplingParams params = Seeded(5);
  params.top_p = 0.7;
  std::map<int32_t, int> histogram = Histogram(params, logits, 4000);
  EXPECT_EQ(histogram.size(), 2u);
  EXPECT_NEAR(histogram[0] / 4000.0, 2.0 / 3.0, 0.03);
  params.top_p = 0.5;
  histogram = Histogram(params, logits, 200);
  EXPECT_EQ(histogram.size(), 1u);
  EXPECT_EQ(histogram.begin()->first, 0);
}

TEST(SamplerTest, MinPDropsTokensBelowFractionOfTop) {
  const std::vector<float> logits = {std::log(4.0f), std::log(2.0f), 0.0f, 0.0f};
  SamplingParams params = Seeded(6);
  params.min_p = 0.3;  // Threshold 0.15: keeps p = 0.5 and 0.25.
  const std::map<int32_t, int> histogram = Histogram(params, logits, 4000);
  EXPECT_EQ(histogram.size(), 2u);
  EXPECT_FALSE(histogram.contains(2));
  EXPECT_FALSE(histogram.contains(3));
}

// The definition of top-p and min-p sampling over a full sort, with the sampler's draw.
int32_t SampleBySortingEverything(const std::vector<float>& logits, const SamplingParams& params,
                                  std::mt19937_64& rng) {
  std::vector<int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  std::vector<double> probs;
  double total = 0.0;
  for (const int32_t id : order) {
    probs.push_back(std::exp((double{logits[id]} - logits[order[0]]) / params.temperature));
    total += probs.back();
  }
  size_t kept = order.size();
  if (params.top_p < 1.0) {
    double cumulative = 0.0;
    for (size_t i = 0; i < order.size(); ++i) {
      cumulative += probs[i] / total;
      if (cumulative >= params.top_p) {
        kept = i + 1;
        break;
      }
    }
  }
  if (params.min_p > 0.0) {
    size_t i = 1;
    while (i < kept && probs[i] >= params.min_p * probs[0]) ++i;
    kept = i;
  }
  double kept_total = 0.0;
  for (size_t i = 0; i < kept; ++i) kept_total += probs[i];
  const double target = static_cast<double>(rng() >> 11) * 0x1.0p-53 * kept_total;
  double cumulative = 0.0;
  for (size_t i = 0; i < kept; ++i) {
    cumulative += probs[i];
    if (target < cumulative) return order[i];
  }
  return order[kept - 1];
}

TEST(SamplerTest, LargeVocabularyMatchesFullSort) {
  // A Llama 3-sized vocabulary: peaked logits, where only a shortlist is sorted, and flat
  // ones, where top-p needs every token.
  std::mt19937 engine(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const float spread : {6.0f, 0.05f}) {
    std::vector<float> logits(128256);
    for (float& logit : logits) logit = spread * normal(engine);
    struct Truncation {
      double top_p;
      double min_p;
    };
    for (const Truncation truncation : {Truncation{0.9, 0.0}, Truncation{0.5, 0.0},
                                        Truncation{1.0, 0.05}, Truncation{0.95, 0.01}}) {
      SamplingParams params = Seeded(21);
      params.temperature = 0.8;
      params.top_p = truncation.top_p;
      params.min_p = truncation.min_p;
      Sampler sampler(params);
      std::mt19937_64 rng(21);
      for (int draw = 0; draw < 5; ++draw) {
        std::vector<float> copy = logits;
        ASSERT_EQ(sampler.Sample(copy, {}), SampleBySortingEverything(logits, params, rng))
            << "spread " << spread << " top_p " << truncation.top_p << " min_p "
            << truncation.min_p << " draw " << draw;
      }
    }
  }
}

TEST(SamplerTest, RepetitionPenaltyDividesPositiveMultipliesNegative) {
  SamplingParams params;
  params.temperature = 0.0;
  params.repetition_penalty = 2.0;
  Sampler sampler(params);
  std::vector<float> logits = {4.0f, 3.0f, -1.0f, 0.5f};
  const std::vector<int32_t> history = {0, 2, 0, 99};  // 99 is outside the vocabulary.
  EXPECT_EQ(sampler.Sample(logits, history), 1);
  EXPECT_FLOAT_EQ(logits[0], 2.0f);
  EXPECT_FLOAT_EQ(logits[1], 3.0f);
  EXPECT_FLOAT_EQ(logits[2], -2.0f);
  EXPECT_FLOAT_EQ(logits[3], 0.5f);
}

TEST(SamplerTest, FrequencyAndPresencePenaltiesSubtract) {
  SamplingParams params;
  params.temperature = 0.0;
  params.frequency_penalty = 0.5;
  params.presence_penalty = 0.25;
  Sampler sampler(params);
  std::vector<float> logits = {4.0f, 3.5f, 1.0f};
  const std::vector<int32_t> history = {0, 0, 0, 2};
  EXPECT_EQ(sampler.Sample(logits, history), 1);
  EXPECT_FLOAT_EQ(logits[0], 4.0f - 3 * 0.5f - 0.25f);
  EXPECT_FLOAT_EQ(logits[1], 3.5f);
  EXPECT_FLOAT_EQ(logits[2], 1.0f - 0.5f - 0.25f);
}

TEST(LogSoftmaxTest, ExponentialsSumToOne) {
  const std::vector<float> logits = {1000.0f, 999.0f, -5.0f, 0.0f};
  std::vector<float> out(logits.size());
  LogSoftmax(logits, out);
  double sum = 0.0;
  for (float value : out) sum += std::exp(static_cast<double>(value));
  EXPECT_NEAR(sum, 1.0, 1e-6);
  EXPECT_NEAR(out[0] - out[1], 1.0f, 1e-5);
  EXPECT_LT(out[0], 0.0f);
}

}  // namespace
}  // namespace w8a8
