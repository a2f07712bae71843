// Per-request state of the serving engine: tokens, KV-cache progress, sampling, and the rules
// that turn sampled tokens into streamed text and a finish reason.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "core/engine.h"
#include "core/model.h"
#include "core/sampler.h"
#include "core/tokenizer.h"

namespace w8a8 {

// One request inside the engine. Not thread-safe: only the engine thread touches it after
// Submit has built it. The tokenizer passed to the constructor must outlive the sequence.
class EngineSequence {
 public:
  // `end_ids` are the model's end-of-sequence ids; they stop generation unless
  // request.sampling.ignore_eos is set. `deadline` is the resolved deadline of the request.
  EngineSequence(uint64_t id, GenerationRequest request, GenerationCallback callback,
                 std::shared_ptr<const Model> model, std::string model_label,
                 const Tokenizer& tokenizer, std::span<const int32_t> end_ids,
                 absl::Time submitted, absl::Time deadline);

  uint64_t id() const { return id_; }
  const GenerationRequest& request() const { return request_; }
  const std::shared_ptr<const Model>& model() const { return model_; }
  absl::Time deadline() const { return deadline_; }

  // Prompt followed by the generated tokens.
  const std::vector<int32_t>& tokens() const { return tokens_; }
  int64_t num_prompt_tokens() const { return num_prompt_tokens_; }
  int64_t num_generated() const { return static_cast<int64_t>(tokens_.size()) - num_prompt_tokens_; }

  // Leading tokens whose keys and values are in the KV cache, and the blocks that hold them.
  int64_t num_computed = 0;
  std::vector<int32_t> block_table;

  // Whether the logits of every position of a chunk starting at `num_computed` are needed,
  // because echo requests log-probabilities of prompt tokens not yet scored.
  bool NeedsAllLogits() const;

  // Records the log-probabilities of prompt tokens from the rows of a chunk that started at
  // position `first_position`: row j scores the token at first_position + j + 1.
  void ScorePromptTokens(std::span<const float> rows, int64_t first_position);

  // Samples the next token from one row of logits (modified in place), appends it, and applies
  // the stop ids, stop strings and max_tokens.
  void SampleNext(std::span<float> logits, absl::Time now);

  // Marks the first admission, for the queue and prefill timings. Later calls, after a
  // preemption, change nothing.
  void MarkAdmitted(absl::Time now);

  // Ends the request. The text held back for stop-string matching is flushed unless the request
  // stopped on a stop string. Later calls change nothing.
  void Finish(FinishReason reason, absl::Status status, absl::Time now);
  bool finished() const { return finished_; }

  // Whether an update is ready for the callback: new tokens, text, echo, or the end.
  bool HasUpdate() const;
  // Moves the ready update out; the next one starts empty.
  GenerationUpdate TakeUpdate();
  const GenerationCallback& callback() const { return callback_; }

  // Statistics of the finished request for the observer.
  RequestStats Stats() const;

 private:
  // Logprob of `token` and the top alternatives from one row of raw logits.
  GeneratedToken ScoreToken(std::span<const float> logits, int32_t token) const;
  void AppendText(const std::string& piece, absl::Time now);
  void FlushText();
  GenerationTimings Timings() const;

  uint64_t id_;
  GenerationRequest request_;
  GenerationCallback callback_;
  std::shared_ptr<const Model> model_;
  std::string model_label_;
  const Tokenizer& tokenizer_;
  Sampler sampler_;
  StreamingDetokenizer detokenizer_;
  absl::flat_hash_set<int32_t> stop_ids_;

  std::vector<int32_t> tokens_;
  int64_t num_prompt_tokens_;
  // Echoed prompt tokens; their log-probabilities fill in as prefill chunks are scored.
  std::vector<GeneratedToken> echo_tokens_;
  int64_t num_scored_prompt_tokens_ = 1;  // The first prompt token has no score.
  bool echo_sent_ = false;

  std::string held_text_;  // Decoded text not sent yet because it may begin a stop string.
  bool stopped_by_string_ = false;
  GenerationUpdate pending_;

  bool finished_ = false;
  FinishReason finish_reason_ = FinishReason::kStop;
  absl::Status status_;

  absl::Time submitted_;
  absl::Time deadline_;
  absl::Time admitted_ = absl::InfinitePast();     // First admission.
  absl::Time first_token_ = absl::InfinitePast();  // First generated token.
  absl::Time finished_at_ = absl::InfinitePast();
};

}  // namespace w8a8
