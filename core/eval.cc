#include "core/eval.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <limits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/generator.h"
#include "core/sampler.h"
#include "core/status_macros.h"
#include "nlohmann/json.hpp"

namespace w8a8 {
namespace {

// Calls `score(logits, window_begin, first_target, end)` for each window, where the logits
// cover tokens [window_begin, end) and targets [first_target, end) are the ones to score: the
// logit row of target t is t - 1 - window_begin.
absl::Status ForEachWindow(
    const Model& model, std::span<const int32_t> tokens, const WindowOptions& options,
    const std::function<absl::Status(const std::vector<float>&, int64_t, int64_t, int64_t)>&
        score) {
  RETURN_IF_ERROR(options.Validate());
  const int64_t count = static_cast<int64_t>(tokens.size());
  if (count < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the text has ", count, " tokens; at least 2 are needed to score a next token"));
  }
  int64_t scored_end = 1;  // Token 0 has no left context and is never a target.
  for (int64_t begin = 0; scored_end < count; begin += options.stride) {
    const int64_t end = std::min(begin + options.context_length, count);
    if (end <= scored_end) continue;
    ASSIGN_OR_RETURN(std::vector<float> logits,
                     PromptLogits(model, tokens.subspan(begin, end - begin)));
    RETURN_IF_ERROR(score(logits, begin, std::max(scored_end, begin + 1), end));
    scored_end = end;
  }
  return absl::OkStatus();
}

double MeanStderr(int64_t successes, int64_t n) {
  if (n < 2) return 0.0;
  const double p = static_cast<double>(successes) / static_cast<double>(n);
  // Sample variance of 0/1 outcomes is n p (1 - p) / (n - 1).
  const double variance = static_cast<double>(n) * p * (1.0 - p) / static_cast<double>(n - 1);
  return std::sqrt(variance / static_cast<double>(n));
}

std::string Truncate(const std::string& text, size_t length) {
  return text.size() <= length ? text : text.substr(0, length) + "...";
}

}  // namespace

absl::Status WindowOptions::Validate() const {
  if (context_length < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "context length ", context_length, " is invalid: it must be at least 2 tokens"));
  }
  if (stride < 1 || stride > context_length) {
    return absl::InvalidArgumentError(absl::StrCat("stride ", stride,
                                                   " is invalid: it must be in [1, ",
                                                   context_length, "] (the context length)"));
  }
  return absl::OkStatus();
}

double PerplexityResult::perplexity() const {
  if (tokens_scored == 0) return std::numeric_limits<double>::quiet_NaN();
  return std::exp(negative_log_likelihood / static_cast<double>(tokens_scored));
}

absl::StatusOr<PerplexityResult> ComputePerplexity(const Model& model,
                                                   std::span<const int32_t> tokens,
                                                   const WindowOptions& options) {
  const int64_t vocab = model.config().vocab_size;
  PerplexityResult result;
  std::vector<float> log_probs(vocab);
  RETURN_IF_ERROR(ForEachWindow(
      model, tokens, options,
      [&](const std::vector<float>& logits, int64_t begin, int64_t first, int64_t end) {
        for (int64_t target = first; target < end; ++target) {
          const float* row = logits.data() + (target - 1 - begin) * vocab;
          LogSoftmax(std::span<const float>(row, vocab), log_probs);
          result.negative_log_likelihood -= log_probs[tokens[target]];
          ++result.tokens_scored;
        }
        return absl::OkStatus();
      }));
  return result;
}

