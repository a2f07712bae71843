// `w8a8 bench --suite engine` of the built tool on stories260K: the report has the fields of
// `w8a8-client load --json`, and every request generates exactly --max-tokens tokens. No
// timing is asserted, because the machine running the tests may be loaded.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <string>
#include <utility>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace w8a8 {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

using testing::CommandResult;

using testing::RunW8a8Tool;
using testing::ToolOutput;

// The engine suite's arguments on stories260K; `extra` follows them, so it can override any.
std::string EngineArguments(const std::string& extra) {
  return "bench --suite engine --model " + testing::Stories260KGguf().string() +
         " --plan per-channel --prompt 'Once upon a time' " + extra;
}

class BenchEngineCli : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(std::filesystem::exists(testing::W8a8Tool()))
        << "build the w8a8 target first: " << testing::W8a8Tool();
    ASSERT_TRUE(std::filesystem::exists(testing::Stories260KGguf())) << testing::Stories260KGguf();
  }
};

TEST_F(BenchEngineCli, ReportsEveryRequestedToken) {
  constexpr int64_t kRequests = 6;
  constexpr int64_t kMaxTokens = 9;
  const CommandResult result = RunW8a8Tool(
      EngineArguments("--requests 6 --concurrency 4 --max-tokens 9 --json"), ToolOutput::kStdout);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const nlohmann::json report = nlohmann::json::parse(result.output, nullptr, false);
  ASSERT_FALSE(report.is_discarded()) << result.output;
  // The engine suite alone skips the machine ceilings.
  EXPECT_FALSE(report.contains("machine"));
  ASSERT_TRUE(report.contains("engine")) << result.output;
  const nlohmann::json& engine = report["engine"];

  EXPECT_EQ(engine["requests"].get<int64_t>(), kRequests);
  EXPECT_EQ(engine["max_tokens"].get<int64_t>(), kMaxTokens);
  EXPECT_EQ(engine["concurrency"].get<int64_t>(), 4);
  EXPECT_EQ(engine["plan"].get<std::string>(), "per-channel");
  EXPECT_EQ(engine["succeeded"].get<int64_t>(), kRequests);
  EXPECT_EQ(engine["failed"].get<int64_t>(), 0);
  EXPECT_TRUE(engine["errors"].empty()) << engine["errors"].dump();
  EXPECT_EQ(engine["first_error"].get<std::string>(), "");
  EXPECT_EQ(engine["generated_tokens"].get<int64_t>(), kRequests * kMaxTokens);
  // BOS and at least one token of the prompt.
  EXPECT_GE(engine["prompt_tokens"].get<int64_t>(), 2);
  EXPECT_GT(engine["seconds"].get<double>(), 0.0);
  EXPECT_GT(engine["tokens_per_second"].get<double>(), 0.0);
  EXPECT_GT(engine["requests_per_second"].get<double>(), 0.0);
  EXPECT_GE(engine["cpu_seconds"].get<double>(), 0.0);
  EXPECT_NEAR(engine["tokens_per_second"].get<double>(),
              engine["requests_per_second"].get<double>() * kMaxTokens,
              1e-6 * engine["tokens_per_second"].get<double>());
}

TEST_F(BenchEngineCli, LatencyFieldsMatchTheLoadClient) {
  const CommandResult result = RunW8a8Tool(
      EngineArguments("--requests 5 --concurrency 2 --max-tokens 7 --json"), ToolOutput::kStdout);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const nlohmann::json report = nlohmann::json::parse(result.output, nullptr, false);
  ASSERT_FALSE(report.is_discarded()) << result.output;
  const nlohmann::json& engine = report["engine"];

  // One time to first token and one request latency per request, and one inter-token gap for
  // every token after each request's first.
  const std::pair<const char*, int64_t> expected_counts[] = {{"time_to_first_token_seconds", 5},
                                                             {"inter_token_latency_seconds", 5 * 6},
                                                             {"request_latency_seconds", 5}};
  for (const auto& [name, count] : expected_counts) {
    ASSERT_TRUE(engine.contains(name)) << name;
    const nlohmann::json& summary = engine[name];
    EXPECT_EQ(summary["count"].get<int64_t>(), count) << name;
    for (const char* key : {"mean", "p50", "p90", "p99", "max"}) {
      ASSERT_TRUE(summary.contains(key)) << name << "." << key;
      EXPECT_GE(summary[key].get<double>(), 0.0) << name << "." << key;
    }
    EXPECT_LE(summary["p50"].get<double>(), summary["p90"].get<double>()) << name;
    EXPECT_LE(summary["p90"].get<double>(), summary["p99"].get<double>()) << name;
    EXPECT_LE(summary["p99"].get<double>(), summary["max"].get<double>()) << name;
  }
  EXPECT_GT(engine["time_to_first_token_seconds"]["p50"].get<double>(), 0.0);
  EXPECT_GT(engine["request_latency_seconds"]["p50"].get<double>(), 0.0);
  // A request ends after its first token, so its latency is at least its time to first token.
  EXPECT_GE(engine["request_latency_seconds"]["max"].get<double>(),
            engine["time_to_first_token_seconds"]["max"].get<double>());
}

TEST_F(BenchEngineCli, TablePrintsThroughputAndLatency) {
  const CommandResult result = RunW8a8Tool(
      EngineArguments("--requests 2 --concurrency 1 --max-tokens 4"), ToolOutput::kStdout);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_THAT(result.output, HasSubstr("2 succeeded, 0 failed"));
  EXPECT_THAT(result.output, HasSubstr("generated tokens/s"));
  EXPECT_THAT(result.output, HasSubstr("time to first token"));
  EXPECT_THAT(result.output, HasSubstr("inter-token"));
  EXPECT_THAT(result.output, Not(HasSubstr("read bandwidth")));
}

TEST_F(BenchEngineCli, MissingPromptIsRejected) {
  const CommandResult result =
      RunW8a8Tool("bench --suite engine --model " + testing::Stories260KGguf().string());
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("needs --prompt"));
}

TEST_F(BenchEngineCli, MissingModelIsRejected) {
  const CommandResult result = RunW8a8Tool("bench --suite engine --prompt hello");
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("engine suite needs --model"));
}

TEST_F(BenchEngineCli, ZeroConcurrencyIsRejected) {
  const CommandResult result = RunW8a8Tool(EngineArguments("--concurrency 0"));
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("at least 1, got 64, 0 and"));
}

TEST_F(BenchEngineCli, MaxTokensBeyondContextIsRejected) {
  const CommandResult result = RunW8a8Tool(EngineArguments("--max-tokens 100000"));
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("exceeds the context"));
}

}  // namespace
}  // namespace w8a8
