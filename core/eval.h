// Offline accuracy evaluation: perplexity over a text, multiple-choice tasks scored by
// log-likelihood, and the fidelity of a quantized model against its full-precision reference.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model.h"
#include "core/tokenizer.h"

namespace w8a8 {

// Sliding windows over a long token sequence. Each window is a fresh prefill of at most
// `context_length` tokens, and windows start every `stride` tokens. Each token is scored once,
// in the first window that reaches it, with the left context that window has.
struct WindowOptions {
  int64_t context_length = 512;
  int64_t stride = 256;  // In [1, context_length].

  absl::Status Validate() const;
};

struct PerplexityResult {
  int64_t tokens_scored = 0;
  double negative_log_likelihood = 0.0;  // Sum over the scored tokens, in nats.

  double perplexity() const;
};

// Perplexity of `tokens` under `model`. The first token is context only.
absl::StatusOr<PerplexityResult> ComputePerplexity(const Model& model,
                                                   std::span<const int32_t> tokens,
                                                   const WindowOptions& options);

// Next-token fidelity of `candidate` against `reference` on the same tokens and windows.
struct FidelityResult {
  int64_t positions = 0;
  double mean_kl = 0.0;  // Mean KL(reference || candidate) of next-token distributions, nats.
  double p99_kl = 0.0;   // 99th percentile of the same, nearest-rank.
  double top1_agreement = 0.0;  // Fraction of positions whose argmax tokens are equal.
  int64_t top1_agreements = 0;  // Positions whose argmax tokens are equal.
  std::vector<double> kl_values;  // KL of every scored position, in token order, nats.
  PerplexityResult reference;
  PerplexityResult candidate;
};

absl::StatusOr<FidelityResult> CompareModels(const Model& reference, const Model& candidate,
                                             std::span<const int32_t> tokens,
                                             const WindowOptions& options);

// One multiple-choice item: the model scores each `choices[i]` as a continuation of `context`.
struct MultipleChoiceItem {
  std::string context;
  std::vector<std::string> choices;
  int64_t gold = 0;  // Index into choices.
};

// Names of the JSONL fields of an item. The gold field may contain an integer index, a string
// of digits, or a string equal to one of the choices.
struct TaskFieldMapping {
  std::string context = "context";
  std::string choices = "choices";
  std::string gold = "gold";
};

// Parses "context=query,choices=endings,gold=label". Roles left out keep their defaults.
absl::StatusOr<TaskFieldMapping> ParseTaskFieldMapping(const std::string& text);

// Reads one item per non-empty line. Errors name the file, the line number and the field.
absl::StatusOr<std::vector<MultipleChoiceItem>> ReadMultipleChoiceJsonl(
    const std::filesystem::path& path, const TaskFieldMapping& fields);

// Accuracy picks the choice of highest summed log-likelihood. Normalized accuracy divides
// each choice's log-likelihood by its length in UTF-8 bytes, as lm-evaluation-harness's
// acc_norm does. Standard errors are those of a mean of 0/1 outcomes with the sample variance.
struct MultipleChoiceResult {
  int64_t items = 0;
  double accuracy = 0.0;
  double accuracy_stderr = 0.0;
  double accuracy_norm = 0.0;
  double accuracy_norm_stderr = 0.0;
};

// Scores every item. The context is encoded with BOS. A choice's tokens are those that the
// encoding of context + choice has after its common prefix with the context's tokens.
absl::StatusOr<MultipleChoiceResult> EvaluateMultipleChoice(
    const Model& model, const Tokenizer& tokenizer, const std::vector<MultipleChoiceItem>& items);

// Summed log-probability of `continuation` after `context` (both token ids, context non-empty).
absl::StatusOr<double> ContinuationLogLikelihood(const Model& model,
                                                 std::span<const int32_t> context,
                                                 std::span<const int32_t> continuation);

}  // namespace w8a8
