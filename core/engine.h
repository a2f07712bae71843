// The serving engine: continuous batching of many generation requests over one model, with a
// paged KV cache and chunked prefill.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/model.h"
#include "core/sampler.h"
#include "core/tokenizer.h"

namespace w8a8 {

struct EngineOptions {
  int64_t max_running_sequences = 16;  // Sequences that hold KV-cache blocks at once.
  int64_t max_batch_tokens = 512;      // Token budget of one step; >= max_running_sequences.
  int64_t max_queued_requests = 256;   // Submitted but not yet running; Submit rejects beyond.
  // Memory budget of the KV cache in bytes. The pool has
  // kv_cache_bytes / KvCache::BytesPerBlock(config, block_size) blocks, at least one.
  int64_t kv_cache_bytes = int64_t{1} << 30;
  int64_t block_size = 16;  // Positions per KV-cache block.
  // Maximum prompt plus generated tokens of one request. 0 selects the model's
  // max_position_embeddings. Either way it is capped at the positions the block pool holds.
  int64_t max_context = 0;
  // Time limit of a request that arrives without a deadline. absl::InfiniteDuration() sets none.
  absl::Duration default_timeout = absl::InfiniteDuration();
  int64_t max_top_logprobs = 20;  // Maximum GenerationRequest::top_logprobs.

  // Checks every field; the message names the field, the value and the valid range.
  absl::Status Validate() const;
};

struct GenerationRequest {
  std::string request_id;  // Non-empty, unique among the requests in flight.
  std::vector<int32_t> prompt_ids;
  SamplingParams sampling;
  // Log-probabilities per token: -1 none, 0 the chosen token's only, n > 0 also the n most
  // probable alternatives.
  int32_t top_logprobs = -1;
  // Send the prompt tokens (and their log-probabilities when top_logprobs >= 0) in the first
  // update.
  bool echo = false;
  // absl::InfiniteFuture() selects EngineOptions::default_timeout from submission.
  absl::Time deadline = absl::InfiniteFuture();
};

enum class FinishReason {
  kStop,       // End-of-sequence id, a stop id or a stop string.
  kLength,     // max_tokens reached, or the context is full.
  kCancelled,  // Engine::Cancel.
  kDeadline,   // The request's deadline passed.
  kError,      // Model failure or shutdown; GenerationUpdate::status contains the cause.
};

// "stop", "length", "cancelled", "deadline" or "error".
std::string_view FinishReasonName(FinishReason reason);

struct LogprobAlternative {
  int32_t token_id = 0;
  float logprob = 0.0f;  // Natural log of the probability before sampling penalties.
};

struct GeneratedToken {
  int32_t token_id = 0;
  // Set when the request sets top_logprobs >= 0; unset for the first echoed prompt token,
  // which has no preceding context.
  std::optional<float> logprob;
  std::vector<LogprobAlternative> top_logprobs;  // Most probable first.
};

struct GenerationUsage {
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
};

// Durations of one request, in seconds. Prefill runs from admission to the first generated
// token, decode from there to the end.
struct GenerationTimings {
  double queue_seconds = 0;
  double time_to_first_token_seconds = 0;  // From submission.
  double prefill_seconds = 0;
  double decode_seconds = 0;
  double end_to_end_seconds = 0;
};

// One message to a request's callback: new tokens with their text, and on the last one the
// finish reason, usage and timings.
struct GenerationUpdate {
  std::string request_id;
  // With echo only, in the first update: the prompt and its decoded text.
  std::vector<GeneratedToken> prompt_tokens;
  std::string prompt_text;
  std::vector<GeneratedToken> tokens;  // Generated since the previous update.
  // Text of the generated tokens since the previous update. It holds back bytes of incomplete
  // UTF-8 characters and text that may begin a stop string, so the pieces concatenate to the
  // final output. A stop string and the end-of-sequence token add no text.
  std::string text;

