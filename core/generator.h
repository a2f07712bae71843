// Single-sequence text generation: prompt in, sampled continuation out, with stop tokens, stop
// strings, streaming and log-probabilities. The server batches many sequences with its own
// engine; this loop serves the offline tool and the tests.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model.h"
#include "core/sampler.h"
#include "core/tokenizer.h"

namespace w8a8 {

struct GenerationOptions {
  SamplingParams sampling;
  // Log-probabilities of the sampled tokens, each with this many most likely alternatives.
  bool logprobs = false;
  int64_t top_logprobs = 0;
  int64_t block_size = 16;  // Positions per KV-cache block.
};

struct TopLogprob {
  int32_t token;
  float logprob;
};

// Log-probabilities come from the model's raw logits, before penalties and temperature.
struct TokenLogprob {
  int32_t token;
  std::string bytes;  // Tokenizer::TokenBytes of the token; may be part of a UTF-8 character.
  float logprob;
  std::vector<TopLogprob> top;  // Most likely first; top_logprobs entries.
};

struct GenerationResult {
  std::vector<int32_t> prompt_tokens;
  // Every sampled token, including a final stop token, whose text is not part of `text`.
  std::vector<int32_t> tokens;
  std::string text;           // The continuation, cut before the first stop string.
  std::string finish_reason;  // "stop" (stop token or stop string) or "length".
  std::vector<TokenLogprob> logprobs;  // One per entry of `tokens` when requested.
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;  // From the first sampled token to the end.
};

// Receives text as soon as it is final: complete UTF-8 characters that can no longer become
// part of a stop string. The pieces concatenate to GenerationResult::text.
using TextCallback = std::function<void(std::string_view piece)>;

// Thread safety: Generate keeps all state (KV cache, sampler) per call, so concurrent calls are
// safe. Each call blocks until generation ends and uses OpenMP worker threads.
class Generator {
 public:
  // Neither argument is owned; both must outlive the Generator.
  Generator(const Model& model, const Tokenizer& tokenizer);

  // Encodes `prompt` with BOS (special-token strings such as "<|eot_id|>" become their ids)
  // and generates from it.
  absl::StatusOr<GenerationResult> Generate(std::string_view prompt,
                                            const GenerationOptions& options,
                                            const TextCallback& on_text = nullptr) const;
  // Generates from token ids. Stops at the first of: an end id of the model or tokenizer
  // (unless ignore_eos), an id in stop_token_ids, a stop string, max_tokens tokens, or the
  // model's max_position_embeddings (finish reason "length"). Fails on invalid sampling
  // parameters or an empty prompt.
  absl::StatusOr<GenerationResult> Generate(std::span<const int32_t> prompt_tokens,
                                            const GenerationOptions& options,
                                            const TextCallback& on_text = nullptr) const;

  // The end-of-sequence ids that stop generation: the model config's and the tokenizer's.
  std::vector<int32_t> EndTokenIds() const;

 private:
  const Model& model_;
  const Tokenizer& tokenizer_;
};

// Runs `tokens` through `model` in one prefill and returns the logits of every position,
// [tokens.size(), vocab_size] row-major.
absl::StatusOr<std::vector<float>> PromptLogits(const Model& model,
                                                std::span<const int32_t> tokens);

}  // namespace w8a8
