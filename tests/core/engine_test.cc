#include "core/engine.h"

#include <omp.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "core/checkpoint.h"
#include "core/linear.h"
#include "core/make_model.h"
#include "core/model.h"
#include "core/tokenizer.h"
#include "gtest/gtest.h"
#include "kernels/threads.h"
#include "tests/test_util.h"

namespace w8a8 {
namespace {

// The real stories260K model and tokenizer, loaded once for the whole suite.
struct Stories260K {
  std::unique_ptr<Checkpoint> checkpoint;
  std::shared_ptr<const Model> model;
  std::shared_ptr<const Tokenizer> tokenizer;
};

const Stories260K& LoadStories260K() {
  static const Stories260K* const loaded = [] {
    auto* result = new Stories260K;
    auto checkpoint = Checkpoint::Open(testing::Stories260KGguf());
    if (!checkpoint.ok()) {
      ADD_FAILURE() << "cannot open stories260K: " << checkpoint.status();
      return result;
    }
    result->checkpoint = std::move(*checkpoint);
    auto model = Model::Create(*result->checkpoint, Fp32LinearFactory());
    if (!model.ok()) {
      ADD_FAILURE() << "cannot build the stories260K model: " << model.status();
      return result;
    }
    result->model = std::move(*model);
    auto tokenizer = Tokenizer::FromSource(result->checkpoint->tokenizer_source());
    if (!tokenizer.ok()) {
      ADD_FAILURE() << "cannot load the stories260K tokenizer: " << tokenizer.status();
      return result;
    }
    result->tokenizer = std::move(*tokenizer);
    return result;
  }();
  return *loaded;
}

// A second model instance built from the same file, for model swaps.
std::shared_ptr<const Model> LoadSecondModel() {
  auto model = Model::Create(*LoadStories260K().checkpoint, Fp32LinearFactory());
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::shared_ptr<const Model>(std::move(*model)) : nullptr;
}

// Every update of one request, and its end.
class Collector {
 public:
  // `delay` slows the callback down, so the request stays in flight for a while.
  explicit Collector(absl::Duration delay = absl::ZeroDuration()) : delay_(delay) {}

  GenerationCallback Callback() {
    return [this](GenerationUpdate update) {
      if (delay_ > absl::ZeroDuration()) absl::SleepFor(delay_);
      const bool finished = update.finished;
      int64_t tokens = 0;
      {
        absl::MutexLock lock(&mu_);
        updates_.push_back(std::move(update));
        for (const GenerationUpdate& each : updates_) tokens += each.tokens.size();
      }
      if (on_tokens_) on_tokens_(tokens);
      if (finished) done_.Notify();
    };
  }

  // Runs `hook` with the number of tokens received so far after every update.
  void OnTokens(std::function<void(int64_t)> hook) { on_tokens_ = std::move(hook); }

  bool Wait(absl::Duration timeout = absl::Seconds(60)) {
    return done_.WaitForNotificationWithTimeout(timeout);
  }

  std::vector<int32_t> Tokens() const {
    absl::MutexLock lock(&mu_);
    std::vector<int32_t> tokens;
    for (const GenerationUpdate& update : updates_) {
      for (const GeneratedToken& token : update.tokens) tokens.push_back(token.token_id);
    }
    return tokens;
  }

  std::string Text() const {
    absl::MutexLock lock(&mu_);
    std::string text;
    for (const GenerationUpdate& update : updates_) text += update.text;
    return text;
  }

  std::vector<GenerationUpdate> Updates() const {
    absl::MutexLock lock(&mu_);
    return updates_;
  }

  GenerationUpdate Last() const {
    absl::MutexLock lock(&mu_);
    return updates_.empty() ? GenerationUpdate{} : updates_.back();
  }

 private:
  absl::Duration delay_;
  std::function<void(int64_t)> on_tokens_;
  mutable absl::Mutex mu_;
  std::vector<GenerationUpdate> updates_;
  absl::Notification done_;
};

EngineOptions SmallOptions() {
  EngineOptions options;
  options.kv_cache_bytes = 64 << 20;
  return options;
}

std::unique_ptr<Engine> MakeEngine(const EngineOptions& options,
                                   std::shared_ptr<EngineObserver> observer = nullptr) {
  const Stories260K& stories = LoadStories260K();
  auto engine = Engine::Create(stories.model, stories.tokenizer, options, std::move(observer),
                               "stories260K");
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? std::move(*engine) : nullptr;
}

std::vector<int32_t> Encode(const std::string& text) {
  return LoadStories260K().tokenizer->Encode(text, /*add_bos=*/true, /*parse_special=*/false);
}

GenerationRequest Greedy(const std::string& id, const std::string& prompt, int64_t max_tokens) {
  GenerationRequest request;
  request.request_id = id;
  request.prompt_ids = Encode(prompt);
  request.sampling.temperature = 0.0;
  request.sampling.max_tokens = max_tokens;
  return request;
}

const std::vector<std::string>& Prompts() {
  static const std::vector<std::string> prompts = {
      "Once upon a time",
      "Lily and Ben went to the park",
      "The little dog",
      "One day, a girl named Sue found a big box",
      "Tom had a red ball. He",
      "The sun was hot and the birds sang",
      "Mom said",
      "There was a cat who liked to",
  };
  return prompts;
}

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const Stories260K& stories = LoadStories260K();
    ASSERT_NE(stories.model, nullptr);
    ASSERT_NE(stories.tokenizer, nullptr);
  }
};

