// The real w8a8-server and w8a8-client binaries: graceful SIGTERM drain, environment variables
// and the client command line. Build the w8a8-server and w8a8-client targets first.
#include <signal.h>

#include <memory>
#include <regex>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/server/server_test_util.h"

namespace w8a8::testing {
namespace {

using ::testing::HasSubstr;

// A w8a8-server subprocess on 127.0.0.1 with a kernel-chosen port.
class ServerProcess {
 public:
  ServerProcess(const TempDir& dir, std::vector<std::string> flags,
                const std::vector<std::string>& environment = {})
      : log_path_(dir / "server.log") {
    std::vector<std::string> argv = {ServerBinary().string(), "--host=127.0.0.1", "--port=0",
                                     "--metrics-port=-1", "--admin-port=-1",
                                     "--kv-cache-mib=64"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    process_ = std::make_unique<Subprocess>(argv, log_path_, environment);
  }

  // Waits for the listening line in the log and then for health SERVING.
  bool WaitUntilServing() {
    const std::regex listening("listening on 127\\.0\\.0\\.1:([0-9]+)");
    const bool bound = WaitFor(
        [&] {
          std::smatch match;
          const std::string log = ReadFile(log_path_);
          if (!std::regex_search(log, match, listening)) return false;
          port_ = std::stoi(match[1]);
          return true;
        },
        30);
    if (!bound) return false;
    channel_ = grpc::CreateChannel(address(), grpc::InsecureChannelCredentials());
    return WaitFor(
        [&] { return CheckHealth(channel_) == grpc::health::v1::HealthCheckResponse::SERVING; },
        60);
  }

  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }
  std::string log() const { return ReadFile(log_path_); }
  Subprocess& process() { return *process_; }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }

