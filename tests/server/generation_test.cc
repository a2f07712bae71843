// Generation RPCs of a real in-process server on the stories260K model: equality with the
// offline runtime, concurrency, cancellation, deadlines, the queue limit and invalid requests.
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"

namespace w8a8::testing {
namespace {

using ::testing::HasSubstr;

class GenerationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto started = StartTestServer(TestServerOptions());
    ASSERT_TRUE(started.ok()) << started.status();
    server_ = started->release();
    auto runtime = LoadOfflineRuntime("auto");
    ASSERT_TRUE(runtime.ok()) << runtime.status();
    runtime_ = runtime->release();
  }

  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
    delete runtime_;
    runtime_ = nullptr;
  }

  static GenerationResult Offline(const std::string& prompt, const SamplingParams& sampling) {
    GenerationOptions options;
    options.sampling = sampling;
    absl::StatusOr<GenerationResult> result = runtime_->generator->Generate(prompt, options);
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *result : GenerationResult{};
  }

  static SamplingParams Greedy(int64_t max_tokens) {
    SamplingParams sampling;
    sampling.temperature = 0;
    sampling.max_tokens = max_tokens;
    return sampling;
  }

  static TestServer* server_;
  static OfflineRuntime* runtime_;
};

TestServer* GenerationTest::server_ = nullptr;
OfflineRuntime* GenerationTest::runtime_ = nullptr;

TEST_F(GenerationTest, UnaryGreedyMatchesOfflineGenerator) {
  const GenerationResult expected = Offline("Once upon a time", Greedy(60));
  auto context = ContextWithDeadline();
  v1::GenerateResponse response;
  const grpc::Status status =
      server_->stub->Generate(context.get(), GreedyRequest("Once upon a time", 60), &response);

  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.text(), expected.text);
  EXPECT_THAT(response.token_ids(), ::testing::ElementsAreArray(expected.tokens));
  EXPECT_EQ(response.usage().prompt_tokens(), 5);
  EXPECT_EQ(response.usage().completion_tokens(), static_cast<int32_t>(expected.tokens.size()));
  EXPECT_EQ(response.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_FALSE(response.request_id().empty());
  EXPECT_EQ(response.model_version(), 1);
  EXPECT_THAT(response.text(), HasSubstr("there was a little girl named Lily"));
}

TEST_F(GenerationTest, StreamMatchesOfflineGenerator) {
  const GenerationResult expected = Offline("Once upon a time", Greedy(50));
  v1::GenerateRequest request = GreedyRequest("Once upon a time", 50);
  request.set_request_id("stream-check-1");
  auto context = ContextWithDeadline();
  auto reader = server_->stub->GenerateStream(context.get(), request);

  std::string text;
  std::vector<int32_t> ids;
  int messages = 0;
  v1::GenerateStreamResponse message;
  v1::GenerateStreamResponse last;
  while (reader->Read(&message)) {
    ++messages;
    EXPECT_EQ(message.request_id(), "stream-check-1");
    text += message.text();
    ids.insert(ids.end(), message.token_ids().begin(), message.token_ids().end());
    last = message;
  }
  const grpc::Status status = reader->Finish();

  ASSERT_TRUE(status.ok()) << status.error_message();
  // Each message carries every token queued while the previous write was in flight, so how
  // many messages 50 tokens take depends on scheduling.
  EXPECT_GE(messages, 1);
  EXPECT_LE(messages, 50);
  EXPECT_EQ(text, expected.text);
  EXPECT_EQ(ids, expected.tokens);
  EXPECT_EQ(last.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(last.usage().completion_tokens(), 50);
  EXPECT_EQ(last.usage().total_tokens(), 55);
}

TEST_F(GenerationTest, SeededSamplingMatchesOfflineGenerator) {
  SamplingParams sampling;
  sampling.temperature = 0.9;
  sampling.top_p = 0.9;
  sampling.top_k = 40;
  sampling.seed = 1234;
  sampling.has_seed = true;
  sampling.max_tokens = 40;
  const GenerationResult expected = Offline("The little dog", sampling);

  v1::GenerateRequest request;
  request.set_text("The little dog");
  request.mutable_sampling()->set_temperature(0.9);
  request.mutable_sampling()->set_top_p(0.9);
  request.mutable_sampling()->set_top_k(40);
  request.mutable_sampling()->set_seed(1234);
  request.mutable_sampling()->set_max_tokens(40);
  auto context = ContextWithDeadline();
  v1::GenerateResponse response;
  const grpc::Status status = server_->stub->Generate(context.get(), request, &response);

  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.text(), expected.text);
  EXPECT_THAT(response.token_ids(), ::testing::ElementsAreArray(expected.tokens));
}

