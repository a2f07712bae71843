// GenerateStream message sizes under --stream-interval, on real in-process servers with the
// stories260K model, and the validation of the flag. Build the w8a8-server target first for
// the command-line case.
#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/flags.h"
#include "tests/server/server_test_util.h"

ABSL_DECLARE_FLAG(std::string, model);
ABSL_DECLARE_FLAG(int64_t, stream_interval);

namespace w8a8::testing {
namespace {

using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

StreamResult ReadStream(TestServer& server, const v1::GenerateRequest& request) {
  StreamResult result;
  auto context = ContextWithDeadline();
  auto reader = server.stub->GenerateStream(context.get(), request);
  v1::GenerateStreamResponse message;
  while (reader->Read(&message)) result.Append(message);
  result.status = reader->Finish();
  return result;
}

v1::GenerateRequest TenTokensIgnoringEos() {
  v1::GenerateRequest request = GreedyRequest("Once upon a time", 10);
  request.mutable_sampling()->set_ignore_eos(true);
  request.set_logprobs(true);
  return request;
}

v1::GenerateRequest SeededSampling(int64_t max_tokens) {
  v1::GenerateRequest request;
  request.set_text("The little dog");
  request.mutable_sampling()->set_temperature(0.9);
  request.mutable_sampling()->set_top_p(0.9);
  request.mutable_sampling()->set_seed(1234);
  request.mutable_sampling()->set_max_tokens(max_tokens);
  request.mutable_sampling()->set_ignore_eos(true);
  return request;
}

// Checks that a stream sent with `interval` has at least `interval` tokens in every message but
// the last, which ends the request.
void ExpectMessagesOfAtLeast(const StreamResult& stream, int interval, int total_tokens) {
  SCOPED_TRACE(absl::StrCat("tokens per message: ",
                            ::testing::PrintToString(stream.tokens_per_message)));
  ASSERT_FALSE(stream.messages.empty());
  for (size_t i = 0; i + 1 < stream.messages.size(); ++i) {
    EXPECT_GE(stream.tokens_per_message[i], interval) << "message " << i;
    EXPECT_EQ(stream.messages[i].finish_reason(), v1::FINISH_REASON_UNSPECIFIED)
        << "message " << i;
    EXPECT_FALSE(stream.messages[i].has_usage()) << "message " << i;
  }
  EXPECT_GE(stream.tokens_per_message.back(), 1);
  EXPECT_LE(static_cast<int>(stream.messages.size()),
            (total_tokens + interval - 1) / interval);
  EXPECT_EQ(static_cast<int>(stream.token_ids.size()), total_tokens);
}

class StreamIntervalTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto every_token = StartTestServer(TestServerOptions());
    ASSERT_TRUE(every_token.ok()) << every_token.status();
    every_token_ = every_token->release();

    server::ServerOptions options = TestServerOptions();
    options.stream_interval = 4;
    auto every_fourth = StartTestServer(options);
    ASSERT_TRUE(every_fourth.ok()) << every_fourth.status();
    every_fourth_ = every_fourth->release();
  }

  static void TearDownTestSuite() {
    delete every_token_;
    every_token_ = nullptr;
    delete every_fourth_;
    every_fourth_ = nullptr;
  }

  static TestServer* every_token_;   // --stream-interval 1, the default.
  static TestServer* every_fourth_;  // --stream-interval 4.
};

TestServer* StreamIntervalTest::every_token_ = nullptr;
TestServer* StreamIntervalTest::every_fourth_ = nullptr;

