// Generation calls of a real in-process server on the stories260K model under load that the
// gRPC threads do not bound: more open streams than --max-threads, clients that cancel
// mid-stream over and over, and a client that reads slowly.
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"

namespace w8a8::testing {
namespace {

using ::testing::AnyOf;
using ::testing::ElementsAreArray;

v1::GenerateRequest LongRequest(int64_t max_tokens) {
  v1::GenerateRequest request = GreedyRequest("Once upon a time", max_tokens);
  request.mutable_sampling()->set_ignore_eos(true);
  return request;
}

TEST(StreamConcurrencyTest, StreamsBeyondMaxThreadsAllComplete) {
  // Four threads leave the synchronous RPCs (Tokenize here) room to run. The generation calls
  // use the callback API, so 24 open streams need no thread of that quota.
  constexpr int kMaxThreads = 4;
  constexpr int kStreams = 24;
  server::ServerOptions options = TestServerOptions();
  options.max_threads = kMaxThreads;
  options.host.engine.max_running_sequences = 32;
  auto started = StartTestServer(options);
  ASSERT_TRUE(started.ok()) << started.status();
  TestServer& server = **started;

  const std::vector<std::string> prompts = {"Once upon a time", "The cat", "Lily and Ben",
                                            "One day, a big"};
  std::vector<v1::GenerateRequest> requests;
  std::vector<v1::GenerateResponse> solo;
  for (int i = 0; i < kStreams; ++i) {
    v1::GenerateRequest request = GreedyRequest(prompts[i % prompts.size()], 60 + 4 * i);
    request.mutable_sampling()->set_ignore_eos(true);
    request.set_request_id(absl::StrCat("wide-", i));
    requests.push_back(request);
    solo.push_back(Unary(server, request));
  }

  // Every stream delivers its first message while all of them are open, so they are served at
  // the same time and not one after another.
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::GenerateStreamResponse>>> readers;
  for (int i = 0; i < kStreams; ++i) {
    contexts.push_back(ContextWithDeadline(120));
    readers.push_back(server.stub->GenerateStream(contexts.back().get(), requests[i]));
  }
  std::vector<StreamResult> outputs(kStreams);
  v1::GenerateStreamResponse message;
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(readers[i]->Read(&message)) << "stream " << i << ": "
                                            << readers[i]->Finish().error_message();
    outputs[i].Append(message);
  }

  auto tokenize_context = ContextWithDeadline();
  v1::TokenizeRequest tokenize;
  tokenize.set_text("Once upon a time");
  v1::TokenizeResponse tokens;
  const grpc::Status tokenized =
      server.stub->Tokenize(tokenize_context.get(), tokenize, &tokens);
  EXPECT_TRUE(tokenized.ok()) << tokenized.error_message();
  EXPECT_EQ(tokens.token_ids_size(), 5);

  for (int i = 0; i < kStreams; ++i) {
    while (readers[i]->Read(&message)) outputs[i].Append(message);
    outputs[i].status = readers[i]->Finish();
  }
  for (int i = 0; i < kStreams; ++i) {
    SCOPED_TRACE(absl::StrCat("stream ", i));
    ASSERT_TRUE(outputs[i].status.ok()) << outputs[i].status.error_message();
    EXPECT_THAT(outputs[i].token_ids, ElementsAreArray(solo[i].token_ids()));
    EXPECT_EQ(outputs[i].text, solo[i].text());
    ASSERT_FALSE(outputs[i].messages.empty());
    const v1::GenerateStreamResponse& last = outputs[i].messages.back();
    EXPECT_EQ(last.finish_reason(), v1::FINISH_REASON_LENGTH);
    EXPECT_EQ(last.usage().completion_tokens(), 60 + 4 * i);
    EXPECT_EQ(last.request_id(), absl::StrCat("wide-", i));
  }
}

class StreamCancelTest : public ::testing::TestWithParam<int64_t> {
 protected:
  void SetUp() override {
    server::ServerOptions options = TestServerOptions();
    options.stream_interval = GetParam();
    auto started = StartTestServer(options);
    ASSERT_TRUE(started.ok()) << started.status();
    server_ = *std::move(started);
  }

