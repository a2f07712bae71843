// RunEvaluation and scheduled evaluations in a real server: perplexity and multiple-choice
// accuracy of the served model, returned to admins and exported as w8a8_eval_* gauges.
#include <optional>
#include <sstream>
#include <string>

#include "core/eval.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"

namespace w8a8::testing {
namespace {

using ::testing::HasSubstr;

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

server::ServerOptions EvaluationServerOptions() {
  server::ServerOptions options = TestServerOptions();
  options.metrics_port = 0;
  options.host.evaluation.text_path = (SourceDir() / "docs/data/stories-eval.txt").string();
  options.host.evaluation.tasks_path = (SourceDir() / "docs/data/stories-choice.jsonl").string();
  return options;
}

std::string MetricsUrl(const TestServer& server) {
  return absl::StrCat("http://127.0.0.1:", server.server->metrics_port(), "/metrics");
}

TEST(EvaluationTest, AdminListenerRunsEvaluation) {
  auto started = StartTestServer(EvaluationServerOptions());
  ASSERT_TRUE(started.ok()) << started.status();
  TestServer& server = **started;

  v1::RunEvaluationResponse response;
  {
    auto context = ContextWithDeadline();
    const grpc::Status status =
        server.stub->RunEvaluation(context.get(), v1::RunEvaluationRequest(), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }

  auto admin_stub = v1::W8A8Serve::NewStub(
      grpc::CreateChannel(server.admin_address(), grpc::InsecureChannelCredentials()));
  auto context = ContextWithDeadline();
  const grpc::Status status =
      admin_stub->RunEvaluation(context.get(), v1::RunEvaluationRequest(), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.plan(), "auto/1");
  EXPECT_EQ(response.model_version(), 1);
  ASSERT_TRUE(response.has_perplexity());
  EXPECT_GT(response.perplexity(), 1);
  EXPECT_GT(response.tokens_scored(), 0);
  ASSERT_EQ(response.tasks_size(), 1);
  EXPECT_EQ(response.tasks(0).task(), "stories-choice");
  EXPECT_GT(response.tasks(0).items(), 0);
  EXPECT_GE(response.tasks(0).accuracy(), 0);
  EXPECT_LE(response.tasks(0).accuracy(), 1);

  // The offline evaluation of the same plan, with the server's windows, gives the same value.
  auto runtime = LoadOfflineRuntime("auto");
  ASSERT_TRUE(runtime.ok()) << runtime.status();
  const std::vector<int32_t> tokens = (*runtime)->tokenizer->Encode(
      ReadFile(SourceDir() / "docs/data/stories-eval.txt"), true, false);
  WindowOptions window;
  window.context_length = 512;
  window.stride = 256;
  auto offline = ComputePerplexity(*(*runtime)->model, tokens, window);
  ASSERT_TRUE(offline.ok()) << offline.status();
  EXPECT_NEAR(response.perplexity(), offline->perplexity(), 1e-9 * offline->perplexity());

  const std::string exposition = Fetch(MetricsUrl(server));
  const std::optional<double> perplexity =
      SampleValue(exposition, "w8a8_eval_perplexity{plan=\"auto/1\"}");
  ASSERT_TRUE(perplexity.has_value()) << exposition;
  EXPECT_NEAR(*perplexity, response.perplexity(), 1e-6 * response.perplexity());
  const std::optional<double> accuracy = SampleValue(
      exposition, "w8a8_eval_accuracy{plan=\"auto/1\",task=\"stories-choice\"}");
  ASSERT_TRUE(accuracy.has_value()) << exposition;
  EXPECT_NEAR(*accuracy, response.tasks(0).accuracy(), 1e-9);
  EXPECT_GT(SampleValue(exposition, "w8a8_eval_last_run_timestamp_seconds").value_or(0), 0);
}

TEST(EvaluationTest, AdminTokenAllowsPublicPort) {
  server::ServerOptions options = EvaluationServerOptions();
  options.host.evaluation.text_path.clear();
  options.admin_token = "admin-secret";
  auto started = StartTestServer(options);
  ASSERT_TRUE(started.ok()) << started.status();
  TestServer& server = **started;

  v1::RunEvaluationResponse response;
  {
    auto context = ContextWithDeadline();
    context->AddMetadata("authorization", "Bearer wrong");
    EXPECT_EQ(server.stub->RunEvaluation(context.get(), v1::RunEvaluationRequest(), &response)
                  .error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  auto context = ContextWithDeadline();
  context->AddMetadata("authorization", "Bearer admin-secret");
  const grpc::Status status =
      server.stub->RunEvaluation(context.get(), v1::RunEvaluationRequest(), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_FALSE(response.has_perplexity());
  EXPECT_EQ(response.tasks_size(), 1);
}

TEST(EvaluationTest, UnconfiguredEvaluationFails) {
  auto started = StartTestServer(TestServerOptions());
  ASSERT_TRUE(started.ok()) << started.status();
  auto admin_stub = v1::W8A8Serve::NewStub(
      grpc::CreateChannel((*started)->admin_address(), grpc::InsecureChannelCredentials()));
  auto context = ContextWithDeadline();
  v1::RunEvaluationResponse response;
  const grpc::Status status =
      admin_stub->RunEvaluation(context.get(), v1::RunEvaluationRequest(), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), HasSubstr("--eval-text"));
}

TEST(EvaluationTest, ScheduleRunsWithoutRequest) {
  server::ServerOptions options = EvaluationServerOptions();
  options.host.evaluation.interval_seconds = 0.2;
  auto started = StartTestServer(options);
  ASSERT_TRUE(started.ok()) << started.status();
  std::string exposition;
  EXPECT_TRUE(WaitFor([&] {
    exposition = Fetch(MetricsUrl(**started));
    return SampleValue(exposition, "w8a8_eval_perplexity{plan=\"auto/1\"}").has_value();
  })) << exposition;
  EXPECT_GT(SampleValue(exposition, "w8a8_eval_last_run_timestamp_seconds").value_or(0), 0);
}

TEST(EvaluationTest, MissingTextFileFailsLoad) {
  server::ServerOptions options = EvaluationServerOptions();
  options.host.evaluation.text_path = "/nonexistent/eval.txt";
  auto started = StartTestServer(options);
  ASSERT_FALSE(started.ok());
  EXPECT_THAT(started.status().message(), HasSubstr("/nonexistent/eval.txt"));
}

}  // namespace
}  // namespace w8a8::testing
