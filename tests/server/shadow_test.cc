// Shadow comparison in a real server: finished requests are replayed through the FP32
// reference model, and the KL divergence and top-1 agreement series appear on /metrics.
#include <stdlib.h>

#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/flags.h"
#include "tests/server/server_test_util.h"

ABSL_DECLARE_FLAG(std::string, model);
ABSL_DECLARE_FLAG(double, shadow_fraction);
ABSL_DECLARE_FLAG(int64_t, shadow_queue);

namespace w8a8::testing {
namespace {

std::string Fetch(const std::string& url) {
  std::string body;
  RunCommand("curl -s --max-time 5 '" + url + "'", &body);
  return body;
}

// Returns the value of the exposition line `series VALUE`, or nullopt when there is none.
std::optional<double> SampleValue(const std::string& exposition, const std::string& series) {
  std::istringstream lines(exposition);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 &&
        line[series.size()] == ' ') {
      return std::stod(line.substr(series.size() + 1));
    }
  }
  return std::nullopt;
}

class ShadowTest : public ::testing::Test {
 protected:
  // Starts a server that replays every request, sends `count` concurrent greedy Generate
  // calls, and returns the positions they produced: prompt plus generated tokens, minus one.
  int64_t ServeRequests(const std::string& plan, int count, int64_t queue_capacity = 64) {
    server::ServerOptions options = TestServerOptions();
    options.metrics_port = 0;
    options.host.quantization.plan = plan;
    options.host.shadow.fraction = 1;
    options.host.shadow.queue_capacity = queue_capacity;
    auto started = StartTestServer(options);
    EXPECT_TRUE(started.ok()) << started.status();
    if (!started.ok()) return 0;
    server_ = std::move(*started);

    const std::vector<std::string> prompts = {"Once upon a time", "The little dog",
                                              "Lily went to the park", "Tom had a red ball"};
    std::vector<int64_t> positions(count, 0);
    std::vector<std::thread> threads;
    for (int i = 0; i < count; ++i) {
      threads.emplace_back([&, i] {
        auto context = ContextWithDeadline();
        v1::GenerateResponse response;
        const grpc::Status status = server_->stub->Generate(
            context.get(), GreedyRequest(prompts[i % prompts.size()], 16 + i), &response);
        EXPECT_TRUE(status.ok()) << status.error_message();
        positions[i] = response.usage().total_tokens() - 1;
      });
    }
    for (std::thread& thread : threads) thread.join();
    int64_t total = 0;
    for (int64_t value : positions) total += value;
    return total;
  }

  std::string MetricsUrl() const {
    return absl::StrCat("http://127.0.0.1:", server_->server->metrics_port(), "/metrics");
  }

  // Waits until `count` requests of `plan_label` are compared, then returns the exposition.
  std::string MetricsAfterComparisons(const std::string& plan_label, int count) {
    const std::string compared = absl::StrCat("w8a8_shadow_requests_total{plan=\"", plan_label,
                                              "\",result=\"compared\"}");
    std::string exposition;
    WaitFor([&] {
      exposition = Fetch(MetricsUrl());
      return SampleValue(exposition, compared).value_or(0) >= count;
    });
    return exposition;
  }

  std::unique_ptr<TestServer> server_;
};

TEST_F(ShadowTest, PerChannelExportsDivergence) {
  constexpr int kRequests = 4;
  const int64_t positions = ServeRequests("per-channel", kRequests);
  ASSERT_GT(positions, 0);
  const std::string exposition = MetricsAfterComparisons("per-channel/1", kRequests);
  const std::string plan = "{plan=\"per-channel/1\"}";

  EXPECT_EQ(SampleValue(exposition, "w8a8_shadow_requests_total{plan=\"per-channel/1\","
                                    "result=\"compared\"}"),
            kRequests);
  EXPECT_EQ(SampleValue(exposition, "w8a8_shadow_positions_total" + plan), positions);
  const std::optional<double> agreements =
      SampleValue(exposition, "w8a8_shadow_top1_agreements_total" + plan);
  ASSERT_TRUE(agreements.has_value()) << exposition;
  EXPECT_LE(*agreements, positions);
  EXPECT_GT(*agreements, 0);
  EXPECT_EQ(SampleValue(exposition, "w8a8_shadow_kl_divergence_count" + plan), positions);
  const std::optional<double> kl_sum =
      SampleValue(exposition, "w8a8_shadow_kl_divergence_sum" + plan);
  ASSERT_TRUE(kl_sum.has_value()) << exposition;
  EXPECT_GT(*kl_sum, 0);
  EXPECT_EQ(SampleValue(exposition, "w8a8_shadow_kl_divergence_bucket{plan=\"per-channel/1\","
                                    "le=\"+Inf\"}"),
            positions);
}

