#include "core/generator.h"

#include <algorithm>
#include <chrono>
#include <numeric>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace w8a8 {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Cuts generated text at the first stop string and decides which text is final. Text that
// could be the beginning of a stop string is held back until the next piece settles it.
class StopStringFilter {
 public:
  StopStringFilter(const std::vector<std::string>& stop, const TextCallback& on_text)
      : stop_(stop), on_text_(on_text) {
    for (const std::string& s : stop_) max_stop_size_ = std::max(max_stop_size_, s.size());
  }

  // Appends `piece`; returns true when the text now contains a stop string, after cutting the
  // text before it. With `final`, nothing is held back.
  bool Append(std::string_view piece, bool final) {
    text_.append(piece);
    // A new match must end inside `piece`, so it starts at most max_stop_size_ - 1 bytes
    // before it.
    const size_t window = piece.size() + (max_stop_size_ > 0 ? max_stop_size_ - 1 : 0);
    const size_t search_from = text_.size() > window ? text_.size() - window : 0;
    size_t match = std::string::npos;
    for (const std::string& s : stop_) match = std::min(match, text_.find(s, search_from));
    if (match != std::string::npos) {
      // Held-back text covers every stop-string prefix, so the match starts at or after the
      // text already streamed.
      text_.resize(std::max(match, streamed_));
      Emit(text_.size());
      return true;
    }
    Emit(text_.size() - (final ? 0 : HeldBackSize()));
    return false;
  }

  std::string& text() { return text_; }

 private:
  // The longest unstreamed suffix of the text that is a proper prefix of a stop string.
  size_t HeldBackSize() const {
    const std::string_view unstreamed = std::string_view(text_).substr(streamed_);
    size_t held = 0;
    for (const std::string& s : stop_) {
      for (size_t k = std::min(s.size() - 1, unstreamed.size()); k > held; --k) {
        if (unstreamed.ends_with(std::string_view(s).substr(0, k))) {
          held = k;
          break;
        }
      }
    }
    return held;
  }

  void Emit(size_t end) {
    if (end <= streamed_) return;
    if (on_text_) on_text_(std::string_view(text_).substr(streamed_, end - streamed_));
    streamed_ = end;
  }

  const std::vector<std::string>& stop_;
  const TextCallback& on_text_;
  size_t max_stop_size_ = 0;
  std::string text_;
  size_t streamed_ = 0;
};

TokenLogprob MakeLogprob(std::span<const float> logits, int32_t token, int64_t top_count,
                         const Tokenizer& tokenizer) {
  std::vector<float> logprobs(logits.size());
  LogSoftmax(logits, logprobs);
  TokenLogprob result{token, tokenizer.TokenBytes(token), logprobs[static_cast<size_t>(token)], {}};
  const size_t count = std::min(static_cast<size_t>(top_count), logprobs.size());
  if (count > 0) {
    std::vector<int32_t> ids(logprobs.size());
    std::iota(ids.begin(), ids.end(), 0);
    std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(count), ids.end(),
                      [&logprobs](int32_t a, int32_t b) {
                        const float la = logprobs[static_cast<size_t>(a)];
                        const float lb = logprobs[static_cast<size_t>(b)];
                        return la > lb || (la == lb && a < b);
                      });
    for (size_t i = 0; i < count; ++i) {
      result.top.push_back({ids[i], logprobs[static_cast<size_t>(ids[i])]});
    }
  }
  return result;
}

}  // namespace

Generator::Generator(const Model& model, const Tokenizer& tokenizer)
    : model_(model), tokenizer_(tokenizer) {}

std::vector<int32_t> Generator::EndTokenIds() const {
  std::vector<int32_t> ids = model_.config().eos_token_ids;
  for (const int32_t id : tokenizer_.eos_ids()) {
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  }
  return ids;
}

absl::StatusOr<GenerationResult> Generator::Generate(std::string_view prompt,
                                                     const GenerationOptions& options,
                                                     const TextCallback& on_text) const {
  const std::vector<int32_t> tokens =
      tokenizer_.Encode(prompt, /*add_bos=*/true, /*parse_special=*/true);
  return Generate(tokens, options, on_text);
}