TEST_F(GenerationTest, ConcurrentGreedyRequestsMatchSoloResults) {
  const std::vector<std::string> prompts = {"Once upon a time", "The cat", "Lily and Ben",
                                            "One day, a big"};
  constexpr int kRequests = 16;
  std::vector<std::string> solo(kRequests);
  for (int i = 0; i < kRequests; ++i) {
    auto context = ContextWithDeadline();
    v1::GenerateResponse response;
    const grpc::Status status = server_->stub->Generate(
        context.get(), GreedyRequest(prompts[i % prompts.size()], 20 + 5 * i), &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    solo[i] = response.text();
  }

  std::vector<std::string> concurrent(kRequests);
  std::vector<grpc::Status> statuses(kRequests);
  std::vector<std::thread> threads;
  for (int i = 0; i < kRequests; ++i) {
    threads.emplace_back([&, i] {
      auto context = ContextWithDeadline();
      v1::GenerateResponse response;
      statuses[i] = server_->stub->Generate(
          context.get(), GreedyRequest(prompts[i % prompts.size()], 20 + 5 * i), &response);
      concurrent[i] = response.text();
    });
  }
  for (std::thread& thread : threads) thread.join();

  for (int i = 0; i < kRequests; ++i) {
    EXPECT_TRUE(statuses[i].ok()) << "request " << i << ": " << statuses[i].error_message();
    EXPECT_EQ(concurrent[i], solo[i]) << "request " << i;
  }
}

TEST_F(GenerationTest, EchoAndLogprobsReturnPrompt) {
  v1::GenerateRequest request = GreedyRequest("Once upon a time", 8);
  request.set_echo(true);
  request.set_logprobs(true);
  request.set_top_logprobs(3);
  auto context = ContextWithDeadline();
  v1::GenerateResponse response;
  const grpc::Status status = server_->stub->Generate(context.get(), request, &response);

  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_THAT(response.text(), ::testing::StartsWith("Once upon a time"));
  ASSERT_EQ(response.token_ids_size(), 5 + 8);
  EXPECT_THAT(std::vector<int32_t>(response.token_ids().begin(), response.token_ids().begin() + 5),
              ::testing::ElementsAre(1, 403, 407, 261, 378));
  ASSERT_EQ(response.logprobs_size(), 5 + 8);
  EXPECT_FALSE(response.logprobs(0).has_logprob());
  for (int i = 1; i < response.logprobs_size(); ++i) {
    EXPECT_TRUE(response.logprobs(i).has_logprob()) << "position " << i;
    EXPECT_LE(response.logprobs(i).logprob(), 0.0f) << "position " << i;
  }
  // Greedy decoding picks the most likely token, so it heads its own alternatives.
  const v1::TokenLogprob& generated = response.logprobs(5);
  ASSERT_EQ(generated.top_logprobs_size(), 3);
  EXPECT_EQ(generated.top_logprobs(0).token_id(), generated.token_id());
}

TEST_F(GenerationTest, TokenizeAndDetokenizeRoundTrip) {
  auto context = ContextWithDeadline();
  v1::TokenizeRequest tokenize;
  tokenize.set_text("Once upon a time");
  v1::TokenizeResponse tokens;
  ASSERT_TRUE(server_->stub->Tokenize(context.get(), tokenize, &tokens).ok());
  EXPECT_THAT(tokens.token_ids(), ::testing::ElementsAre(1, 403, 407, 261, 378));
  EXPECT_EQ(tokens.tokens_size(), 5);

  auto detokenize_context = ContextWithDeadline();
  v1::DetokenizeRequest detokenize;
  detokenize.mutable_token_ids()->CopyFrom(tokens.token_ids());
  detokenize.set_skip_special_tokens(true);
  v1::DetokenizeResponse text;
  ASSERT_TRUE(server_->stub->Detokenize(detokenize_context.get(), detokenize, &text).ok());
  EXPECT_EQ(text.text(), "Once upon a time");
}

TEST_F(GenerationTest, ModelInfoDescribesStories260K) {
  auto context = ContextWithDeadline();
  v1::ModelInfo info;
  ASSERT_TRUE(server_->stub->GetModelInfo(context.get(), v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.checkpoint_format(), "gguf");
  EXPECT_EQ(info.hidden_size(), 64);
  EXPECT_EQ(info.num_hidden_layers(), 5);
  EXPECT_EQ(info.num_attention_heads(), 8);
  EXPECT_EQ(info.num_key_value_heads(), 4);
  EXPECT_EQ(info.vocab_size(), 512);
  EXPECT_EQ(info.tokenizer_type(), "sentencepiece");
  EXPECT_EQ(info.quantization().plan(), "auto");
  int32_t layers = 0;
  for (const auto& [scheme, count] : info.quantization().layers_per_scheme()) layers += count;
  // Seven linear layers in each of five blocks, plus lm_head.
  EXPECT_EQ(layers, 36);
}

TEST_F(GenerationTest, ClientCancelEndsStream) {
  v1::GenerateRequest request = GreedyRequest("Once upon a time", 1500);
  request.mutable_sampling()->set_ignore_eos(true);
  request.set_request_id("cancel-me");
  grpc::ClientContext context;
  auto reader = server_->stub->GenerateStream(&context, request);
  v1::GenerateStreamResponse message;
  ASSERT_TRUE(reader->Read(&message));
  ASSERT_TRUE(reader->Read(&message));
  context.TryCancel();
  while (reader->Read(&message)) {
  }
  const grpc::Status status = reader->Finish();

  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  // The engine frees the sequence instead of generating the remaining tokens.
  EXPECT_TRUE(WaitFor([] { return server_->server->host()->engine().Stats().running == 0; }, 10));
}

TEST_F(GenerationTest, DeadlineEndsRequest) {
  v1::GenerateRequest request = GreedyRequest("Once upon a time", 2000);
  request.mutable_sampling()->set_ignore_eos(true);
  auto context = ContextWithDeadline(0.3);
  v1::GenerateResponse response;
  const grpc::Status status = server_->stub->Generate(context.get(), request, &response);

  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(WaitFor([] { return server_->server->host()->engine().Stats().running == 0; }, 10));
}

struct InvalidCase {
  std::string name;
  std::function<void(v1::GenerateRequest&)> edit;
  std::string field;  // Expected in the error message.
};

TEST_F(GenerationTest, InvalidArgumentsNameTheField) {
  const std::vector<InvalidCase> cases = {
      {"negative temperature", [](auto& r) { r.mutable_sampling()->set_temperature(-0.5); },
       "sampling.temperature"},
      {"NaN temperature",
       [](auto& r) {
         r.mutable_sampling()->set_temperature(std::numeric_limits<double>::quiet_NaN());
       },
       "sampling.temperature"},
      {"top_p zero", [](auto& r) { r.mutable_sampling()->set_top_p(0); }, "sampling.top_p"},
      {"top_p above one", [](auto& r) { r.mutable_sampling()->set_top_p(1.5); },
       "sampling.top_p"},
      {"min_p above one", [](auto& r) { r.mutable_sampling()->set_min_p(2); }, "sampling.min_p"},
      {"negative top_k", [](auto& r) { r.mutable_sampling()->set_top_k(-1); }, "sampling.top_k"},
      {"zero max_tokens", [](auto& r) { r.mutable_sampling()->set_max_tokens(0); },
       "sampling.max_tokens"},
      {"max_tokens above the limit", [](auto& r) { r.mutable_sampling()->set_max_tokens(5000); },
       "sampling.max_tokens"},
      {"frequency penalty out of range",
       [](auto& r) { r.mutable_sampling()->set_frequency_penalty(3); },
       "sampling.frequency_penalty"},
      {"empty text", [](auto& r) { r.set_text(""); }, "text"},
      {"missing prompt", [](auto& r) { r.clear_prompt(); }, "prompt"},
      {"token id outside vocabulary",
       [](auto& r) {
         r.mutable_token_ids()->add_ids(1);
         r.mutable_token_ids()->add_ids(600);
       },
       "token_ids.ids[1]"},
      {"prompt plus max_tokens beyond context",
       [](auto& r) {
         for (int i = 0; i < 2000; ++i) r.mutable_token_ids()->add_ids(300);
         r.mutable_sampling()->set_max_tokens(100);
       },
       "exceeds the context length"},
      {"chat with unknown role",
       [](auto& r) {
         auto* message = r.mutable_chat()->add_messages();
         message->set_role("wizard");
         message->set_content("hi");
       },
       "chat.messages[0].role"},
      {"empty chat", [](auto& r) { r.mutable_chat(); }, "chat.messages"},
      {"too many top_logprobs", [](auto& r) { r.set_top_logprobs(50); }, "top_logprobs"},
      {"too many stop strings",
       [](auto& r) {
         const std::string stop = "stop";
         for (int i = 0; i < 20; ++i) *r.mutable_sampling()->add_stop() = stop;
       },
       "sampling.stop"},
      {"request id with a space",
       [](auto& r) {
         const std::string id = "two words";
         *r.mutable_request_id() = id;
       },
       "request_id"},
  };
  for (const InvalidCase& test_case : cases) {
    v1::GenerateRequest request = GreedyRequest("Once upon a time", 10);
    test_case.edit(request);
    auto context = ContextWithDeadline();
    v1::GenerateResponse response;
    const grpc::Status status = server_->stub->Generate(context.get(), request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << test_case.name;
    EXPECT_THAT(status.error_message(), HasSubstr(test_case.field)) << test_case.name;
  }
}

TEST(GenerationQueueTest, FullQueueReturnsResourceExhausted) {
  server::ServerOptions options = TestServerOptions();
  options.host.engine.max_running_sequences = 1;
  options.host.engine.max_batch_tokens = 64;
  options.host.engine.max_queued_requests = 1;
  auto test_server = StartTestServer(options);
  ASSERT_TRUE(test_server.ok()) << test_server.status();
  TestServer& server = **test_server;

  v1::GenerateRequest long_request = GreedyRequest("Once upon a time", 1500);
  long_request.mutable_sampling()->set_ignore_eos(true);
  grpc::ClientContext running_context;
  auto running = server.stub->GenerateStream(&running_context, long_request);
  v1::GenerateStreamResponse message;
  ASSERT_TRUE(running->Read(&message));
  grpc::ClientContext queued_context;
  auto queued = server.stub->GenerateStream(&queued_context, long_request);
  ASSERT_TRUE(WaitFor([&] { return server.server->host()->engine().Stats().waiting == 1; }, 10));

  auto context = ContextWithDeadline();
  v1::GenerateResponse response;
  const grpc::Status status = server.stub->Generate(context.get(), long_request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("--max-queue"));

  running_context.TryCancel();
  queued_context.TryCancel();
  while (running->Read(&message)) {
  }
  while (queued->Read(&message)) {
  }
  EXPECT_EQ(running->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(queued->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST(GenerationLoadingTest, UnavailableUntilModelLoads) {
  auto test_server = StartTestServer(TestServerOptions(), /*load=*/false);
  ASSERT_TRUE(test_server.ok()) << test_server.status();
  TestServer& server = **test_server;

  EXPECT_EQ(CheckHealth(server.channel), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  auto context = ContextWithDeadline();
  v1::GenerateResponse response;
  const grpc::Status status =
      server.stub->Generate(context.get(), GreedyRequest("Once", 5), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);

  ASSERT_TRUE(server.server->LoadModel().ok());
  EXPECT_EQ(CheckHealth(server.channel), grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_EQ(CheckHealth(server.channel, "w8a8serve.v1.W8A8Serve"),
            grpc::health::v1::HealthCheckResponse::SERVING);
}

}  // namespace
}  // namespace w8a8::testing
