// Next-token selection from logits, with the sampling parameters OpenAI-style APIs expose.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace w8a8 {

struct SamplingParams {
  double temperature = 1.0;  // 0 selects greedy decoding.
  int64_t top_k = 0;         // 0 keeps every token.
  double top_p = 1.0;        // In (0, 1].
  double min_p = 0.0;        // In [0, 1]: drops tokens below min_p times the top probability.
  double repetition_penalty = 1.0;  // > 0; 1 disables. Divides positive logits of seen tokens.
  double frequency_penalty = 0.0;   // In [-2, 2]; subtracts count * penalty.
  double presence_penalty = 0.0;    // In [-2, 2]; subtracts penalty once per seen token.
  uint64_t seed = 0;
  bool has_seed = false;  // Without a seed, a random one is drawn per request.
  int64_t max_tokens = 256;
  std::vector<std::string> stop;          // Generation ends before the first stop string.
  std::vector<int32_t> stop_token_ids;    // In addition to the model's end-of-sequence ids.
  bool ignore_eos = false;

  // Checks every field; the message names the field, the value and the valid range.
  absl::Status Validate() const;
};

// Picks tokens in a fixed order of steps: penalties for tokens in the history (repetition,
// then frequency and presence), greedy argmax when temperature is 0, else logits / temperature,
// top-k, top-p, min-p, and one inverse-CDF draw. The draw takes the top 53 bits of one
// std::mt19937_64 output as a uniform double in [0, 1), so a seed gives the same tokens with
// every standard library. Not thread-safe: one Sampler per sequence.
class Sampler {
 public:
  // `params` should have passed Validate(). Without params.has_seed, the seed is the next draw
  // of a per-thread std::mt19937_64 seeded from std::random_device.
  explicit Sampler(const SamplingParams& params);
  // Picks the next token. `history` holds the tokens the penalties count (the generator passes
  // the prompt and the generated tokens); ids outside `logits` are ignored. `logits` is
  // modified in place. Greedy ties go to the lowest id.
  int32_t Sample(std::span<float> logits, std::span<const int32_t> history);

 private:
  void ApplyPenalties(std::span<float> logits, std::span<const int32_t> history) const;

  SamplingParams params_;
  std::mt19937_64 rng_;
};

// Log-softmax of `logits` into `out` (same size).
void LogSoftmax(std::span<const float> logits, std::span<float> out);

}  // namespace w8a8