TEST_F(StreamIntervalTest, IntervalFourSendsFourTokensPerMessage) {
  const v1::GenerateRequest request = TenTokensIgnoringEos();
  const v1::GenerateResponse unary = Unary(*every_fourth_, request);
  const StreamResult stream = ReadStream(*every_fourth_, request);

  ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
  // 4, 4 and 2 tokens, or fewer messages when more tokens queued during a write.
  ExpectMessagesOfAtLeast(stream, 4, 10);
  EXPECT_THAT(stream.token_ids, ElementsAreArray(unary.token_ids()));
  EXPECT_EQ(stream.logprob_token_ids, stream.token_ids);
  EXPECT_EQ(stream.text, unary.text());
  EXPECT_FALSE(stream.text.empty());

  const v1::GenerateStreamResponse& last = stream.messages.back();
  EXPECT_EQ(last.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(last.usage().completion_tokens(), 10);
  EXPECT_EQ(last.usage().prompt_tokens(), unary.usage().prompt_tokens());
  EXPECT_EQ(last.model_version(), 1);
  EXPECT_GT(last.timings().total_seconds(), 0);
}

TEST_F(StreamIntervalTest, IntervalFourMatchesUnarySeededSampling) {
  const v1::GenerateRequest request = SeededSampling(30);
  const v1::GenerateResponse unary = Unary(*every_fourth_, request);
  const StreamResult stream = ReadStream(*every_fourth_, request);

  ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
  ExpectMessagesOfAtLeast(stream, 4, 30);
  EXPECT_THAT(stream.token_ids, ElementsAreArray(unary.token_ids()));
  EXPECT_EQ(stream.text, unary.text());
}

TEST_F(StreamIntervalTest, IntervalAboveMaxTokensSendsOneMessage) {
  v1::GenerateRequest request = TenTokensIgnoringEos();
  request.mutable_sampling()->set_max_tokens(3);
  const StreamResult stream = ReadStream(*every_fourth_, request);

  ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
  ASSERT_EQ(stream.messages.size(), 1u);
  EXPECT_EQ(stream.tokens_per_message[0], 3);
  EXPECT_EQ(stream.messages[0].finish_reason(), v1::FINISH_REASON_LENGTH);
}

TEST_F(StreamIntervalTest, EchoedPromptLeadsFirstMessage) {
  v1::GenerateRequest request = TenTokensIgnoringEos();
  request.set_echo(true);
  const v1::GenerateResponse unary = Unary(*every_fourth_, request);
  const StreamResult stream = ReadStream(*every_fourth_, request);

  ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
  const int prompt_tokens = unary.usage().prompt_tokens();
  ASSERT_GT(prompt_tokens, 0);
  // The prompt rides in the first message and does not count towards the interval.
  EXPECT_GE(stream.tokens_per_message[0], prompt_tokens + 4);
  EXPECT_THAT(stream.token_ids, ElementsAreArray(unary.token_ids()));
  EXPECT_EQ(stream.text, unary.text());
  EXPECT_EQ(static_cast<int>(stream.token_ids.size()), prompt_tokens + 10);
}

TEST_F(StreamIntervalTest, DefaultIntervalMatchesUnary) {
  for (const v1::GenerateRequest& request : {TenTokensIgnoringEos(), SeededSampling(40)}) {
    const v1::GenerateResponse unary = Unary(*every_token_, request);
    const StreamResult stream = ReadStream(*every_token_, request);

    ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
    ExpectMessagesOfAtLeast(stream, 1, request.sampling().max_tokens());
    EXPECT_THAT(stream.token_ids, ElementsAreArray(unary.token_ids()));
    EXPECT_EQ(stream.text, unary.text());
    EXPECT_EQ(stream.messages.back().finish_reason(), v1::FINISH_REASON_LENGTH);
  }
}

TEST_F(StreamIntervalTest, DeadlineEndsStreamWithoutFinalMessage) {
  v1::GenerateRequest request = GreedyRequest("Once upon a time", 2000);
  request.mutable_sampling()->set_ignore_eos(true);
  auto context = ContextWithDeadline(0.3);
  auto reader = every_fourth_->stub->GenerateStream(context.get(), request);
  v1::GenerateStreamResponse message;
  int messages = 0;
  while (reader->Read(&message)) {
    ++messages;
    EXPECT_EQ(message.finish_reason(), v1::FINISH_REASON_UNSPECIFIED);
  }
  const grpc::Status status = reader->Finish();

  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(
      WaitFor([] { return every_fourth_->server->host()->engine().Stats().running == 0; }, 10));
}

TEST(StreamIntervalTimeoutTest, ServerTimeoutEndsStreamWithoutFinalMessage) {
  server::ServerOptions options = TestServerOptions();
  options.stream_interval = 4;
  options.host.engine.default_timeout = absl::Milliseconds(60);
  auto started = StartTestServer(options);
  ASSERT_TRUE(started.ok()) << started.status();
  TestServer& server = **started;

  v1::GenerateRequest request = GreedyRequest("Once upon a time", 2000);
  request.mutable_sampling()->set_ignore_eos(true);
  // No client deadline, so the server's default timeout ends the request with a failed status.
  grpc::ClientContext context;
  auto reader = server.stub->GenerateStream(&context, request);
  v1::GenerateStreamResponse message;
  int messages = 0;
  while (reader->Read(&message)) {
    ++messages;
    EXPECT_GE(message.token_ids_size(), 1);
    EXPECT_EQ(message.finish_reason(), v1::FINISH_REASON_UNSPECIFIED);
    EXPECT_FALSE(message.has_usage());
  }
  const grpc::Status status = reader->Finish();

  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << status.error_message();
  EXPECT_GE(messages, 1);
  EXPECT_TRUE(WaitFor([&] { return server.server->host()->engine().Stats().running == 0; }, 10));
}

TEST(StreamIntervalFlagTest, NonPositiveValuesRejected) {
  absl::FlagSaver saver;
  absl::SetFlag(&FLAGS_model, Stories260KGguf().string());
  for (const int64_t value : {int64_t{0}, int64_t{-3}}) {
    absl::SetFlag(&FLAGS_stream_interval, value);
    const absl::StatusOr<server::ServerOptions> options = server::ServerOptionsFromFlags();
    ASSERT_FALSE(options.ok()) << value;
    EXPECT_EQ(options.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(options.status().message(),
                HasSubstr(absl::StrCat("--stream-interval=", value)));
  }
}

TEST(StreamIntervalFlagTest, DefaultIsOne) {
  absl::FlagSaver saver;
  absl::SetFlag(&FLAGS_model, Stories260KGguf().string());
  const absl::StatusOr<server::ServerOptions> options = server::ServerOptionsFromFlags();
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->stream_interval, 1);
}

TEST(StreamIntervalFlagTest, EnvironmentSetsInterval) {
  absl::FlagSaver saver;
  absl::SetFlag(&FLAGS_model, Stories260KGguf().string());
  ASSERT_EQ(setenv("W8A8_STREAM_INTERVAL", "8", 1), 0);
  const absl::Status applied = server::ApplyEnvironmentToFlags();
  unsetenv("W8A8_STREAM_INTERVAL");
  ASSERT_TRUE(applied.ok()) << applied;

  const absl::StatusOr<server::ServerOptions> options = server::ServerOptionsFromFlags();
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->stream_interval, 8);
}

TEST(StreamIntervalFlagTest, EnvironmentNonNumberRejected) {
  absl::FlagSaver saver;
  ASSERT_EQ(setenv("W8A8_STREAM_INTERVAL", "four", 1), 0);
  const absl::Status applied = server::ApplyEnvironmentToFlags();
  unsetenv("W8A8_STREAM_INTERVAL");

  ASSERT_FALSE(applied.ok());
  EXPECT_THAT(applied.message(), HasSubstr("W8A8_STREAM_INTERVAL='four'"));
}

TEST(StreamIntervalFlagTest, ServerBinaryExitsOnZero) {
  ASSERT_TRUE(std::filesystem::exists(ServerBinary())) << ServerBinary() << " is not built";
  std::string output;
  const int exit_code =
      RunCommand(absl::StrCat(ServerBinary().string(), " --model=", Stories260KGguf().string(),
                              " --stream-interval=0 --port=0 --metrics-port=-1 --admin-port=-1 "
                              "2>&1"),
                 &output);

  EXPECT_EQ(exit_code, 2) << output;
  EXPECT_THAT(output, HasSubstr("--stream-interval=0 is invalid"));
}

}  // namespace
}  // namespace w8a8::testing
