// Authentication, the admin listener and live re-quantization of a real in-process server.
#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/auth.h"
#include "tests/server/server_test_util.h"

namespace w8a8::testing {
namespace {

using ::testing::HasSubstr;

std::unique_ptr<grpc::ClientContext> ContextWithToken(const std::string& token) {
  auto context = ContextWithDeadline();
  if (!token.empty()) context->AddMetadata("authorization", "Bearer " + token);
  return context;
}

grpc::Status UpdatePlan(v1::W8A8Serve::Stub& stub, const std::string& token,
                        const std::string& plan, v1::UpdateQuantizationConfigResponse* response) {
  v1::UpdateQuantizationConfigRequest request;
  request.set_plan(plan);
  request.set_wait(true);
  auto context = ContextWithToken(token);
  return stub.UpdateQuantizationConfig(context.get(), request, response);
}

TEST(ConstantTimeEqualsTest, ComparesWholeStrings) {
  EXPECT_TRUE(server::ConstantTimeEquals("secret", "secret"));
  EXPECT_FALSE(server::ConstantTimeEquals("secret", "secreT"));
  EXPECT_FALSE(server::ConstantTimeEquals("secret", "secret2"));
  EXPECT_FALSE(server::ConstantTimeEquals("", "x"));
  EXPECT_TRUE(server::ConstantTimeEquals("", ""));
}

TEST(AdminAuthTest, UpdateNeedsAdminToken) {
  server::ServerOptions options = TestServerOptions();
  options.admin_token = "admin-secret";
  auto started = StartTestServer(options);
  ASSERT_TRUE(started.ok()) << started.status();
  TestServer& server = **started;

  v1::UpdateQuantizationConfigResponse response;
  EXPECT_EQ(UpdatePlan(*server.stub, "", "per-group", &response).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(UpdatePlan(*server.stub, "wrong", "per-group", &response).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);

  const grpc::Status accepted = UpdatePlan(*server.stub, "admin-secret", "per-group", &response);
  ASSERT_TRUE(accepted.ok()) << accepted.error_message();
  EXPECT_EQ(response.update_state(), v1::UPDATE_STATE_SUCCEEDED);
  EXPECT_EQ(response.model_version(), 2);
  EXPECT_EQ(response.summary().plan(), "per-group");
  EXPECT_EQ(response.summary().layers_per_scheme().at("per-group"), 35);
}

TEST(AdminAuthTest, AdminListenerServesWithoutToken) {
  auto started = StartTestServer(TestServerOptions());
  ASSERT_TRUE(started.ok()) << started.status();
  TestServer& server = **started;

  v1::UpdateQuantizationConfigResponse response;
  const grpc::Status public_status = UpdatePlan(*server.stub, "", "per-channel", &response);
  EXPECT_EQ(public_status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(public_status.error_message(), HasSubstr("admin listener"));

  auto admin_stub = v1::W8A8Serve::NewStub(
      grpc::CreateChannel(server.admin_address(), grpc::InsecureChannelCredentials()));
  const grpc::Status admin_status = UpdatePlan(*admin_stub, "", "per-channel", &response);
  ASSERT_TRUE(admin_status.ok()) << admin_status.error_message();
  EXPECT_EQ(response.update_state(), v1::UPDATE_STATE_SUCCEEDED);
}

TEST(AdminAuthTest, InferenceNeedsApiToken) {
  server::ServerOptions options = TestServerOptions();
  options.api_token = "api-secret";
  auto started = StartTestServer(options);
  ASSERT_TRUE(started.ok()) << started.status();
  TestServer& server = **started;

  for (const std::string token : {"", "wrong"}) {
    auto context = ContextWithToken(token);
    v1::GenerateResponse response;
    const grpc::Status status =
        server.stub->Generate(context.get(), GreedyRequest("Once", 4), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << "token '" << token << "'";
  }
  auto context = ContextWithToken("api-secret");
  v1::GenerateResponse response;
  const grpc::Status status =
      server.stub->Generate(context.get(), GreedyRequest("Once", 4), &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST(QuantizationUpdateTest, InvalidConfigKeepsOldModel) {
  auto started = StartTestServer(TestServerOptions());
  ASSERT_TRUE(started.ok()) << started.status();
  TestServer& server = **started;
  auto admin_stub = v1::W8A8Serve::NewStub(
      grpc::CreateChannel(server.admin_address(), grpc::InsecureChannelCredentials()));

  v1::UpdateQuantizationConfigResponse response;
  const grpc::Status unknown_plan = UpdatePlan(*admin_stub, "", "per-nothing", &response);
  EXPECT_EQ(unknown_plan.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(unknown_plan.error_message(), HasSubstr("per-nothing"));

  const std::vector<std::string> bad_configs = {
      R"({"scheme": "per-group", "group_size": 0})",
      R"({"format": "w8a8-plan", "version": 1, "layers": [{"name": "model.layers.99.mlp.up_proj", "scheme": "per-channel"}]})",
      "not: [valid",
  };
  for (const std::string& config : bad_configs) {
    v1::UpdateQuantizationConfigRequest request;
    request.set_plan_json(config);
    request.set_wait(true);
    auto context = ContextWithDeadline();
    const grpc::Status status =
        admin_stub->UpdateQuantizationConfig(context.get(), request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << config;
  }

  auto context = ContextWithDeadline();
  v1::QuantizationConfig current;
  ASSERT_TRUE(admin_stub
                  ->GetQuantizationConfig(context.get(), v1::GetQuantizationConfigRequest(),
                                          &current)
                  .ok());
  EXPECT_EQ(current.model_version(), 1);
  EXPECT_EQ(current.summary().plan(), "auto");
  EXPECT_EQ(current.update_state(), v1::UPDATE_STATE_IDLE);
  EXPECT_EQ(CheckHealth(server.channel), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST(QuantizationUpdateTest, ConfigJsonSwapsModel) {
  auto started = StartTestServer(TestServerOptions());
  ASSERT_TRUE(started.ok()) << started.status();
  TestServer& server = **started;
  auto admin_stub = v1::W8A8Serve::NewStub(
      grpc::CreateChannel(server.admin_address(), grpc::InsecureChannelCredentials()));

  v1::UpdateQuantizationConfigRequest request;
  request.set_plan_json(R"({"scheme": "per-group", "group_size": 32})");
  request.set_wait(true);
  auto context = ContextWithDeadline();
  v1::UpdateQuantizationConfigResponse response;
  const grpc::Status status =
      admin_stub->UpdateQuantizationConfig(context.get(), request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.update_state(), v1::UPDATE_STATE_SUCCEEDED);

  auto get_context = ContextWithDeadline();
  v1::QuantizationConfig current;
  ASSERT_TRUE(server.stub
                  ->GetQuantizationConfig(get_context.get(), v1::GetQuantizationConfigRequest(),
                                          &current)
                  .ok());
  EXPECT_EQ(current.model_version(), 2);
  EXPECT_THAT(current.plan_json(), HasSubstr("\"group_size\": 32"));
  int per_group = 0;
  for (const v1::LayerQuantization& layer : current.layers()) {
    if (layer.scheme() == "per-group") ++per_group;
  }
  EXPECT_EQ(per_group, 35);
}

TEST(QuantizationUpdateTest, AnalyzeReturnsLayerTable) {
  auto started = StartTestServer(TestServerOptions());
  ASSERT_TRUE(started.ok()) << started.status();
  TestServer& server = **started;

  v1::AnalyzeQuantizationRequest request;
  request.set_plan("auto");
  auto context = ContextWithDeadline();
  v1::AnalyzeQuantizationResponse response;
  const grpc::Status status = server.stub->AnalyzeQuantization(context.get(), request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  const nlohmann::json analysis = nlohmann::json::parse(response.analysis_json(), nullptr, false);
  ASSERT_FALSE(analysis.is_discarded());
  ASSERT_TRUE(analysis.contains("layers"));
  EXPECT_EQ(analysis["layers"].size(), 35u);
  EXPECT_EQ(response.layers_per_scheme().at("per-channel"), 35);
  EXPECT_THAT(response.plan_json(), HasSubstr("w8a8-plan"));

  // A file path would let a client probe the server's files, so only policy names pass.
  request.set_plan("/etc/hostname");
  auto path_context = ContextWithDeadline();
  const grpc::Status path_status =
      server.stub->AnalyzeQuantization(path_context.get(), request, &response);
  EXPECT_EQ(path_status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST(QuantizationUpdateTest, LiveUpdateUnderLoadFailsNoRequest) {
  auto started = StartTestServer(TestServerOptions());
  ASSERT_TRUE(started.ok()) << started.status();
  TestServer& server = **started;
  auto admin_stub = v1::W8A8Serve::NewStub(
      grpc::CreateChannel(server.admin_address(), grpc::InsecureChannelCredentials()));

  std::atomic<bool> stop{false};
  std::atomic<int> succeeded{0};
  std::mutex mutex;
  std::vector<std::string> failures;
  std::set<int64_t> versions;
  std::vector<std::thread> clients;
  for (int i = 0; i < 6; ++i) {
    clients.emplace_back([&, i] {
      while (!stop) {
        auto context = ContextWithDeadline();
        auto reader =
            server.stub->GenerateStream(context.get(), GreedyRequest("Once upon a time", 30 + i));
        v1::GenerateStreamResponse message;
        int64_t version = 0;
        while (reader->Read(&message)) version = message.model_version();
        const grpc::Status status = reader->Finish();
        std::lock_guard<std::mutex> lock(mutex);
        if (status.ok()) {
          ++succeeded;
          versions.insert(version);
        } else {
          failures.push_back(status.error_message());
        }
      }
    });
  }

  ASSERT_TRUE(WaitFor([&] { return succeeded >= 6; }, 30));
  v1::UpdateQuantizationConfigResponse response;
  const grpc::Status first = UpdatePlan(*admin_stub, "", "per-group", &response);
  EXPECT_TRUE(first.ok()) << first.error_message();
  EXPECT_EQ(response.update_state(), v1::UPDATE_STATE_SUCCEEDED);
  const int after_first = succeeded;
  ASSERT_TRUE(WaitFor([&] { return succeeded >= after_first + 6; }, 30));
  const grpc::Status second = UpdatePlan(*admin_stub, "", "per-channel", &response);
  EXPECT_TRUE(second.ok()) << second.error_message();
  const int after_second = succeeded;
  ASSERT_TRUE(WaitFor([&] { return succeeded >= after_second + 6; }, 30));
  stop = true;
  for (std::thread& client : clients) client.join();

  EXPECT_THAT(failures, ::testing::IsEmpty());
  EXPECT_TRUE(versions.contains(1));
  EXPECT_TRUE(versions.contains(2));
  EXPECT_TRUE(versions.contains(3));
  EXPECT_EQ(server.server->host()->version(), 3);
}

}  // namespace
}  // namespace w8a8::testing