// Runs `request` alone on a fresh engine and returns its generated tokens.
std::vector<int32_t> RunSolo(const GenerationRequest& request, std::string* text = nullptr) {
  std::unique_ptr<Engine> engine = MakeEngine(SmallOptions());
  if (engine == nullptr) return {};
  Collector collector;
  const absl::Status status = engine->Submit(request, collector.Callback());
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_TRUE(collector.Wait());
  EXPECT_TRUE(collector.Last().status.ok()) << collector.Last().status;
  if (text != nullptr) *text = collector.Text();
  return collector.Tokens();
}

TEST_F(EngineTest, GreedyMatchesKnownContinuation) {
  std::string text;
  const std::vector<int32_t> tokens = RunSolo(Greedy("solo", "Once upon a time", 40), &text);

  // llama.cpp and llama2.c continue this prompt greedily with these words.
  const std::string expected = ", there was a little girl named Lily. She loved to play outside";
  EXPECT_EQ(text.substr(0, expected.size()), expected) << text;
  EXPECT_EQ(tokens.size(), 40u);
}

TEST_F(EngineTest, ConcurrentGreedyMatchesSolo) {
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 16; ++i) {
    const std::string& prompt = Prompts()[static_cast<size_t>(i) % Prompts().size()];
    requests.push_back(Greedy(absl::StrCat("request-", i), prompt, 20 + 7 * (i % 5)));
  }
  std::vector<std::vector<int32_t>> solo;
  std::vector<std::string> solo_text;
  for (const GenerationRequest& request : requests) {
    std::string text;
    solo.push_back(RunSolo(request, &text));
    solo_text.push_back(text);
  }

  std::unique_ptr<Engine> engine = MakeEngine(SmallOptions());
  ASSERT_NE(engine, nullptr);
  std::vector<std::unique_ptr<Collector>> collectors;
  for (const GenerationRequest& request : requests) {
    collectors.push_back(std::make_unique<Collector>());
    ASSERT_TRUE(engine->Submit(request, collectors.back()->Callback()).ok());
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(collectors[i]->Wait()) << requests[i].request_id;
    EXPECT_TRUE(collectors[i]->Last().status.ok()) << collectors[i]->Last().status;
    EXPECT_EQ(collectors[i]->Tokens(), solo[i]) << requests[i].request_id;
    EXPECT_EQ(collectors[i]->Text(), solo_text[i]) << requests[i].request_id;
  }
  const EngineStats stats = engine->Stats();
  EXPECT_EQ(stats.running, 0);
  EXPECT_EQ(stats.waiting, 0);
  EXPECT_EQ(stats.kv_blocks_used, 0);
}

// OpenMP keeps the team size per thread, so the engine thread applies SetComputeThreads
// itself. One more thread than the default distinguishes the two on any machine.
TEST_F(EngineTest, EngineThreadUsesComputeThreads) {
  const int default_threads = omp_get_max_threads();
  const int threads = default_threads + 1;
  kernels::SetComputeThreads(threads);
  std::unique_ptr<Engine> engine = MakeEngine(SmallOptions());
  Collector collector;
  const bool submitted =
      engine != nullptr && engine->Submit(Greedy("threads", "Once", 3), collector.Callback()).ok();
  const bool finished = submitted && collector.Wait();
  const int64_t engine_threads = engine != nullptr ? engine->Stats().compute_threads : 0;
  engine.reset();
  kernels::SetComputeThreads(0);
  omp_set_num_threads(default_threads);

  ASSERT_TRUE(submitted);
  ASSERT_TRUE(finished);
  EXPECT_EQ(engine_threads, threads);
}

TEST_F(EngineTest, ChunkedPrefillMatchesSolo) {
  // A long prompt split into chunks of at most 8 tokens while other requests decode.
  std::string long_prompt;
  for (const std::string& prompt : Prompts()) long_prompt += prompt + ". ";
  GenerationRequest request = Greedy("long", long_prompt, 30);
  ASSERT_GT(request.prompt_ids.size(), 40u);
  const std::vector<int32_t> solo = RunSolo(request);

  EngineOptions options = SmallOptions();
  options.max_running_sequences = 4;
  options.max_batch_tokens = 8;
  std::unique_ptr<Engine> engine = MakeEngine(options);
  ASSERT_NE(engine, nullptr);
  Collector other;
  ASSERT_TRUE(engine->Submit(Greedy("other", "The little dog", 30), other.Callback()).ok());
  Collector collector;
  ASSERT_TRUE(engine->Submit(request, collector.Callback()).ok());
  ASSERT_TRUE(collector.Wait());
  ASSERT_TRUE(other.Wait());

  EXPECT_EQ(collector.Tokens(), solo);
  EXPECT_GT(engine->Stats().steps, static_cast<int64_t>(request.prompt_ids.size()) / 8);
}