  std::unique_ptr<TestServer> server_;
};

TEST_P(StreamCancelTest, RepeatedMidStreamCancelsLeaveServerWorking) {
  const v1::GenerateRequest check = GreedyRequest("Once upon a time", 40);
  const v1::GenerateResponse before = Unary(*server_, check);

  constexpr int kIterations = 50;
  for (int i = 0; i < kIterations; ++i) {
    SCOPED_TRACE(absl::StrCat("iteration ", i));
    grpc::ClientContext context;
    v1::GenerateRequest request = LongRequest(1500);
    request.set_request_id(absl::StrCat("cancel-loop-", i));
    auto reader = server_->stub->GenerateStream(&context, request);
    // Cancel before the first message, after it, and a few messages in.
    const int reads = i % 4;
    v1::GenerateStreamResponse message;
    for (int read = 0; read < reads; ++read) ASSERT_TRUE(reader->Read(&message));
    context.TryCancel();
    while (reader->Read(&message)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
    // The engine frees the cancelled request instead of generating 1500 tokens.
    ASSERT_TRUE(WaitFor([&] {
      const EngineStats stats = server_->server->host()->engine().Stats();
      return stats.running == 0 && stats.waiting == 0;
    }, 10));
  }

  const v1::GenerateResponse after = Unary(*server_, check);
  EXPECT_THAT(after.token_ids(), ElementsAreArray(before.token_ids()));
  EXPECT_EQ(after.text(), before.text());
  EXPECT_EQ(after.finish_reason(), before.finish_reason());
}

TEST_P(StreamCancelTest, CancelsWithoutWaitingLeaveServerWorking) {
  const v1::GenerateRequest check = GreedyRequest("Once upon a time", 40);
  const v1::GenerateResponse before = Unary(*server_, check);

  // Short requests, each cancelled right after its first message, so a cancel can land before,
  // during or after the write of the final update.
  constexpr int kIterations = 50;
  for (int i = 0; i < kIterations; ++i) {
    SCOPED_TRACE(absl::StrCat("iteration ", i));
    grpc::ClientContext context;
    const int64_t max_tokens = 2 + i % 6;
    auto reader = server_->stub->GenerateStream(&context, LongRequest(max_tokens));
    StreamResult output;
    v1::GenerateStreamResponse message;
    if (reader->Read(&message)) output.Append(message);
    context.TryCancel();
    while (reader->Read(&message)) output.Append(message);
    const grpc::Status status = reader->Finish();
    EXPECT_THAT(status.error_code(), AnyOf(grpc::StatusCode::OK, grpc::StatusCode::CANCELLED));
    if (status.ok()) {
      EXPECT_EQ(static_cast<int64_t>(output.token_ids.size()), max_tokens);
      ASSERT_FALSE(output.messages.empty());
      EXPECT_EQ(output.messages.back().finish_reason(), v1::FINISH_REASON_LENGTH);
    }
  }

  ASSERT_TRUE(WaitFor([&] {
    const EngineStats stats = server_->server->host()->engine().Stats();
    return stats.running == 0 && stats.waiting == 0;
  }, 10));
  const v1::GenerateResponse after = Unary(*server_, check);
  EXPECT_THAT(after.token_ids(), ElementsAreArray(before.token_ids()));
  EXPECT_EQ(after.text(), before.text());
}

INSTANTIATE_TEST_SUITE_P(StreamIntervals, StreamCancelTest, ::testing::Values(1, 4),
                         [](const ::testing::TestParamInfo<int64_t>& info) {
                           return absl::StrCat("Interval", info.param);
                         });

// The x-request-id initial metadata of `context`, or an empty string without one.
std::string RequestIdMetadata(const grpc::ClientContext& context) {
  const auto& metadata = context.GetServerInitialMetadata();
  const auto entry = metadata.find("x-request-id");
  if (entry == metadata.end()) return "";
  return std::string(entry->second.data(), entry->second.size());
}

TEST(RequestIdTest, MetadataNamesStreamedAndRejectedCalls) {
  auto started = StartTestServer(TestServerOptions());
  ASSERT_TRUE(started.ok()) << started.status();
  TestServer& server = **started;

  v1::GenerateRequest streamed = GreedyRequest("Once upon a time", 5);
  streamed.set_request_id("metadata-stream");
  auto stream_context = ContextWithDeadline();
  auto reader = server.stub->GenerateStream(stream_context.get(), streamed);
  v1::GenerateStreamResponse message;
  while (reader->Read(&message)) EXPECT_EQ(message.request_id(), "metadata-stream");
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(RequestIdMetadata(*stream_context), "metadata-stream");

  v1::GenerateRequest invalid = GreedyRequest("Once upon a time", 5);
  invalid.mutable_sampling()->set_temperature(-1);
  invalid.set_request_id("metadata-rejected");
  auto unary_context = ContextWithDeadline();
  v1::GenerateResponse response;
  const grpc::Status unary = server.stub->Generate(unary_context.get(), invalid, &response);
  EXPECT_EQ(unary.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(unary.error_message(), ::testing::StartsWith("request metadata-rejected: "));
  EXPECT_EQ(RequestIdMetadata(*unary_context), "metadata-rejected");

  auto rejected_context = ContextWithDeadline();
  auto rejected = server.stub->GenerateStream(rejected_context.get(), invalid);
  EXPECT_FALSE(rejected->Read(&message));
  const grpc::Status stream_status = rejected->Finish();
  EXPECT_EQ(stream_status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(stream_status.error_message(),
              ::testing::StartsWith("request metadata-rejected: "));
  EXPECT_EQ(RequestIdMetadata(*rejected_context), "metadata-rejected");
}

TEST(StreamRejectTest, DuplicateIdStreamFailsAndFirstContinues) {
  auto started = StartTestServer(TestServerOptions());
  ASSERT_TRUE(started.ok()) << started.status();
  TestServer& server = **started;

  // The engine rejects the second request with the same id at submission, after the stream's
  // call state exists.
  v1::GenerateRequest request = LongRequest(400);
  request.set_request_id("twice");
  auto first_context = ContextWithDeadline(120);
  auto first = server.stub->GenerateStream(first_context.get(), request);
  v1::GenerateStreamResponse message;
  ASSERT_TRUE(first->Read(&message)) << first->Finish().error_message();

  auto second_context = ContextWithDeadline();
  auto second = server.stub->GenerateStream(second_context.get(), request);
  v1::GenerateStreamResponse second_message;
  EXPECT_FALSE(second->Read(&second_message));
  const grpc::Status rejected = second->Finish();
  EXPECT_EQ(rejected.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_THAT(rejected.error_message(), ::testing::StartsWith("request twice: "));

  StreamResult output;
  output.Append(message);
  while (first->Read(&message)) output.Append(message);
  output.status = first->Finish();
  ASSERT_TRUE(output.status.ok()) << output.status.error_message();
  EXPECT_EQ(output.token_ids.size(), 400u);
  ASSERT_FALSE(output.messages.empty());
  EXPECT_EQ(output.messages.back().finish_reason(), v1::FINISH_REASON_LENGTH);
}

TEST(SlowReaderTest, SlowReaderReceivesEveryTokenInOrder) {
  auto started = StartTestServer(TestServerOptions());
  ASSERT_TRUE(started.ok()) << started.status();
  TestServer& server = **started;

  // Twenty alternatives per token make each token a few hundred bytes. The client channel
  // accepts only a few KiB ahead of its reads, so the server's writes wait for the reader while
  // the engine keeps producing.
  v1::GenerateRequest request = LongRequest(600);
  request.set_top_logprobs(20);
  const v1::GenerateResponse unary = Unary(server, request);
  ASSERT_EQ(unary.token_ids_size(), 600);

  grpc::ChannelArguments arguments;
  arguments.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  arguments.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 4096);
  auto channel = grpc::CreateCustomChannel(server.address(), grpc::InsecureChannelCredentials(),
                                           arguments);
  auto stub = v1::W8A8Serve::NewStub(channel);
  auto context = ContextWithDeadline(120);
  auto reader = stub->GenerateStream(context.get(), request);
  StreamResult output;
  v1::GenerateStreamResponse message;
  while (reader->Read(&message)) {
    output.Append(message);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  output.status = reader->Finish();

  ASSERT_TRUE(output.status.ok()) << output.status.error_message();
  EXPECT_THAT(output.token_ids, ElementsAreArray(unary.token_ids()));
  EXPECT_EQ(output.logprob_token_ids, output.token_ids);
  EXPECT_EQ(output.text, unary.text());
  ASSERT_FALSE(output.messages.empty());
  const v1::GenerateStreamResponse& last = output.messages.back();
  EXPECT_EQ(last.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(last.usage().completion_tokens(), 600);
  EXPECT_EQ(last.usage().prompt_tokens(), unary.usage().prompt_tokens());
  ::testing::Test::RecordProperty("messages", static_cast<int>(output.messages.size()));
}

}  // namespace
}  // namespace w8a8::testing
