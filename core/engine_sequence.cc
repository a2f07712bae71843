#include "core/engine_sequence.h"

#include <algorithm>
#include <numeric>
#include <utility>

namespace w8a8 {
namespace {

double Seconds(absl::Time from, absl::Time to) {
  if (from == absl::InfinitePast() || to == absl::InfinitePast() || to < from) return 0.0;
  return absl::ToDoubleSeconds(to - from);
}

// Length of the longest suffix of `text` that is a proper prefix of one of `stops`.
size_t LongestStopPrefixSuffix(const std::string& text, const std::vector<std::string>& stops) {
  size_t longest = 0;
  for (const std::string& stop : stops) {
    const size_t max_length = std::min(text.size(), stop.empty() ? 0 : stop.size() - 1);
    for (size_t length = max_length; length > longest; --length) {
      if (text.compare(text.size() - length, length, stop, 0, length) == 0) {
        longest = length;
        break;
      }
    }
  }
  return longest;
}

GeneratedToken Unscored(int32_t token) {
  GeneratedToken unscored;
  unscored.token_id = token;
  return unscored;
}

}  // namespace

EngineSequence::EngineSequence(uint64_t id, GenerationRequest request,
                               GenerationCallback callback, std::shared_ptr<const Model> model,
                               std::string model_label, const Tokenizer& tokenizer,
                               std::span<const int32_t> end_ids, absl::Time submitted,
                               absl::Time deadline)
    : id_(id),
      request_(std::move(request)),
      callback_(std::move(callback)),
      model_(std::move(model)),
      model_label_(std::move(model_label)),
      tokenizer_(tokenizer),
      sampler_(request_.sampling),
      detokenizer_(tokenizer, /*skip_special=*/true),
      tokens_(request_.prompt_ids),
      num_prompt_tokens_(static_cast<int64_t>(request_.prompt_ids.size())),
      submitted_(submitted),
      deadline_(deadline) {
  if (!request_.sampling.ignore_eos) stop_ids_.insert(end_ids.begin(), end_ids.end());
  stop_ids_.insert(request_.sampling.stop_token_ids.begin(),
                   request_.sampling.stop_token_ids.end());
  tokens_.reserve(tokens_.size() + static_cast<size_t>(request_.sampling.max_tokens));
  pending_.request_id = request_.request_id;
  // The detokenizer decodes the prompt first, so that the first generated piece keeps its
  // leading space: SentencePiece drops that space only at the start of a text.
  for (const int32_t token : request_.prompt_ids) detokenizer_.Push(token);
  detokenizer_.Flush();
  if (request_.echo) {
    for (const int32_t token : request_.prompt_ids) {
      echo_tokens_.push_back(Unscored(token));
    }
  }
}

bool EngineSequence::NeedsAllLogits() const {
  return request_.echo && request_.top_logprobs >= 0 && !echo_sent_ &&
         num_scored_prompt_tokens_ < num_prompt_tokens_;
}

void EngineSequence::ScorePromptTokens(std::span<const float> rows, int64_t first_position) {
  const size_t vocab = static_cast<size_t>(model_->config().vocab_size);
  const int64_t num_rows = static_cast<int64_t>(rows.size() / vocab);
  for (int64_t row = 0; row < num_rows; ++row) {
    const int64_t position = first_position + row + 1;
    if (position >= num_prompt_tokens_) break;
    if (position < num_scored_prompt_tokens_) continue;
    const std::span<const float> logits = rows.subspan(static_cast<size_t>(row) * vocab, vocab);
    echo_tokens_[static_cast<size_t>(position)] =
        ScoreToken(logits, tokens_[static_cast<size_t>(position)]);
    num_scored_prompt_tokens_ = position + 1;
  }
}

GeneratedToken EngineSequence::ScoreToken(std::span<const float> logits, int32_t token) const {
  GeneratedToken scored = Unscored(token);
  if (request_.top_logprobs < 0) return scored;

  std::vector<float> logprobs(logits.size());
  LogSoftmax(logits, logprobs);
  scored.logprob = logprobs[static_cast<size_t>(token)];

  const size_t count = std::min(static_cast<size_t>(request_.top_logprobs), logprobs.size());
  if (count == 0) return scored;
  std::vector<int32_t> order(logprobs.size());
  std::iota(order.begin(), order.end(), 0);
  // Ties go to the lower id, so the list does not depend on the sort's internals.
  std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(count),
                    order.end(), [&](int32_t a, int32_t b) {
                      const float pa = logprobs[static_cast<size_t>(a)];
                      const float pb = logprobs[static_cast<size_t>(b)];
                      return pa != pb ? pa > pb : a < b;
                    });
  for (size_t i = 0; i < count; ++i) {
    scored.top_logprobs.push_back(
        {.token_id = order[i], .logprob = logprobs[static_cast<size_t>(order[i])]});
  }
  return scored;
}