  bool finished = false;  // The members below are set only when true.
  FinishReason finish_reason = FinishReason::kStop;
  // OK for stop and length; CANCELLED, DEADLINE_EXCEEDED, or the error otherwise.
  absl::Status status;
  GenerationUsage usage;
  GenerationTimings timings;
  std::string model_label;  // The model the request ran on.
};

// Receives every update of one request, in order, on the engine thread. It must return quickly
// and must not block, because the whole batch waits for it. It may call Submit, Cancel, Stats
// and SwapModel, but never Drain or the destructor, which wait for the engine thread.
using GenerationCallback = std::function<void(GenerationUpdate update)>;

// One engine step.
struct StepStats {
  int64_t num_sequences = 0;
  int64_t num_tokens = 0;
  int64_t num_prefill_tokens = 0;
  int64_t num_decode_tokens = 0;
  int64_t num_preempted = 0;  // Sequences sent back to the queue for recomputation.
  double seconds = 0;         // Scheduling, forward passes and sampling, without callbacks.
};

// One finished request.
struct RequestStats {
  std::string request_id;
  absl::StatusCode status = absl::StatusCode::kOk;
  FinishReason finish_reason = FinishReason::kStop;
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  double queue_seconds = 0;
  double time_to_first_token_seconds = 0;
  // Decode seconds over generated tokens after the first; 0 with fewer than two tokens.
  double time_per_output_token_seconds = 0;
  double end_to_end_seconds = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
  std::string model_label;
};

// A snapshot of the engine's load.
struct EngineStats {
  int64_t running = 0;  // Sequences holding KV-cache blocks.
  int64_t waiting = 0;  // Submitted, not yet running, including preempted sequences.
  int64_t kv_blocks_used = 0;
  int64_t kv_blocks_total = 0;
  int64_t block_size = 0;
  int64_t steps = 0;        // Since creation.
  int64_t preemptions = 0;  // Since creation.
  int64_t compute_threads = 0;  // OpenMP threads of the engine thread's kernels.
  bool draining = false;
  std::string model_label;  // The model new requests start on.
};

// Metrics hooks, implemented by the server. Every method runs on the engine thread and must not
// block. The default implementations do nothing.
class EngineObserver {
 public:
  virtual ~EngineObserver() = default;
  virtual void OnStep(const StepStats& /*step*/) {}
  virtual void OnRequestFinished(const RequestStats& /*request*/) {}
  // After every step and whenever requests arrive or leave.
  virtual void OnLoad(const EngineStats& /*stats*/) {}
};

// Runs generation requests on one engine thread. Each step batches one decode token of every
// running sequence with chunks of waiting prompts into one Model::Forward per model, within
// max_batch_tokens and max_running_sequences. KV-cache blocks come from one pool sized by
// kv_cache_bytes. A request is admitted only when the blocks for its whole prompt are free, and
// grows block by block while decoding. When the pool runs out during decode, the newest running
// sequence is preempted: its blocks are freed and it returns to the front of the queue. It is
// later recomputed from its prompt and the tokens generated so far, so its output is unchanged.
//
// Thread safety: every public method may be called from any thread. Submit, Cancel, Stats and
// SwapModel do not block on the engine thread; Drain and the destructor do. No lock is held
// while callbacks or the observer run.
class Engine {
 public:
  // Starts the engine thread. `model_label` names the model in updates and stats. The engine
  // shares ownership of the optional observer.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(
      std::shared_ptr<const Model> model, std::shared_ptr<const Tokenizer> tokenizer,
      EngineOptions options, std::shared_ptr<EngineObserver> observer = nullptr,
      std::string model_label = "default");

  // Finishes every request still queued or running with kError (UNAVAILABLE), then stops the
  // engine thread. Callbacks of those requests run before it returns.
  ~Engine();

  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues `request`; `callback` receives its updates. Returns at once:
  //  - RESOURCE_EXHAUSTED when max_queued_requests requests are already waiting;
  //  - INVALID_ARGUMENT naming the field for an empty request_id or prompt, a token id outside
  //    the vocabulary, prompt plus max_tokens beyond the context, invalid sampling parameters
  //    (SamplingParams::Validate) or top_logprobs outside [-1, max_top_logprobs];
  //  - ALREADY_EXISTS when a request with the same id is in flight;
  //  - UNAVAILABLE while draining.
  // The callback is never called when Submit fails.
  absl::Status Submit(GenerationRequest request, GenerationCallback callback);

  // Asks the engine to stop the request; its last update follows with kCancelled and its blocks
  // are freed. Returns NOT_FOUND when no request with that id is in flight. A request is in
  // flight from Submit until its last callback returns.
  absl::Status Cancel(std::string_view request_id);

  // Stops admitting new requests (Submit returns UNAVAILABLE from now on), lets queued and
  // running requests finish, and after `grace` finishes the rest with kError (UNAVAILABLE).
  // Blocks until no request is in flight, so every last callback has returned.
  void Drain(absl::Duration grace);

  // Starts new requests on `model` from now on. Requests already submitted finish on the model
  // they started with. Returns INVALID_ARGUMENT when the model's KV-cache layout (layers, key/value
  // heads, head dim) or vocabulary size differs from the current model's.
  absl::Status SwapModel(std::shared_ptr<const Model> model, std::string model_label);

  EngineStats Stats() const;
  // The options in effect, with max_context resolved.
  const EngineOptions& options() const;

 private:
  class Impl;
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace w8a8