TEST_F(EngineTest, PreemptionKeepsOutputs) {
  // Four blocks of 16 positions for four requests of 5 + 40 tokens: the pool runs out during
  // decode, so sequences are preempted and recomputed.
  EngineOptions options = SmallOptions();
  options.kv_cache_bytes = static_cast<int64_t>(
      4 * KvCache::BytesPerBlock(LoadStories260K().model->config(), options.block_size));
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 4; ++i) {
    GenerationRequest request = Greedy(absl::StrCat("p", i), Prompts()[i], 40);
    request.prompt_ids.resize(std::min<size_t>(request.prompt_ids.size(), 5));
    request.sampling.ignore_eos = true;
    requests.push_back(request);
  }
  std::vector<std::vector<int32_t>> solo;
  for (const GenerationRequest& request : requests) solo.push_back(RunSolo(request));

  std::unique_ptr<Engine> engine = MakeEngine(options);
  ASSERT_NE(engine, nullptr);
  EXPECT_EQ(engine->Stats().kv_blocks_total, 4);
  std::vector<std::unique_ptr<Collector>> collectors;
  for (const GenerationRequest& request : requests) {
    collectors.push_back(std::make_unique<Collector>());
    ASSERT_TRUE(engine->Submit(request, collectors.back()->Callback()).ok());
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(collectors[i]->Wait());
    EXPECT_TRUE(collectors[i]->Last().status.ok()) << collectors[i]->Last().status;
    EXPECT_EQ(collectors[i]->Tokens(), solo[i]) << requests[i].request_id;
  }
  EXPECT_GT(engine->Stats().preemptions, 0);
  EXPECT_EQ(engine->Stats().kv_blocks_used, 0);
}

TEST_F(EngineTest, CancelFreesBlocks) {
  std::unique_ptr<Engine> engine = MakeEngine(SmallOptions());
  ASSERT_NE(engine, nullptr);
  GenerationRequest request = Greedy("to-cancel", "Once upon a time", 400);
  request.sampling.ignore_eos = true;
  Collector collector;
  std::atomic<bool> cancelled = false;
  // The callback cancels its own request after three tokens.
  collector.OnTokens([&](int64_t tokens) {
    if (tokens >= 3 && !cancelled.exchange(true)) {
      EXPECT_TRUE(engine->Cancel("to-cancel").ok());
    }
  });
  ASSERT_TRUE(engine->Submit(request, collector.Callback()).ok());
  ASSERT_TRUE(collector.Wait());

  const GenerationUpdate last = collector.Last();
  EXPECT_EQ(last.finish_reason, FinishReason::kCancelled);
  EXPECT_EQ(last.status.code(), absl::StatusCode::kCancelled);
  EXPECT_GE(last.usage.generated_tokens, 3);
  EXPECT_LT(last.usage.generated_tokens, 400);
  EXPECT_EQ(engine->Stats().kv_blocks_used, 0);
  EXPECT_EQ(engine->Stats().running, 0);
  // The id stays in flight until the last callback returns, and Drain waits for that.
  engine->Drain(absl::Seconds(10));
  EXPECT_EQ(engine->Cancel("to-cancel").code(), absl::StatusCode::kNotFound);
}