 private:
  std::filesystem::path log_path_;
  std::unique_ptr<Subprocess> process_;
  int port_ = 0;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST(ServerBinaryTest, SigtermDrainsRunningRequestAndExitsZero) {
  ASSERT_TRUE(std::filesystem::exists(ServerBinary())) << ServerBinary() << " is not built";
  TempDir dir;
  ServerProcess server(dir, {"--model=" + Stories260KGguf().string(),
                             "--grace-period-seconds=60"});
  ASSERT_TRUE(server.WaitUntilServing()) << server.log();
  auto stub = v1::W8A8Serve::NewStub(server.channel());

  v1::GenerateRequest request = GreedyRequest("Once upon a time", 120);
  request.mutable_sampling()->set_ignore_eos(true);
  auto context = ContextWithDeadline(120);
  auto reader = stub->GenerateStream(context.get(), request);
  v1::GenerateStreamResponse message;
  ASSERT_TRUE(reader->Read(&message));
  server.process().Signal(SIGTERM);

  EXPECT_TRUE(WaitFor(
      [&] {
        return CheckHealth(server.channel()) != grpc::health::v1::HealthCheckResponse::SERVING;
      },
      10));
  int64_t tokens = message.token_ids_size();
  v1::GenerateStreamResponse last;
  while (reader->Read(&message)) {
    tokens += message.token_ids_size();
    last = message;
  }
  const grpc::Status status = reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(tokens, 120);
  EXPECT_EQ(last.finish_reason(), v1::FINISH_REASON_LENGTH);

  const std::optional<int> exit_code = server.process().Wait(60);
  ASSERT_TRUE(exit_code.has_value()) << server.log();
  EXPECT_EQ(*exit_code, 0) << server.log();
  EXPECT_THAT(server.log(), HasSubstr("server stopped"));
}

TEST(ServerBinaryTest, CommandLineBeatsEnvironment) {
  ASSERT_TRUE(std::filesystem::exists(ServerBinary())) << ServerBinary() << " is not built";
  TempDir dir;
  ServerProcess server(dir, {"--api-token=command-line-token"},
                       {"W8A8_MODEL=" + Stories260KGguf().string(),
                        "W8A8_API_TOKEN=environment-token"});
  ASSERT_TRUE(server.WaitUntilServing()) << server.log();
  auto stub = v1::W8A8Serve::NewStub(server.channel());

  for (const auto& [token, expected] :
       {std::pair{std::string("command-line-token"), grpc::StatusCode::OK},
        std::pair{std::string("environment-token"), grpc::StatusCode::UNAUTHENTICATED}}) {
    auto context = ContextWithDeadline();
    context->AddMetadata("authorization", "Bearer " + token);
    v1::GenerateResponse response;
    const grpc::Status status =
        stub->Generate(context.get(), GreedyRequest("Once upon a time", 5), &response);
    EXPECT_EQ(status.error_code(), expected) << token << ": " << status.error_message();
  }
  server.process().Signal(SIGTERM);
  EXPECT_EQ(server.process().Wait(60), 0) << server.log();
}

TEST(ServerBinaryTest, InvalidEnvironmentValueExitsTwo) {
  ASSERT_TRUE(std::filesystem::exists(ServerBinary())) << ServerBinary() << " is not built";
  TempDir dir;
  ServerProcess server(dir, {"--model=" + Stories260KGguf().string()}, {"W8A8_MAX_QUEUE=many"});
  EXPECT_EQ(server.process().Wait(30), 2);
  EXPECT_THAT(server.log(), HasSubstr("W8A8_MAX_QUEUE"));
}

TEST(ServerBinaryTest, MissingModelExitsTwo) {
  ASSERT_TRUE(std::filesystem::exists(ServerBinary())) << ServerBinary() << " is not built";
  TempDir dir;
  ServerProcess server(dir, {});
  EXPECT_EQ(server.process().Wait(30), 2);
  EXPECT_THAT(server.log(), HasSubstr("--model is required"));
}

TEST(ClientBinaryTest, GeneratesAndChecksHealth) {
  ASSERT_TRUE(std::filesystem::exists(ClientBinary())) << ClientBinary() << " is not built";
  TempDir dir;
  ServerProcess server(dir, {"--model=" + Stories260KGguf().string()});
  ASSERT_TRUE(server.WaitUntilServing()) << server.log();
  const std::string client = ClientBinary().string() + " --address=" + server.address();

  std::string output;
  EXPECT_EQ(RunCommand(client + " health", &output), 0);
  EXPECT_EQ(output, "SERVING\n");

  EXPECT_EQ(RunCommand(client +
                           " generate --prompt 'Once upon a time' --max-tokens 12 --temperature 0",
                       &output),
            0);
  EXPECT_THAT(output, HasSubstr(", there was a little girl"));

  EXPECT_EQ(RunCommand(client + " generate --stream --prompt 'Once upon a time' --max-tokens 12 "
                                "--temperature 0",
                       &output),
            0);
  EXPECT_THAT(output, HasSubstr(", there was a little girl"));

  EXPECT_EQ(RunCommand(client + " generate --prompt 'Once' --top-p 3 2>&1", &output), 1);
  EXPECT_THAT(output, HasSubstr("INVALID_ARGUMENT"));
  EXPECT_THAT(output, HasSubstr("sampling.top_p"));

  EXPECT_EQ(RunCommand(client + " load --prompt 'Once upon a time' --max-tokens 8 "
                                "--temperature 0 --concurrency 4 --requests 12 --json",
                       &output),
            0);
  const nlohmann::json report = nlohmann::json::parse(output, nullptr, false);
  ASSERT_FALSE(report.is_discarded()) << output;
  EXPECT_EQ(report["succeeded"], 12);
  EXPECT_EQ(report["failed"], 0);
  EXPECT_EQ(report["generated_tokens"], 96);
  EXPECT_EQ(report["time_to_first_token_seconds"]["count"], 12);
  EXPECT_EQ(report["unary"], false);

  // Unary calls return each completion in one reply, so only request latency is measured.
  EXPECT_EQ(RunCommand(client + " load --unary --prompt 'Once upon a time' --max-tokens 8 "
                                "--temperature 0 --concurrency 3 --requests 7 --json",
                       &output),
            0);
  const nlohmann::json unary = nlohmann::json::parse(output, nullptr, false);
  ASSERT_FALSE(unary.is_discarded()) << output;
  EXPECT_EQ(unary["unary"], true);
  EXPECT_EQ(unary["succeeded"], 7);
  EXPECT_EQ(unary["failed"], 0);
  EXPECT_EQ(unary["generated_tokens"], 56);
  EXPECT_EQ(unary["request_latency_seconds"]["count"], 7);
  EXPECT_EQ(unary["time_to_first_token_seconds"]["count"], 0);
  EXPECT_EQ(RunCommand(client + " load --unary --prompt 'Once' --max-tokens 4 --concurrency 2 "
                                "--requests 2",
                       &output),
            0);
  EXPECT_THAT(output, HasSubstr("2 concurrent unary calls"));
  EXPECT_THAT(output, HasSubstr("2 succeeded, 0 failed"));

  // With echo the replies carry the prompt's ids too, which are not generated tokens.
  for (const std::string calls : {"", " --unary"}) {
    EXPECT_EQ(RunCommand(client + " load" + calls +
                             " --echo --ignore-eos --prompt 'Once upon a time' --max-tokens 8 "
                             "--concurrency 2 --requests 3 --json",
                         &output),
              0);
    const nlohmann::json echoed = nlohmann::json::parse(output, nullptr, false);
    ASSERT_FALSE(echoed.is_discarded()) << output;
    EXPECT_EQ(echoed["generated_tokens"], 24) << calls;
    EXPECT_EQ(echoed["time_to_first_token_seconds"]["count"], calls.empty() ? 3 : 0) << calls;
    EXPECT_EQ(echoed["inter_token_latency_seconds"]["count"], calls.empty() ? 21 : 0) << calls;
  }

  EXPECT_EQ(RunCommand(client + " info", &output), 0);
  EXPECT_THAT(output, HasSubstr("\"tokenizer_type\": \"sentencepiece\""));
  EXPECT_EQ(RunCommand(client + " quant get", &output), 0);
  EXPECT_THAT(output, HasSubstr("\"per-channel\": 35"));

  server.process().Signal(SIGTERM);
  EXPECT_EQ(server.process().Wait(60), 0) << server.log();
}

}  // namespace
}  // namespace w8a8::testing