absl::StatusOr<FidelityResult> CompareModels(const Model& reference, const Model& candidate,
                                             std::span<const int32_t> tokens,
                                             const WindowOptions& options) {
  const int64_t vocab = reference.config().vocab_size;
  if (candidate.config().vocab_size != vocab) {
    return absl::InvalidArgumentError(absl::StrCat("the models have different vocabularies (",
                                                   vocab, " and ",
                                                   candidate.config().vocab_size, " tokens)"));
  }
  FidelityResult result;
  std::vector<double> kl_values;
  int64_t agreements = 0;
  std::vector<float> reference_log_probs(vocab);
  std::vector<float> candidate_log_probs(vocab);
  RETURN_IF_ERROR(ForEachWindow(
      reference, tokens, options,
      [&](const std::vector<float>& reference_logits, int64_t begin, int64_t first,
          int64_t end) -> absl::Status {
        ASSIGN_OR_RETURN(std::vector<float> candidate_logits,
                         PromptLogits(candidate, tokens.subspan(begin, end - begin)));
        for (int64_t target = first; target < end; ++target) {
          const int64_t row = target - 1 - begin;
          LogSoftmax(std::span<const float>(reference_logits.data() + row * vocab, vocab),
                     reference_log_probs);
          LogSoftmax(std::span<const float>(candidate_logits.data() + row * vocab, vocab),
                     candidate_log_probs);
          double kl = 0.0;
          for (int64_t v = 0; v < vocab; ++v) {
            const double p = std::exp(static_cast<double>(reference_log_probs[v]));
            kl += p * (static_cast<double>(reference_log_probs[v]) - candidate_log_probs[v]);
          }
          kl_values.push_back(std::max(0.0, kl));
          const auto reference_top =
              std::max_element(reference_log_probs.begin(), reference_log_probs.end());
          const auto candidate_top =
              std::max_element(candidate_log_probs.begin(), candidate_log_probs.end());
          if (reference_top - reference_log_probs.begin() ==
              candidate_top - candidate_log_probs.begin()) {
            ++agreements;
          }
          result.reference.negative_log_likelihood -= reference_log_probs[tokens[target]];
          result.candidate.negative_log_likelihood -= candidate_log_probs[tokens[target]];
          ++result.reference.tokens_scored;
          ++result.candidate.tokens_scored;
        }
        return absl::OkStatus();
      }));
  result.positions = static_cast<int64_t>(kl_values.size());
  result.top1_agreements = agreements;
  result.kl_values = kl_values;
  double sum = 0.0;
  for (double kl : kl_values) sum += kl;
  result.mean_kl = sum / static_cast<double>(result.positions);
  std::sort(kl_values.begin(), kl_values.end());
  const auto rank = static_cast<size_t>(std::ceil(0.99 * static_cast<double>(kl_values.size())));
  result.p99_kl = kl_values[std::max<size_t>(rank, 1) - 1];
  result.top1_agreement = static_cast<double>(agreements) / static_cast<double>(result.positions);
  return result;
}

absl::StatusOr<TaskFieldMapping> ParseTaskFieldMapping(const std::string& text) {
  TaskFieldMapping mapping;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    std::vector<absl::string_view> key_value = absl::StrSplit(part, absl::MaxSplits('=', 1));
    if (key_value.size() != 2 || key_value[1].empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "field mapping entry '", part, "' is invalid: write ROLE=FIELD, e.g. context=query"));
    }
    const absl::string_view role = absl::StripAsciiWhitespace(key_value[0]);
    const std::string field(absl::StripAsciiWhitespace(key_value[1]));
    if (role == "context") {
      mapping.context = field;
    } else if (role == "choices") {
      mapping.choices = field;
    } else if (role == "gold") {
      mapping.gold = field;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "field mapping role '", role, "' is unknown: use context, choices or gold"));
    }
  }
  return mapping;
}

absl::StatusOr<std::vector<MultipleChoiceItem>> ReadMultipleChoiceJsonl(
    const std::filesystem::path& path, const TaskFieldMapping& fields) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot open task file ", path.string()));
  }
  std::vector<MultipleChoiceItem> items;
  std::string line;
  for (int64_t line_number = 1; std::getline(in, line); ++line_number) {
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    const std::string where = absl::StrCat(path.string(), " line ", line_number);
    const nlohmann::json item = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (item.is_discarded() || !item.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": not a JSON object"));
    }
    MultipleChoiceItem parsed;
    const auto context = item.find(fields.context);
    if (context == item.end() || !context->is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": field '", fields.context,
          "' (context) is missing or not a string; map another field with context=NAME"));
    }
    parsed.context = context->get<std::string>();
    const auto choices = item.find(fields.choices);
    if (choices == item.end() || !choices->is_array() || choices->size() < 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": field '", fields.choices,
          "' (choices) is missing or not an array of at least 2 strings"));
    }
    for (const nlohmann::json& choice : *choices) {
      if (!choice.is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": field '", fields.choices, "' contains a non-string choice"));
      }
      parsed.choices.push_back(choice.get<std::string>());
    }
    const auto gold = item.find(fields.gold);
    if (gold == item.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": field '", fields.gold, "' (gold answer) is missing"));
    }
    int64_t gold_index = -1;
    if (gold->is_number_integer()) {
      gold_index = gold->get<int64_t>();
    } else if (gold->is_string()) {
      const std::string gold_text = gold->get<std::string>();
      const auto match = std::find(parsed.choices.begin(), parsed.choices.end(), gold_text);
      if (match != parsed.choices.end()) {
        gold_index = match - parsed.choices.begin();
      } else if (!absl::SimpleAtoi(gold_text, &gold_index)) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": field '", fields.gold, "' is '", Truncate(gold_text, 40),
            "', which is neither an index nor one of the choices"));
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": field '", fields.gold, "' must be an integer index or a string"));
    }
    if (gold_index < 0 || gold_index >= static_cast<int64_t>(parsed.choices.size())) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": field '", fields.gold, "' is ",
                                                     gold_index, ", outside [0, ",
                                                     parsed.choices.size() - 1, "]"));
    }
    parsed.gold = gold_index;
    items.push_back(std::move(parsed));
  }
  if (items.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("task file ", path.string(), " has no items"));
  }
  return items;
}

