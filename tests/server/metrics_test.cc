// The Prometheus exposition of a real server: promtool accepts it, and a real Prometheus
// (/usr/bin/prometheus) scraping it every second returns the series through its HTTP API.
#include <signal.h>

#include <memory>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/server/server_test_util.h"

namespace w8a8::testing {
namespace {

using ::testing::HasSubstr;

std::string Fetch(const std::string& url) {
  std::string body;
  RunCommand("curl -s --max-time 5 '" + url + "'", &body);
  return body;
}

// Runs an instant query and returns the first sample's value, or nullopt when there is none.
std::optional<double> QueryPrometheus(int port, const std::string& query) {
  const std::string body = Fetch(absl::StrCat("http://127.0.0.1:", port,
                                              "/api/v1/query?query=", query));
  const nlohmann::json json = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || json.value("status", "") != "success") return std::nullopt;
  const nlohmann::json& result = json["data"]["result"];
  if (!result.is_array() || result.empty()) return std::nullopt;
  return std::stod(result[0]["value"][1].get<std::string>());
}

class MetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server::ServerOptions options = TestServerOptions();
    options.metrics_port = 0;
    auto started = StartTestServer(options);
    ASSERT_TRUE(started.ok()) << started.status();
    server_ = std::move(*started);
    for (int i = 0; i < 3; ++i) {
      auto context = ContextWithDeadline();
      v1::GenerateResponse response;
      ASSERT_TRUE(server_->stub
                      ->Generate(context.get(), GreedyRequest("Once upon a time", 10 + i),
                                 &response)
                      .ok());
    }
    auto context = ContextWithDeadline();
    v1::GenerateResponse response;
    v1::GenerateRequest invalid = GreedyRequest("Once", 10);
    invalid.mutable_sampling()->set_top_p(2);
    ASSERT_FALSE(server_->stub->Generate(context.get(), invalid, &response).ok());
  }

  std::string MetricsUrl() const {
    return absl::StrCat("http://127.0.0.1:", server_->server->metrics_port(), "/metrics");
  }

  std::unique_ptr<TestServer> server_;
};

TEST_F(MetricsTest, ExpositionPassesPromtool) {
  TempDir dir;
  const std::string exposition = Fetch(MetricsUrl());
  ASSERT_THAT(exposition, HasSubstr("w8a8_requests_total"));
  EXPECT_THAT(exposition,
              HasSubstr("w8a8_requests_total{code=\"OK\",finish_reason=\"length\"} 3"));
  EXPECT_THAT(exposition, HasSubstr("finish_reason=\"rejected\""));
  EXPECT_THAT(exposition, HasSubstr("w8a8_time_to_first_token_seconds_count 3"));
  EXPECT_THAT(exposition, HasSubstr("w8a8_generation_tokens_total 33"));
  EXPECT_THAT(exposition, HasSubstr("w8a8_prompt_tokens_total 15"));
  EXPECT_THAT(exposition, HasSubstr("w8a8_quantization_layers{scheme=\"per-channel\"} 35"));
  EXPECT_THAT(exposition, HasSubstr("w8a8_weight_sqnr_decibels{layer=\"model.layers.0.mlp.down_proj\"}"));
  EXPECT_THAT(exposition, HasSubstr("w8a8_model_info{"));
  EXPECT_THAT(exposition, HasSubstr("w8a8_kv_cache_usage_ratio"));
  EXPECT_THAT(exposition, HasSubstr("w8a8_batch_sequences_bucket"));

  WriteFile(dir / "metrics.txt", exposition);
  std::string lint;
  const int exit_code =
      RunCommand("promtool check metrics < " + (dir / "metrics.txt").string() + " 2>&1", &lint);
  EXPECT_EQ(exit_code, 0) << lint;
}

TEST_F(MetricsTest, PrometheusScrapesSeries) {
  TempDir dir;
  const int prometheus_port = FreePort();
  ASSERT_GT(prometheus_port, 0);
  WriteFile(dir / "prometheus.yml",
            absl::StrCat("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                         "scrape_configs:\n  - job_name: w8a8\n    static_configs:\n"
                         "      - targets: ['127.0.0.1:",
                         server_->server->metrics_port(), "']\n"));
  Subprocess prometheus(
      {"/usr/bin/prometheus", "--config.file=" + (dir / "prometheus.yml").string(),
       "--storage.tsdb.path=" + (dir / "data").string(),
       absl::StrCat("--web.listen-address=127.0.0.1:", prometheus_port)},
      dir / "prometheus.log");
  ASSERT_TRUE(prometheus.started());

  std::optional<double> requests;
  const bool scraped = WaitFor(
      [&] {
        requests = QueryPrometheus(prometheus_port, "w8a8_requests_total%7Bcode%3D%22OK%22%7D");
        return requests.has_value();
      },
      60);
  ASSERT_TRUE(scraped) << ReadFile(dir / "prometheus.log");
  EXPECT_EQ(*requests, 3);
  EXPECT_EQ(QueryPrometheus(prometheus_port, "up%7Bjob%3D%22w8a8%22%7D"), 1.0);
  EXPECT_EQ(QueryPrometheus(prometheus_port,
                            "w8a8_quantization_layers%7Bscheme%3D%22per-channel%22%7D"),
            35.0);
  EXPECT_EQ(QueryPrometheus(prometheus_port, "w8a8_generation_tokens_total"), 33.0);
  const std::optional<double> blocks = QueryPrometheus(prometheus_port, "w8a8_kv_cache_blocks");
  ASSERT_TRUE(blocks.has_value());
  EXPECT_GT(*blocks, 0);

  prometheus.Signal(SIGTERM);
  EXPECT_TRUE(prometheus.Wait(20).has_value());
}

}  // namespace
}  // namespace w8a8::testing
