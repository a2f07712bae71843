// The engine suite of `w8a8 bench`: the continuous batching engine that w8a8-server runs,
// driven in-process with the same closed-loop load that `w8a8-client load` sends over gRPC, so
// the two reports compare serving overhead on identical work.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/checkpoint.h"
#include "core/engine.h"
#include "kernels/threads.h"
#include "core/model.h"
#include "core/quantization.h"
#include "core/tokenizer.h"
#include "tools/bench_suites.h"

namespace w8a8::tools {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsBetween(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

// User plus system CPU seconds of every thread of this process so far.
double ProcessCpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& time) {
    return static_cast<double>(time.tv_sec) + static_cast<double>(time.tv_usec) * 1e-6;
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

// Nearest-rank percentiles with the fields and units of `w8a8-client load --json`.
nlohmann::json Summarize(std::vector<double> samples) {
  nlohmann::json result = {{"count", 0}, {"mean", 0.0}, {"p50", 0.0},
                           {"p90", 0.0}, {"p99", 0.0},  {"max", 0.0}};
  if (samples.empty()) return result;
  std::sort(samples.begin(), samples.end());
  auto rank = [&](double q) {
    const size_t index = static_cast<size_t>(std::ceil(q * static_cast<double>(samples.size())));
    return samples[std::clamp<size_t>(index, 1, samples.size()) - 1];
  };
  double sum = 0;
  for (double sample : samples) sum += sample;
  result["count"] = static_cast<int64_t>(samples.size());
  result["mean"] = sum / static_cast<double>(samples.size());
  result["p50"] = rank(0.5);
  result["p90"] = rank(0.9);
  result["p99"] = rank(0.99);
  result["max"] = samples.back();
  return result;
}

// The closed loop: `concurrency` requests in flight, and each finished request submits the next
// one from its last callback until `requests` have been submitted. Timestamps are taken where
// the gRPC client takes them: before Submit, and when an update with tokens arrives.
class ClosedLoop {
 public:
  ClosedLoop(Engine& engine, GenerationRequest request, int64_t requests)
      : engine_(engine), request_(std::move(request)), requests_(requests) {}

  // Submits the first `concurrency` requests and blocks until every request has finished.
  void Run(int64_t concurrency) {
    start_ = Clock::now();
    for (int64_t i = 0; i < concurrency; ++i) SubmitNext();
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return finished_ == submitted_ && submitted_ == requests_; });
    end_ = Clock::now();
  }

  // The fields of `w8a8-client load --json`, measured in-process.
  nlohmann::json Report(int64_t concurrency) const {
    std::lock_guard<std::mutex> lock(mutex_);
    const double seconds = SecondsBetween(start_, end_);
    return {{"concurrency", concurrency},
            {"succeeded", succeeded_},
            {"failed", failed_},
            {"errors", errors_},
            {"first_error", first_error_},
            {"generated_tokens", generated_tokens_},
            {"seconds", seconds},
            {"requests_per_second", seconds > 0 ? static_cast<double>(succeeded_) / seconds : 0},
            {"tokens_per_second",
             seconds > 0 ? static_cast<double>(generated_tokens_) / seconds : 0},
            {"time_to_first_token_seconds", Summarize(time_to_first_token_)},
            {"inter_token_latency_seconds", Summarize(inter_token_latency_)},
            {"request_latency_seconds", Summarize(request_latency_)}};
  }

 private:
  // Per-request timing state, owned by the callback of that request.
  struct Timing {
    Clock::time_point sent;
    Clock::time_point previous;
    double first_token_seconds = -1;  // From `sent`; negative until the first token.
    int64_t tokens = 0;
    std::vector<double> gaps;  // Seconds per token after the first.
  };

  // Submits the next request, if any remain. A request that Submit rejects counts as failed
  // and the next one is tried, as the gRPC client's workers do. Called from Run and from the
  // engine thread.
  void SubmitNext() {
    while (true) {
      GenerationRequest request = request_;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (submitted_ == requests_) return;
        request.request_id = absl::StrCat("bench-", submitted_);
        ++submitted_;
      }
      auto timing = std::make_shared<Timing>();
      timing->sent = Clock::now();
      timing->previous = timing->sent;
      absl::Status status =
          engine_.Submit(std::move(request), [this, timing](GenerationUpdate update) {
            OnUpdate(*timing, update);
          });
      if (status.ok()) return;
      Finish(nullptr, status);
    }
  }

  void OnUpdate(Timing& timing, const GenerationUpdate& update) {
    const int64_t count = static_cast<int64_t>(update.tokens.size());
    if (count > 0) {
      const Clock::time_point now = Clock::now();
      if (timing.first_token_seconds < 0) {
        timing.first_token_seconds = SecondsBetween(timing.sent, now);
        // Tokens that arrive with the first one share its latency.
        for (int64_t i = 1; i < count; ++i) timing.gaps.push_back(0.0);
      } else {
        const double gap = SecondsBetween(timing.previous, now) / static_cast<double>(count);
        for (int64_t i = 0; i < count; ++i) timing.gaps.push_back(gap);
      }
      timing.previous = now;
      timing.tokens += count;
    }
    if (!update.finished) return;
    Finish(&timing, update.status);
    SubmitNext();
  }

  // Records one finished request; `timing` is null for a request that Submit rejected.
  void Finish(const Timing* timing, const absl::Status& status) {
    const Clock::time_point now = Clock::now();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++finished_;
      if (status.ok() && timing != nullptr) {
        ++succeeded_;
        generated_tokens_ += timing->tokens;
        if (timing->first_token_seconds >= 0) {
          time_to_first_token_.push_back(timing->first_token_seconds);
        }
        inter_token_latency_.insert(inter_token_latency_.end(), timing->gaps.begin(),
                                    timing->gaps.end());
        request_latency_.push_back(SecondsBetween(timing->sent, now));
      } else {
        ++failed_;
        ++errors_[absl::StatusCodeToString(status.code())];
        if (first_error_.empty()) first_error_ = std::string(status.message());
      }
    }
    done_.notify_all();
  }

  Engine& engine_;
  const GenerationRequest request_;
  const int64_t requests_;

  mutable std::mutex mutex_;
  std::condition_variable done_;
  int64_t submitted_ = 0;
  int64_t finished_ = 0;
  int64_t succeeded_ = 0;
  int64_t failed_ = 0;
  int64_t generated_tokens_ = 0;
  std::map<std::string, int64_t> errors_;
  std::string first_error_;
  std::vector<double> time_to_first_token_;
  std::vector<double> inter_token_latency_;
  std::vector<double> request_latency_;
  Clock::time_point start_;
  Clock::time_point end_;
};

}  // namespace