TEST_F(ShadowTest, Fp32MatchesReference) {
  constexpr int kRequests = 3;
  const int64_t positions = ServeRequests("fp32", kRequests);
  ASSERT_GT(positions, 0);
  const std::string exposition = MetricsAfterComparisons("fp32/1", kRequests);
  const std::string plan = "{plan=\"fp32/1\"}";

  EXPECT_EQ(SampleValue(exposition, "w8a8_shadow_positions_total" + plan), positions);
  EXPECT_EQ(SampleValue(exposition, "w8a8_shadow_top1_agreements_total" + plan), positions);
  EXPECT_EQ(SampleValue(exposition, "w8a8_shadow_kl_divergence_count" + plan), positions);
  const std::optional<double> kl_sum =
      SampleValue(exposition, "w8a8_shadow_kl_divergence_sum" + plan);
  ASSERT_TRUE(kl_sum.has_value()) << exposition;
  EXPECT_LT(*kl_sum, 1e-6);
}

TEST_F(ShadowTest, FullQueueCountsDrops) {
  constexpr int kRequests = 8;
  ASSERT_GT(ServeRequests("per-channel", kRequests, /*queue_capacity=*/1), 0);
  const std::string compared =
      "w8a8_shadow_requests_total{plan=\"per-channel/1\",result=\"compared\"}";
  const std::string dropped =
      "w8a8_shadow_requests_total{plan=\"per-channel/1\",result=\"dropped\"}";

  // Every sampled request ends as compared or dropped; how many of each depends on timing.
  std::string exposition;
  EXPECT_TRUE(WaitFor([&] {
    exposition = Fetch(MetricsUrl());
    return SampleValue(exposition, compared).value_or(0) +
               SampleValue(exposition, dropped).value_or(0) >=
           kRequests;
  })) << exposition;
  const double compared_count = SampleValue(exposition, compared).value_or(0);
  const double dropped_count = SampleValue(exposition, dropped).value_or(0);
  EXPECT_GE(compared_count, 1);
  EXPECT_EQ(compared_count + dropped_count, kRequests);
  EXPECT_EQ(SampleValue(exposition, "w8a8_shadow_requests_total{plan=\"per-channel/1\","
                                    "result=\"error\"}"),
            std::nullopt);
}

TEST_F(ShadowTest, ZeroFractionComparesNothing) {
  server::ServerOptions options = TestServerOptions();
  options.metrics_port = 0;
  auto started = StartTestServer(options);
  ASSERT_TRUE(started.ok()) << started.status();
  server_ = std::move(*started);
  auto context = ContextWithDeadline();
  v1::GenerateResponse response;
  ASSERT_TRUE(
      server_->stub->Generate(context.get(), GreedyRequest("Once upon a time", 8), &response)
          .ok());

  const std::string exposition = Fetch(MetricsUrl());
  ASSERT_THAT(exposition, ::testing::HasSubstr("w8a8_requests_total"));
  EXPECT_THAT(exposition, ::testing::Not(::testing::HasSubstr("w8a8_shadow_requests_total{")));
}

TEST(ShadowFlagsTest, EnvironmentSetsShadowOptions) {
  absl::FlagSaver saver;
  absl::SetFlag(&FLAGS_model, Stories260KGguf().string());
  ASSERT_EQ(setenv("W8A8_SHADOW_FRACTION", "0.25", 1), 0);
  ASSERT_EQ(setenv("W8A8_SHADOW_QUEUE", "7", 1), 0);
  const absl::Status applied = server::ApplyEnvironmentToFlags();
  unsetenv("W8A8_SHADOW_FRACTION");
  unsetenv("W8A8_SHADOW_QUEUE");
  ASSERT_TRUE(applied.ok()) << applied;

  const absl::StatusOr<server::ServerOptions> options = server::ServerOptionsFromFlags();
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_DOUBLE_EQ(options->host.shadow.fraction, 0.25);
  EXPECT_EQ(options->host.shadow.queue_capacity, 7);
}

TEST(ShadowFlagsTest, InvalidValuesRejected) {
  absl::FlagSaver saver;
  absl::SetFlag(&FLAGS_model, Stories260KGguf().string());

  absl::SetFlag(&FLAGS_shadow_fraction, 1.5);
  absl::StatusOr<server::ServerOptions> options = server::ServerOptionsFromFlags();
  ASSERT_FALSE(options.ok());
  EXPECT_THAT(options.status().message(), ::testing::HasSubstr("--shadow-fraction=1.5"));

  absl::SetFlag(&FLAGS_shadow_fraction, 0.5);
  absl::SetFlag(&FLAGS_shadow_queue, 0);
  options = server::ServerOptionsFromFlags();
  ASSERT_FALSE(options.ok());
  EXPECT_THAT(options.status().message(), ::testing::HasSubstr("--shadow-queue=0"));
}

}  // namespace
}  // namespace w8a8::testing