absl::StatusOr<double> ContinuationLogLikelihood(const Model& model,
                                                 std::span<const int32_t> context,
                                                 std::span<const int32_t> continuation) {
  if (context.empty()) {
    return absl::InvalidArgumentError("the context must have at least one token");
  }
  if (continuation.empty()) {
    return absl::InvalidArgumentError("the continuation must have at least one token");
  }
  std::vector<int32_t> tokens(context.begin(), context.end());
  tokens.insert(tokens.end(), continuation.begin(), continuation.end());
  ASSIGN_OR_RETURN(std::vector<float> logits, PromptLogits(model, tokens));
  const int64_t vocab = model.config().vocab_size;
  std::vector<float> log_probs(vocab);
  double total = 0.0;
  for (size_t j = 0; j < continuation.size(); ++j) {
    const int64_t row = static_cast<int64_t>(context.size() + j) - 1;
    LogSoftmax(std::span<const float>(logits.data() + row * vocab, vocab), log_probs);
    total += log_probs[continuation[j]];
  }
  return total;
}

absl::StatusOr<MultipleChoiceResult> EvaluateMultipleChoice(
    const Model& model, const Tokenizer& tokenizer,
    const std::vector<MultipleChoiceItem>& items) {
  MultipleChoiceResult result;
  int64_t correct = 0;
  int64_t correct_norm = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const MultipleChoiceItem& item = items[i];
    const std::vector<int32_t> context =
        tokenizer.Encode(item.context, /*add_bos=*/true, /*parse_special=*/false);
    double best = -std::numeric_limits<double>::infinity();
    double best_norm = -std::numeric_limits<double>::infinity();
    int64_t chosen = -1;
    int64_t chosen_norm = -1;
    for (size_t c = 0; c < item.choices.size(); ++c) {
      const std::vector<int32_t> whole = tokenizer.Encode(item.context + item.choices[c],
                                                          /*add_bos=*/true,
                                                          /*parse_special=*/false);
      // The choice's tokens are those of the joined text past its common prefix with the
      // context. A merge across the boundary can shorten that prefix.
      size_t shared = 0;
      while (shared < context.size() && shared < whole.size() &&
             context[shared] == whole[shared]) {
        ++shared;
      }
      if (shared == 0 || shared == whole.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("item ", i + 1, " choice ", c,
                         ": the choice adds no tokens to the context, or the context has none"));
      }
      const std::span<const int32_t> all(whole);
      ASSIGN_OR_RETURN(const double log_likelihood,
                       ContinuationLogLikelihood(model, all.first(shared), all.subspan(shared)));
      const double normalized =
          log_likelihood / std::max<double>(1.0, static_cast<double>(item.choices[c].size()));
      if (log_likelihood > best) {
        best = log_likelihood;
        chosen = static_cast<int64_t>(c);
      }
      if (normalized > best_norm) {
        best_norm = normalized;
        chosen_norm = static_cast<int64_t>(c);
      }
    }
    correct += chosen == item.gold;
    correct_norm += chosen_norm == item.gold;
  }
  result.items = static_cast<int64_t>(items.size());
  if (result.items == 0) return absl::InvalidArgumentError("the task has no items");
  result.accuracy = static_cast<double>(correct) / static_cast<double>(result.items);
  result.accuracy_norm = static_cast<double>(correct_norm) / static_cast<double>(result.items);
  result.accuracy_stderr = MeanStderr(correct, result.items);
  result.accuracy_norm_stderr = MeanStderr(correct_norm, result.items);
  return result;
}

}  // namespace w8a8