void EngineSequence::SampleNext(std::span<float> logits, absl::Time now) {
  if (finished_) return;
  // Scores come from the raw logits, before Sample applies penalties in place.
  std::vector<float> raw;
  if (request_.top_logprobs >= 0) raw.assign(logits.begin(), logits.end());
  const int32_t token = sampler_.Sample(logits, tokens_);
  GeneratedToken generated =
      request_.top_logprobs >= 0 ? ScoreToken(raw, token) : Unscored(token);

  tokens_.push_back(token);
  if (first_token_ == absl::InfinitePast()) first_token_ = now;
  pending_.tokens.push_back(std::move(generated));

  if (stop_ids_.contains(token)) {
    Finish(FinishReason::kStop, absl::OkStatus(), now);
    return;
  }
  AppendText(detokenizer_.Push(token), now);
  if (finished_) return;
  if (num_generated() >= request_.sampling.max_tokens) {
    Finish(FinishReason::kLength, absl::OkStatus(), now);
  }
}

void EngineSequence::AppendText(const std::string& piece, absl::Time now) {
  held_text_ += piece;
  const std::vector<std::string>& stops = request_.sampling.stop;

  // Every stop string that can match starts inside the held text, because text that may begin
  // a stop string is never sent. The earliest match ends the output.
  size_t earliest = std::string::npos;
  for (const std::string& stop : stops) {
    if (stop.empty()) continue;
    earliest = std::min(earliest, held_text_.find(stop));
  }
  if (earliest != std::string::npos) {
    pending_.text += held_text_.substr(0, earliest);
    held_text_.clear();
    stopped_by_string_ = true;
    Finish(FinishReason::kStop, absl::OkStatus(), now);
    return;
  }

  const size_t keep = LongestStopPrefixSuffix(held_text_, stops);
  pending_.text += held_text_.substr(0, held_text_.size() - keep);
  held_text_.erase(0, held_text_.size() - keep);
}

void EngineSequence::FlushText() {
  pending_.text += held_text_;
  held_text_.clear();
  pending_.text += detokenizer_.Flush();
}

void EngineSequence::MarkAdmitted(absl::Time now) {
  if (admitted_ == absl::InfinitePast()) admitted_ = now;
}

void EngineSequence::Finish(FinishReason reason, absl::Status status, absl::Time now) {
  if (finished_) return;
  finished_ = true;
  finish_reason_ = reason;
  status_ = std::move(status);
  finished_at_ = now;
  // A stop string already cut the text. Every other end sends what was held back.
  if (!stopped_by_string_) FlushText();
}

bool EngineSequence::HasUpdate() const {
  return finished_ || !pending_.tokens.empty() || !pending_.text.empty();
}

GenerationUpdate EngineSequence::TakeUpdate() {
  GenerationUpdate update = std::move(pending_);
  pending_ = GenerationUpdate{};
  pending_.request_id = request_.request_id;

  if (request_.echo && !echo_sent_) {
    echo_sent_ = true;
    update.prompt_tokens = std::move(echo_tokens_);
    update.prompt_text = tokenizer_.Decode(request_.prompt_ids, /*skip_special=*/true);
  }
  if (finished_) {
    update.finished = true;
    update.finish_reason = finish_reason_;
    update.status = status_;
    update.usage = {.prompt_tokens = num_prompt_tokens_, .generated_tokens = num_generated()};
    update.timings = Timings();
    update.model_label = model_label_;
  }
  return update;
}

GenerationTimings EngineSequence::Timings() const {
  GenerationTimings timings;
  const absl::Time queue_end = admitted_ != absl::InfinitePast() ? admitted_ : finished_at_;
  timings.queue_seconds = Seconds(submitted_, queue_end);
  timings.time_to_first_token_seconds = Seconds(submitted_, first_token_);
  const absl::Time prefill_end = first_token_ != absl::InfinitePast() ? first_token_ : finished_at_;
  timings.prefill_seconds = Seconds(admitted_, prefill_end);
  timings.decode_seconds = Seconds(first_token_, finished_at_);
  timings.end_to_end_seconds = Seconds(submitted_, finished_at_);
  return timings;
}

RequestStats EngineSequence::Stats() const {
  const GenerationTimings timings = Timings();
  RequestStats stats;
  stats.request_id = request_.request_id;
  stats.status = status_.code();
  stats.finish_reason = finish_reason_;
  stats.prompt_tokens = num_prompt_tokens_;
  stats.generated_tokens = num_generated();
  stats.queue_seconds = timings.queue_seconds;
  stats.time_to_first_token_seconds = timings.time_to_first_token_seconds;
  if (stats.generated_tokens >= 2) {
    stats.time_per_output_token_seconds =
        timings.decode_seconds / static_cast<double>(stats.generated_tokens - 1);
  }
  stats.end_to_end_seconds = timings.end_to_end_seconds;
  stats.prefill_seconds = timings.prefill_seconds;
  stats.decode_seconds = timings.decode_seconds;
  stats.model_label = model_label_;
  return stats;
}

}  // namespace w8a8