TEST_F(EngineTest, DeadlineEndsRequest) {
  std::unique_ptr<Engine> engine = MakeEngine(SmallOptions());
  ASSERT_NE(engine, nullptr);
  GenerationRequest request = Greedy("slow", "Once upon a time", 400);
  request.sampling.ignore_eos = true;
  request.deadline = absl::Now() + absl::Milliseconds(100);
  // 400 updates of at least 2 ms each last far beyond the deadline.
  Collector collector(absl::Milliseconds(2));
  ASSERT_TRUE(engine->Submit(request, collector.Callback()).ok());
  ASSERT_TRUE(collector.Wait());

  const GenerationUpdate last = collector.Last();
  EXPECT_EQ(last.finish_reason, FinishReason::kDeadline);
  EXPECT_EQ(last.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(last.usage.generated_tokens, 400);
  EXPECT_EQ(engine->Stats().kv_blocks_used, 0);
}

TEST_F(EngineTest, DeadlineWinsOverLaterCancel) {
  std::unique_ptr<Engine> engine = MakeEngine(SmallOptions());
  ASSERT_NE(engine, nullptr);
  GenerationRequest request = Greedy("expiring", "Once upon a time", 400);
  request.sampling.ignore_eos = true;
  request.deadline = absl::Now() + absl::Milliseconds(50);
  Collector collector;
  std::atomic<bool> cancelled = false;
  // The first update's callback waits past the deadline, then cancels, as gRPC does when a
  // call's deadline passes. The engine's next expiry check finds both.
  collector.OnTokens([&](int64_t tokens) {
    if (tokens >= 1 && !cancelled.exchange(true)) {
      absl::SleepFor(absl::Milliseconds(100));
      EXPECT_TRUE(engine->Cancel("expiring").ok());
    }
  });
  ASSERT_TRUE(engine->Submit(request, collector.Callback()).ok());
  ASSERT_TRUE(collector.Wait());

  const GenerationUpdate last = collector.Last();
  EXPECT_EQ(last.finish_reason, FinishReason::kDeadline);
  EXPECT_EQ(last.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(last.usage.generated_tokens, 400);
}

TEST_F(EngineTest, PastDeadlineEndsQueuedRequest) {
  std::unique_ptr<Engine> engine = MakeEngine(SmallOptions());
  ASSERT_NE(engine, nullptr);
  GenerationRequest request = Greedy("late", "Once upon a time", 10);
  request.deadline = absl::Now() - absl::Seconds(1);
  Collector collector;
  ASSERT_TRUE(engine->Submit(request, collector.Callback()).ok());
  ASSERT_TRUE(collector.Wait());

  EXPECT_EQ(collector.Last().finish_reason, FinishReason::kDeadline);
  EXPECT_EQ(collector.Last().usage.generated_tokens, 0);
}

TEST_F(EngineTest, DefaultTimeoutAppliesWithoutDeadline) {
  EngineOptions options = SmallOptions();
  options.default_timeout = absl::Milliseconds(50);
  std::unique_ptr<Engine> engine = MakeEngine(options);
  ASSERT_NE(engine, nullptr);
  GenerationRequest request = Greedy("no-deadline", "Once upon a time", 400);
  request.sampling.ignore_eos = true;
  Collector collector(absl::Milliseconds(2));
  ASSERT_TRUE(engine->Submit(request, collector.Callback()).ok());
  ASSERT_TRUE(collector.Wait());

  EXPECT_EQ(collector.Last().finish_reason, FinishReason::kDeadline);
}

TEST_F(EngineTest, FullQueueRejectsSubmit) {
  EngineOptions options = SmallOptions();
  options.max_running_sequences = 1;
  options.max_queued_requests = 2;
  std::unique_ptr<Engine> engine = MakeEngine(options);
  ASSERT_NE(engine, nullptr);

  // Slow callbacks keep the first request running while the others arrive.
  std::vector<std::unique_ptr<Collector>> collectors;
  int accepted = 0;
  int rejected = 0;
  for (int i = 0; i < 6; ++i) {
    GenerationRequest request = Greedy(absl::StrCat("q", i), "Once upon a time", 100);
    request.sampling.ignore_eos = true;
    auto collector = std::make_unique<Collector>(absl::Milliseconds(3));
    const absl::Status status = engine->Submit(request, collector->Callback());
    if (status.ok()) {
      accepted += 1;
      collectors.push_back(std::move(collector));
    } else {
      EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
      EXPECT_NE(status.message().find("max_queued_requests"), std::string::npos) << status;
      rejected += 1;
    }
  }
  // One running and two queued at most.
  EXPECT_LE(accepted, 3);
  EXPECT_GE(rejected, 3);
  for (auto& collector : collectors) {
    ASSERT_TRUE(collector->Wait());
    EXPECT_TRUE(collector->Last().status.ok()) << collector->Last().status;
  }
}

TEST_F(EngineTest, InvalidRequestsNameTheField) {
  EngineOptions options = SmallOptions();
  options.max_context = 64;
  std::unique_ptr<Engine> engine = MakeEngine(options);
  ASSERT_NE(engine, nullptr);
  const int32_t vocab = static_cast<int32_t>(LoadStories260K().model->config().vocab_size);

  struct Case {
    std::string name;
    std::function<void(GenerationRequest&)> change;
    absl::StatusCode code;
    std::string field;
  };
  const std::vector<Case> cases = {
      {"empty id", [](GenerationRequest& r) { r.request_id.clear(); },
       absl::StatusCode::kInvalidArgument, "request_id"},
      {"empty prompt", [](GenerationRequest& r) { r.prompt_ids.clear(); },
       absl::StatusCode::kInvalidArgument, "prompt_ids"},
      {"unknown token", [&](GenerationRequest& r) { r.prompt_ids.push_back(vocab); },
       absl::StatusCode::kInvalidArgument, "prompt_ids["},
      {"negative token", [](GenerationRequest& r) { r.prompt_ids[0] = -1; },
       absl::StatusCode::kInvalidArgument, "prompt_ids[0]"},
      {"beyond context", [](GenerationRequest& r) { r.sampling.max_tokens = 64; },
       absl::StatusCode::kInvalidArgument, "max_tokens"},
      {"negative temperature", [](GenerationRequest& r) { r.sampling.temperature = -1; },
       absl::StatusCode::kInvalidArgument, "temperature"},
      {"top_logprobs too large", [](GenerationRequest& r) { r.top_logprobs = 21; },
       absl::StatusCode::kInvalidArgument, "top_logprobs"},
      {"top_logprobs below -1", [](GenerationRequest& r) { r.top_logprobs = -2; },
       absl::StatusCode::kInvalidArgument, "top_logprobs"},
  };
  for (const Case& test_case : cases) {
    GenerationRequest request = Greedy("bad", "Once upon a time", 8);
    test_case.change(request);
    Collector collector;
    const absl::Status status = engine->Submit(request, collector.Callback());
    EXPECT_EQ(status.code(), test_case.code) << test_case.name << ": " << status;
    EXPECT_NE(status.message().find(test_case.field), std::string::npos)
        << test_case.name << ": " << status;
  }
  EXPECT_EQ(engine->Stats().waiting, 0);
}

TEST_F(EngineTest, DuplicateIdIsRejected) {
  std::unique_ptr<Engine> engine = MakeEngine(SmallOptions());
  ASSERT_NE(engine, nullptr);
  GenerationRequest request = Greedy("same", "Once upon a time", 200);
  request.sampling.ignore_eos = true;
  Collector first(absl::Milliseconds(1));
  ASSERT_TRUE(engine->Submit(request, first.Callback()).ok());
  Collector second;
  EXPECT_EQ(engine->Submit(request, second.Callback()).code(), absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(engine->Cancel("same").ok());
  ASSERT_TRUE(first.Wait());
}

// A client may reuse a request id as soon as it has the last update of the request that had
// it: the id is free when that update is delivered, not only after its callback returns.
TEST_F(EngineTest, IdIsFreeAtLastUpdate) {
  std::unique_ptr<Engine> engine = MakeEngine(SmallOptions());
  ASSERT_NE(engine, nullptr);
  const GenerationRequest request = Greedy("reused", "Once upon a time", 5);
  Collector second;
  absl::Status resubmitted = absl::UnknownError("the last update did not arrive");
  absl::Notification first_done;
  const absl::Status submitted =
      engine->Submit(request, [&](GenerationUpdate update) {
        if (!update.finished) return;
        // Runs on the engine thread, in the last callback of the first request.
        resubmitted = engine->Submit(request, second.Callback());
        first_done.Notify();
      });
  ASSERT_TRUE(submitted.ok()) << submitted;
  ASSERT_TRUE(first_done.WaitForNotificationWithTimeout(absl::Seconds(60)));
  EXPECT_TRUE(resubmitted.ok()) << resubmitted;
  if (!resubmitted.ok()) return;
  ASSERT_TRUE(second.Wait());
  EXPECT_TRUE(second.Last().status.ok()) << second.Last().status;
  EXPECT_EQ(second.Tokens().size(), 5u);
}

TEST_F(EngineTest, DrainFinishesRequestsThenRejects) {
  std::unique_ptr<Engine> engine = MakeEngine(SmallOptions());
  ASSERT_NE(engine, nullptr);
  std::vector<std::unique_ptr<Collector>> collectors;
  for (int i = 0; i < 4; ++i) {
    collectors.push_back(std::make_unique<Collector>());
    ASSERT_TRUE(engine->Submit(Greedy(absl::StrCat("d", i), Prompts()[i], 30),
                               collectors.back()->Callback())
                    .ok());
  }
  engine->Drain(absl::Seconds(60));

  // Drain returns after every last callback has run.
  for (auto& collector : collectors) {
    ASSERT_TRUE(collector->Wait(absl::ZeroDuration()));
    EXPECT_TRUE(collector->Last().status.ok()) << collector->Last().status;
  }
  EXPECT_TRUE(engine->Stats().draining);
  Collector late;
  EXPECT_EQ(engine->Submit(Greedy("late", "Mom said", 5), late.Callback()).code(),
            absl::StatusCode::kUnavailable);
}

TEST_F(EngineTest, DrainGraceEndsSlowRequests) {
  std::unique_ptr<Engine> engine = MakeEngine(SmallOptions());
  ASSERT_NE(engine, nullptr);
  GenerationRequest request = Greedy("slow", "Once upon a time", 400);
  request.sampling.ignore_eos = true;
  Collector collector(absl::Milliseconds(2));
  ASSERT_TRUE(engine->Submit(request, collector.Callback()).ok());
  engine->Drain(absl::Milliseconds(50));

  ASSERT_TRUE(collector.Wait(absl::ZeroDuration()));
  EXPECT_EQ(collector.Last().finish_reason, FinishReason::kError);
  EXPECT_EQ(collector.Last().status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(engine->Stats().kv_blocks_used, 0);
}

class CountingObserver : public EngineObserver {
 public:
  void OnStep(const StepStats& step) override {
    absl::MutexLock lock(&mu_);
    steps += 1;
    decode_tokens += step.num_decode_tokens;
    prefill_tokens += step.num_prefill_tokens;
    max_sequences = std::max(max_sequences, step.num_sequences);
  }
  void OnRequestFinished(const RequestStats& request) override {
    absl::MutexLock lock(&mu_);
    finished.push_back(request);
  }
  void OnLoad(const EngineStats& stats) override {
    absl::MutexLock lock(&mu_);
    loads += 1;
    last_load = stats;
  }

  absl::Mutex mu_;
  int64_t steps = 0;
  int64_t decode_tokens = 0;
  int64_t prefill_tokens = 0;
  int64_t max_sequences = 0;
  int64_t loads = 0;
  std::vector<RequestStats> finished;
  EngineStats last_load;
};

TEST_F(EngineTest, ModelSwapUnderLoadDropsNothing) {
  std::shared_ptr<const Model> second = LoadSecondModel();
  ASSERT_NE(second, nullptr);
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 16; ++i) {
    requests.push_back(Greedy(absl::StrCat("s", i), Prompts()[i % 8], 40));
  }
  std::vector<std::vector<int32_t>> solo;
  for (int i = 0; i < 8; ++i) solo.push_back(RunSolo(requests[static_cast<size_t>(i)]));

  auto observer = std::make_shared<CountingObserver>();
  std::unique_ptr<Engine> engine = MakeEngine(SmallOptions(), observer);
  ASSERT_NE(engine, nullptr);
  std::vector<std::unique_ptr<Collector>> collectors;
  for (int i = 0; i < 8; ++i) {
    collectors.push_back(std::make_unique<Collector>(absl::Milliseconds(1)));
    ASSERT_TRUE(engine->Submit(requests[static_cast<size_t>(i)], collectors.back()->Callback())
                    .ok());
  }
  // Swap while the first eight run (their callbacks take 1 ms per token), so steps mix
  // sequences of both models.
  ASSERT_TRUE(engine->SwapModel(second, "second").ok());
  EXPECT_EQ(engine->Stats().model_label, "second");
  for (int i = 8; i < 16; ++i) {
    collectors.push_back(std::make_unique<Collector>(absl::Milliseconds(1)));
    ASSERT_TRUE(engine->Submit(requests[static_cast<size_t>(i)], collectors.back()->Callback())
                    .ok());
  }

  for (int i = 0; i < 16; ++i) {
    Collector& collector = *collectors[static_cast<size_t>(i)];
    ASSERT_TRUE(collector.Wait());
    const GenerationUpdate last = collector.Last();
    EXPECT_TRUE(last.status.ok()) << last.status;
    EXPECT_EQ(last.model_label, i < 8 ? "stories260K" : "second") << i;
    EXPECT_EQ(collector.Tokens(), solo[static_cast<size_t>(i % 8)]) << i;
  }
  // Some step ran sequences of both models, one forward pass each.
  absl::MutexLock lock(&observer->mu_);
  EXPECT_GT(observer->max_sequences, 8);
}

TEST_F(EngineTest, SwapRejectsOtherLayout) {
  std::unique_ptr<Engine> engine = MakeEngine(SmallOptions());
  ASSERT_NE(engine, nullptr);
  EXPECT_EQ(engine->SwapModel(nullptr, "none").code(), absl::StatusCode::kInvalidArgument);

  // A model like stories260K with two layers instead of five has another KV-cache layout.
  testing::TempDir dir;
  MakeModelOptions make_options;
  make_options.config = LoadStories260K().model->config();
  make_options.config.num_hidden_layers = 2;
  ASSERT_TRUE(MakeModel(make_options, dir.path()).ok());
  auto checkpoint = Checkpoint::Open(dir.path());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  auto other = Model::Create(**checkpoint, Fp32LinearFactory());
  ASSERT_TRUE(other.ok()) << other.status();

  const absl::Status status = engine->SwapModel(std::move(*other), "two-layers");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("num_hidden_layers"), std::string::npos) << status;
  EXPECT_EQ(engine->Stats().model_label, "stories260K");

  // The engine keeps serving on its model.
  Collector collector;
  ASSERT_TRUE(engine->Submit(Greedy("after", "Mom said", 5), collector.Callback()).ok());
  ASSERT_TRUE(collector.Wait());
  EXPECT_TRUE(collector.Last().status.ok()) << collector.Last().status;
}

TEST_F(EngineTest, StopStringEndsTextBeforeIt) {
  std::string full;
  RunSolo(Greedy("full", "Once upon a time", 40), &full);
  const size_t stop_at = full.find("Lily");
  ASSERT_NE(stop_at, std::string::npos) << full;

  GenerationRequest request = Greedy("stop", "Once upon a time", 40);
  request.sampling.stop = {"Lily"};
  std::unique_ptr<Engine> engine = MakeEngine(SmallOptions());
  ASSERT_NE(engine, nullptr);
  Collector collector;
  ASSERT_TRUE(engine->Submit(request, collector.Callback()).ok());
  ASSERT_TRUE(collector.Wait());

  EXPECT_EQ(collector.Text(), full.substr(0, stop_at));
  EXPECT_EQ(collector.Last().finish_reason, FinishReason::kStop);
  EXPECT_LT(collector.Last().usage.generated_tokens, 40);
}

TEST_F(EngineTest, StopTokenIdEndsGeneration) {
  const std::vector<int32_t> full = RunSolo(Greedy("full", "Once upon a time", 20));
  ASSERT_GE(full.size(), 6u);
  GenerationRequest request = Greedy("stop-id", "Once upon a time", 20);
  request.sampling.stop_token_ids = {full[5]};
  const std::vector<int32_t> stopped = RunSolo(request);

  // Generation ends at the first occurrence of the id, which is counted as generated.
  const auto first = std::find(full.begin(), full.end(), full[5]);
  EXPECT_EQ(stopped, std::vector<int32_t>(full.begin(), first + 1));
}

TEST_F(EngineTest, LengthFinishAtMaxTokens) {
  GenerationRequest request = Greedy("length", "Once upon a time", 7);
  std::unique_ptr<Engine> engine = MakeEngine(SmallOptions());
  ASSERT_NE(engine, nullptr);
  Collector collector;
  ASSERT_TRUE(engine->Submit(request, collector.Callback()).ok());
  ASSERT_TRUE(collector.Wait());

  const GenerationUpdate last = collector.Last();
  EXPECT_EQ(last.finish_reason, FinishReason::kLength);
  EXPECT_EQ(last.usage.generated_tokens, 7);
  EXPECT_EQ(last.usage.prompt_tokens, static_cast<int64_t>(request.prompt_ids.size()));
  EXPECT_GE(last.timings.end_to_end_seconds, last.timings.time_to_first_token_seconds);
  EXPECT_GT(last.timings.time_to_first_token_seconds, 0.0);
}

TEST_F(EngineTest, LogprobsListTopAlternatives) {
  GenerationRequest request = Greedy("logprobs", "Once upon a time", 10);
  request.top_logprobs = 3;
  std::unique_ptr<Engine> engine = MakeEngine(SmallOptions());
  ASSERT_NE(engine, nullptr);
  Collector collector;
  ASSERT_TRUE(engine->Submit(request, collector.Callback()).ok());
  ASSERT_TRUE(collector.Wait());

  int64_t count = 0;
  for (const GenerationUpdate& update : collector.Updates()) {
    for (const GeneratedToken& token : update.tokens) {
      count += 1;
      ASSERT_TRUE(token.logprob.has_value());
      EXPECT_LE(*token.logprob, 0.0f);
      ASSERT_EQ(token.top_logprobs.size(), 3u);
      // Greedy picks the most probable token.
      EXPECT_EQ(token.top_logprobs[0].token_id, token.token_id);
      EXPECT_FLOAT_EQ(token.top_logprobs[0].logprob, *token.logprob);
      EXPECT_GE(token.top_logprobs[0].logprob, token.top_logprobs[1].logprob);
      EXPECT_GE(token.top_logprobs[1].logprob, token.top_logprobs[2].logprob);
    }
  }
  EXPECT_EQ(count, 10);
}

TEST_F(EngineTest, EchoScoresPromptTokens) {
  GenerationRequest request = Greedy("echo", "Once upon a time", 5);
  request.echo = true;
  request.top_logprobs = 0;
  std::unique_ptr<Engine> engine = MakeEngine(SmallOptions());
  ASSERT_NE(engine, nullptr);
  Collector collector;
  ASSERT_TRUE(engine->Submit(request, collector.Callback()).ok());
  ASSERT_TRUE(collector.Wait());

  const std::vector<GenerationUpdate> updates = collector.Updates();
  ASSERT_FALSE(updates.empty());
  const std::vector<GeneratedToken>& prompt = updates[0].prompt_tokens;
  ASSERT_EQ(prompt.size(), request.prompt_ids.size());
  EXPECT_FALSE(prompt[0].logprob.has_value());
  for (size_t i = 0; i < prompt.size(); ++i) {
    EXPECT_EQ(prompt[i].token_id, request.prompt_ids[i]);
    if (i > 0) {
      ASSERT_TRUE(prompt[i].logprob.has_value()) << i;
      EXPECT_LE(*prompt[i].logprob, 0.0f);
    }
  }
  EXPECT_EQ(updates[0].prompt_text, "Once upon a time");
  for (size_t i = 1; i < updates.size(); ++i) EXPECT_TRUE(updates[i].prompt_tokens.empty());
}

TEST_F(EngineTest, ObserverSeesStepsAndRequests) {
  auto observer = std::make_shared<CountingObserver>();
  std::unique_ptr<Engine> engine = MakeEngine(SmallOptions(), observer);
  ASSERT_NE(engine, nullptr);
  std::vector<std::unique_ptr<Collector>> collectors;
  int64_t prompt_tokens = 0;
  for (int i = 0; i < 4; ++i) {
    GenerationRequest request = Greedy(absl::StrCat("o", i), Prompts()[i], 12);
    request.sampling.ignore_eos = true;
    prompt_tokens += static_cast<int64_t>(request.prompt_ids.size());
    collectors.push_back(std::make_unique<Collector>());
    ASSERT_TRUE(engine->Submit(request, collectors.back()->Callback()).ok());
  }
  engine->Drain(absl::Seconds(60));

  absl::MutexLock lock(&observer->mu_);
  ASSERT_EQ(observer->finished.size(), 4u);
  for (const RequestStats& request : observer->finished) {
    EXPECT_EQ(request.status, absl::StatusCode::kOk);
    EXPECT_EQ(request.finish_reason, FinishReason::kLength);
    EXPECT_EQ(request.generated_tokens, 12);
    EXPECT_GT(request.time_per_output_token_seconds, 0.0);
    EXPECT_EQ(request.model_label, "stories260K");
  }
  // Each request's prompt is prefilled once; its first token comes from the prefill and the
  // other 11 from decode steps.
  EXPECT_EQ(observer->prefill_tokens, prompt_tokens);
  EXPECT_EQ(observer->decode_tokens, 4 * 11);
  EXPECT_GT(observer->max_sequences, 1);
  EXPECT_EQ(observer->last_load.running, 0);
  EXPECT_EQ(observer->last_load.kv_blocks_used, 0);
  EXPECT_GT(observer->loads, 0);
}

TEST_F(EngineTest, SeededSamplingRepeats) {
  GenerationRequest request = Greedy("seeded", "Once upon a time", 30);
  request.sampling.temperature = 1.0;
  request.sampling.seed = 42;
  request.sampling.has_seed = true;
  EXPECT_EQ(RunSolo(request), RunSolo(request));
}

// With a vocabulary of 16384 tokens or more, the sequences of a step sample in parallel. The
// seeded draws of each sequence must equal those of the same request run alone.
TEST_F(EngineTest, ParallelSamplingMatchesSolo) {
  testing::TempDir dir;
  MakeModelOptions make_options;
  make_options.config = LoadStories260K().model->config();
  make_options.config.vocab_size = 32768;
  make_options.seed = 3;
  ASSERT_TRUE(MakeModel(make_options, dir.path()).ok());
  auto checkpoint = Checkpoint::Open(dir.path());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  auto created = Model::Create(**checkpoint, Fp32LinearFactory());
  ASSERT_TRUE(created.ok()) << created.status();
  const std::shared_ptr<const Model> model = std::move(*created);

  // Runs `requests` at once on a fresh engine and returns the tokens of each.
  const auto run = [&](const std::vector<GenerationRequest>& requests) {
    std::vector<std::vector<int32_t>> tokens(requests.size());
    auto engine = Engine::Create(model, LoadStories260K().tokenizer, SmallOptions());
    EXPECT_TRUE(engine.ok()) << engine.status();
    if (!engine.ok()) return tokens;
    std::vector<std::unique_ptr<Collector>> collectors;
    for (const GenerationRequest& request : requests) {
      collectors.push_back(std::make_unique<Collector>());
      EXPECT_TRUE((*engine)->Submit(request, collectors.back()->Callback()).ok());
    }
    for (size_t i = 0; i < requests.size(); ++i) {
      EXPECT_TRUE(collectors[i]->Wait()) << requests[i].request_id;
      tokens[i] = collectors[i]->Tokens();
    }
    return tokens;
  };

  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 4; ++i) {
    GenerationRequest request = Greedy(absl::StrCat("sampled-", i), Prompts()[i], 12);
    request.sampling.temperature = 1.0;
    request.sampling.seed = 100 + i;
    request.sampling.has_seed = true;
    request.sampling.ignore_eos = true;
    requests.push_back(request);
  }
  const std::vector<std::vector<int32_t>> together = run(requests);
  for (size_t i = 0; i < requests.size(); ++i) {
    const std::vector<std::vector<int32_t>> alone = run({requests[i]});
    EXPECT_EQ(together[i].size(), 12u) << requests[i].request_id;
    EXPECT_EQ(together[i], alone[0]) << requests[i].request_id;
  }
}

TEST_F(EngineTest, InvalidOptionsAreRejected) {
  const Stories260K& stories = LoadStories260K();
  EngineOptions options;
  options.max_batch_tokens = 4;
  options.max_running_sequences = 8;
  auto engine = Engine::Create(stories.model, stories.tokenizer, options);
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(engine.status().message().find("max_batch_tokens"), std::string::npos);

  options = EngineOptions{};
  options.kv_cache_bytes = 10;
  engine = Engine::Create(stories.model, stories.tokenizer, options);
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(engine.status().message().find("kv_cache_bytes"), std::string::npos);
}

TEST_F(EngineTest, ContextIsCappedByPool) {
  EngineOptions options;
  options.max_running_sequences = 1;
  options.kv_cache_bytes = static_cast<int64_t>(
      2 * KvCache::BytesPerBlock(LoadStories260K().model->config(), options.block_size));
  std::unique_ptr<Engine> engine = MakeEngine(options);
  ASSERT_NE(engine, nullptr);
  EXPECT_EQ(engine->options().max_context, 32);
  Collector collector;
  EXPECT_EQ(engine->Submit(Greedy("big", "Once upon a time", 30), collector.Callback()).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace w8a8

// OpenMP workers that spin-wait after each parallel region take CPU time from the engine
// thread, and on a machine with more runnable threads than cores each engine step then waits
// for time slices. libgomp reads OMP_WAIT_POLICY when it loads, so the suite sets it and starts
// itself again.
int main(int argc, char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) {
    ::setenv("OMP_WAIT_POLICY", "passive", /*overwrite=*/1);
    ::execv("/proc/self/exe", argv);
    std::perror("engine_test: execv of /proc/self/exe failed; running with the default policy");
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