absl::StatusOr<nlohmann::json> RunEngineSuite(const EngineSuiteOptions& options) {
  if (options.prompt.empty()) {
    return absl::InvalidArgumentError("the engine suite needs --prompt: the text every request "
                                      "sends.");
  }
  if (options.requests < 1 || options.concurrency < 1 || options.max_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the engine suite needs --requests, --concurrency and --max-tokens of at least 1, got ",
        options.requests, ", ", options.concurrency, " and ", options.max_tokens, "."));
  }
  if (absl::Status status = options.engine.Validate(); !status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("engine options: ", status.message()));
  }

  const Clock::time_point load_start = Clock::now();
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(options.model_path);
  if (!checkpoint.ok()) return checkpoint.status();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::FromSource((*checkpoint)->tokenizer_source());
  if (!tokenizer.ok()) return tokenizer.status();
  // Planning and quantizing run on a thread of their own, so that their OpenMP workers exit
  // before the engine thread starts its own.
  absl::StatusOr<std::unique_ptr<Model>> model = kernels::RunOnTransientThread(
      [&]() -> absl::StatusOr<std::unique_ptr<Model>> {
        // fp32 becomes the empty plan, which runs a compressed-tensors checkpoint as stored and
        // any other checkpoint in FP32, as the server's fp32 plan does.
        absl::StatusOr<LinearFactory> factory = LinearFactoryForPlan(
            **checkpoint, options.plan == "fp32" ? std::string() : options.plan);
        if (!factory.ok()) return factory.status();
        // The server sizes the model's forward batches by its engine's step budget.
        ModelOptions model_options;
        model_options.max_batch_tokens = options.engine.max_batch_tokens;
        return Model::Create(**checkpoint, *factory, model_options);
      });
  if (!model.ok()) return model.status();
  const double load_seconds = SecondsBetween(load_start, Clock::now());

  std::shared_ptr<const Tokenizer> shared_tokenizer = *std::move(tokenizer);
  GenerationRequest request;
  // Encoded as the server encodes a text prompt: BOS when the tokenizer's configuration adds
  // one, and special-token strings become their ids.
  request.prompt_ids =
      shared_tokenizer->Encode(options.prompt, shared_tokenizer->adds_bos(), /*parse_special=*/true);
  request.sampling.max_tokens = options.max_tokens;
  request.sampling.ignore_eos = true;
  const int64_t prompt_tokens = static_cast<int64_t>(request.prompt_ids.size());

  absl::StatusOr<std::unique_ptr<Engine>> created =
      Engine::Create(*std::move(model), shared_tokenizer, options.engine);
  if (!created.ok()) return created.status();
  std::unique_ptr<Engine> engine = *std::move(created);
  if (prompt_tokens + options.max_tokens > engine->options().max_context) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the prompt has ", prompt_tokens, " tokens, and with --max-tokens=", options.max_tokens,
        " it exceeds the context of ", engine->options().max_context,
        " positions; lower --max-tokens or shorten --prompt."));
  }

  ClosedLoop loop(*engine, std::move(request), options.requests);
  const double cpu_start = ProcessCpuSeconds();
  loop.Run(options.concurrency);
  // The last callback may still be running when Run returns; stopping the engine waits for it,
  // so `loop` is no longer referenced by the engine thread.
  engine.reset();
  const double cpu_seconds = ProcessCpuSeconds() - cpu_start;
  nlohmann::json report = loop.Report(options.concurrency);
  // CPU time of the run, less sensitive than wall time to other processes on a shared machine.
  report["cpu_seconds"] = cpu_seconds;
  report["path"] = options.model_path;
  report["plan"] = options.plan;
  report["load_seconds"] = load_seconds;
  report["requests"] = options.requests;
  report["max_tokens"] = options.max_tokens;
  report["prompt_tokens"] = prompt_tokens;
  report["max_running"] = options.engine.max_running_sequences;
  report["max_batch_tokens"] = options.engine.max_batch_tokens;
  return report;
}

}  // namespace w8a8::tools