absl::StatusOr<GenerationResult> Generator::Generate(std::span<const int32_t> prompt_tokens,
                                                     const GenerationOptions& options,
                                                     const TextCallback& on_text) const {
  const SamplingParams& sampling = options.sampling;
  RETURN_IF_ERROR(sampling.Validate());
  if (options.top_logprobs < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "top_logprobs is ", options.top_logprobs, "; it must be >= 0."));
  }
  if (options.block_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("block_size is ", options.block_size, "; it must be >= 1."));
  }
  if (prompt_tokens.empty()) {
    return absl::InvalidArgumentError("The prompt has no tokens; give at least one.");
  }
  const ModelConfig& config = model_.config();
  const int64_t prompt_size = static_cast<int64_t>(prompt_tokens.size());
  if (prompt_size >= config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "The prompt has ", prompt_size, " tokens, which leaves no room in the model's context of ",
        config.max_position_embeddings, " (max_position_embeddings); shorten the prompt."));
  }

  const int64_t max_positions =
      std::min(prompt_size + sampling.max_tokens, config.max_position_embeddings);
  const int64_t num_blocks = (max_positions + options.block_size - 1) / options.block_size;
  KvCache cache(config, num_blocks, options.block_size);
  std::vector<int32_t> block_table(static_cast<size_t>(num_blocks));
  std::iota(block_table.begin(), block_table.end(), 0);

  absl::flat_hash_set<int32_t> stop_ids(sampling.stop_token_ids.begin(),
                                        sampling.stop_token_ids.end());
  if (!sampling.ignore_eos) {
    for (const int32_t id : EndTokenIds()) stop_ids.insert(id);
  }

  // The detokenizer decodes the prompt first, so that the continuation's first piece keeps its
  // leading space, because SentencePiece drops that space only at the start of a text.
  StreamingDetokenizer detokenizer(tokenizer_);
  for (const int32_t id : prompt_tokens) detokenizer.Push(id);
  detokenizer.Flush();

  GenerationResult result;
  result.prompt_tokens.assign(prompt_tokens.begin(), prompt_tokens.end());
  std::vector<int32_t> history = result.prompt_tokens;
  Sampler sampler(sampling);
  StopStringFilter filter(sampling.stop, on_text);
  std::vector<float> logits;

  const Clock::time_point prefill_start = Clock::now();
  Clock::time_point decode_start = prefill_start;
  SequenceStep step;
  step.tokens = prompt_tokens;
  step.start_position = 0;
  step.block_table = block_table;
  step.logits = SequenceStep::Logits::kLast;
  bool stopped_by_string = false;
  while (true) {
    logits.clear();
    RETURN_IF_ERROR(model_.Forward(std::span<const SequenceStep>(&step, 1), cache, logits));
    if (result.tokens.empty()) {
      result.prefill_seconds = SecondsSince(prefill_start);
      decode_start = Clock::now();
    }
    std::vector<float> raw_logits;
    if (options.logprobs) raw_logits = logits;
    const int32_t token = sampler.Sample(logits, history);
    result.tokens.push_back(token);
    if (options.logprobs) {
      result.logprobs.push_back(MakeLogprob(raw_logits, token, options.top_logprobs, tokenizer_));
    }
    if (stop_ids.contains(token)) {
      result.finish_reason = "stop";
      break;
    }
    history.push_back(token);
    if (filter.Append(detokenizer.Push(token), /*final=*/false)) {
      result.finish_reason = "stop";
      stopped_by_string = true;
      break;
    }
    if (static_cast<int64_t>(result.tokens.size()) >= sampling.max_tokens ||
        static_cast<int64_t>(history.size()) >= max_positions) {
      result.finish_reason = "length";
      break;
    }
    step.tokens = std::span<const int32_t>(&history.back(), 1);
    step.start_position = static_cast<int64_t>(history.size()) - 1;
  }
  if (!stopped_by_string && filter.Append(detokenizer.Flush(), /*final=*/true)) {
    result.finish_reason = "stop";
  }
  result.decode_seconds = SecondsSince(decode_start);
  result.text = std::move(filter.text());
  return result;
}

absl::StatusOr<std::vector<float>> PromptLogits(const Model& model,
                                                std::span<const int32_t> tokens) {
  if (tokens.empty()) {
    return absl::InvalidArgumentError("The prompt has no tokens; give at least one.");
  }
  constexpr int64_t kBlockSize = 16;
  const int64_t num_blocks =
      (static_cast<int64_t>(tokens.size()) + kBlockSize - 1) / kBlockSize;
  KvCache cache(model.config(), num_blocks, kBlockSize);
  std::vector<int32_t> block_table(static_cast<size_t>(num_blocks));
  std::iota(block_table.begin(), block_table.end(), 0);
  SequenceStep step;
  step.tokens = tokens;
  step.block_table = block_table;
  step.logits = SequenceStep::Logits::kAll;
  std::vector<float> logits;
  RETURN_IF_ERROR(model.Forward(std::span<const SequenceStep>(&step, 1), cache, logits));
  return logits;
}

}  // namespace w8a8
