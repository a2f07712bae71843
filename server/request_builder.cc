#include "server/request_builder.h"

#include <cmath>
#include <random>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/status_macros.h"

namespace w8a8::server {
namespace {

namespace v1 = ::w8a8serve::v1;

absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

// Encodes the prompt of `request`, checking its size limits.
absl::StatusOr<std::vector<int32_t>> EncodePrompt(const v1::GenerateRequest& request,
                                                  const Tokenizer& tokenizer,
                                                  const RequestLimits& limits) {
  switch (request.prompt_case()) {
    case v1::GenerateRequest::kText: {
      const std::string& text = request.text();
      if (text.empty()) return Invalid("text is empty: send a non-empty prompt");
      if (static_cast<int64_t>(text.size()) > limits.max_prompt_bytes) {
        return Invalid(absl::StrCat("text has ", text.size(), " bytes, more than the limit of ",
                                    limits.max_prompt_bytes, " (--max-prompt-bytes)"));
      }
      // Like the offline generator: BOS when the tokenizer's configuration adds one, and
      // special-token strings become their ids.
      const bool add_bos = request.has_add_bos() ? request.add_bos() : tokenizer.adds_bos();
      return tokenizer.Encode(text, add_bos, /*parse_special=*/true);
    }
    case v1::GenerateRequest::kTokenIds: {
      const auto& ids = request.token_ids().ids();
      if (ids.empty()) return Invalid("token_ids.ids is empty: send at least one token id");
      std::vector<int32_t> prompt(ids.begin(), ids.end());
      for (size_t i = 0; i < prompt.size(); ++i) {
        if (prompt[i] < 0 || prompt[i] >= tokenizer.vocab_size()) {
          return Invalid(absl::StrCat("token_ids.ids[", i, "] = ", prompt[i],
                                      " is outside the vocabulary [0, ", tokenizer.vocab_size(),
                                      ")"));
        }
      }
      return prompt;
    }
    case v1::GenerateRequest::kChat: {
      const auto& messages = request.chat().messages();
      if (messages.empty()) return Invalid("chat.messages is empty: send at least one message");
      if (messages.size() > limits.max_chat_messages) {
        return Invalid(absl::StrCat("chat.messages has ", messages.size(),
                                    " entries, more than the limit of ",
                                    limits.max_chat_messages));
      }
      std::vector<ChatMessage> chat;
      int64_t total_bytes = 0;
      for (int i = 0; i < messages.size(); ++i) {
        const v1::ChatMessage& message = messages[i];
        if (message.role() != "system" && message.role() != "user" &&
            message.role() != "assistant" && message.role() != "ipython") {
          return Invalid(absl::StrCat("chat.messages[", i, "].role '", message.role(),
                                      "' is invalid: use system, user, assistant or ipython"));
        }
        total_bytes += static_cast<int64_t>(message.content().size());
        chat.push_back({message.role(), message.content()});
      }
      if (total_bytes > limits.max_prompt_bytes) {
        return Invalid(absl::StrCat("chat.messages contents have ", total_bytes,
                                    " bytes, more than the limit of ", limits.max_prompt_bytes,
                                    " (--max-prompt-bytes)"));
      }
      absl::StatusOr<std::string> text = FormatLlama3Chat(chat);
      if (!text.ok()) return Invalid(absl::StrCat("chat.messages: ", text.status().message()));
      // The formatted prompt starts with the BOS text and contains header tokens, so special
      // strings are parsed and no second BOS is added.
      return tokenizer.Encode(*text, /*add_bos=*/false, /*parse_special=*/true);
    }
    case v1::GenerateRequest::PROMPT_NOT_SET:
      break;
  }
  return Invalid("prompt is missing: set text, token_ids or chat");
}

absl::Status CheckRange(const char* field, double value, double low, double high,
                        bool low_open) {
  const bool below = low_open ? !(value > low) : !(value >= low);
  if (std::isnan(value) || below || value > high) {
    return Invalid(absl::StrFormat("%s = %g is invalid: use a value in %c%g, %g]", field, value,
                                   low_open ? '(' : '[', low, high));
  }
  return absl::OkStatus();
}

absl::StatusOr<SamplingParams> ConvertSampling(const v1::SamplingParameters& sampling,
                                               const RequestLimits& limits) {
  SamplingParams params;
  if (sampling.has_temperature()) {
    params.temperature = sampling.temperature();
    if (std::isnan(params.temperature) || params.temperature < 0 ||
        std::isinf(params.temperature)) {
      return Invalid(absl::StrFormat(
          "sampling.temperature = %g is invalid: use 0 for greedy decoding or a positive value",
          params.temperature));
    }
  }
  if (sampling.has_top_k()) {
    params.top_k = sampling.top_k();
    if (params.top_k < 0) {
      return Invalid(absl::StrCat("sampling.top_k = ", params.top_k,
                                  " is invalid: use 0 (keep every token) or a positive count"));
    }
  }
  if (sampling.has_top_p()) {
    params.top_p = sampling.top_p();
    RETURN_IF_ERROR(CheckRange("sampling.top_p", params.top_p, 0, 1, /*low_open=*/true));
  }
  if (sampling.has_min_p()) {
    params.min_p = sampling.min_p();
    RETURN_IF_ERROR(CheckRange("sampling.min_p", params.min_p, 0, 1, /*low_open=*/false));
  }
  if (sampling.has_repetition_penalty()) {
    params.repetition_penalty = sampling.repetition_penalty();
    if (std::isnan(params.repetition_penalty) || params.repetition_penalty <= 0 ||
        std::isinf(params.repetition_penalty)) {
      return Invalid(absl::StrFormat(
          "sampling.repetition_penalty = %g is invalid: use a positive value (1 disables it)",
          params.repetition_penalty));
    }
  }
  if (sampling.has_frequency_penalty()) {
    params.frequency_penalty = sampling.frequency_penalty();
    RETURN_IF_ERROR(CheckRange("sampling.frequency_penalty", params.frequency_penalty, -2, 2,
                               /*low_open=*/false));
  }
  if (sampling.has_presence_penalty()) {
    params.presence_penalty = sampling.presence_penalty();
    RETURN_IF_ERROR(CheckRange("sampling.presence_penalty", params.presence_penalty, -2, 2,
                               /*low_open=*/false));
  }
  if (sampling.has_seed()) {
    params.seed = sampling.seed();
    params.has_seed = true;
  }
  if (sampling.stop_size() > limits.max_stop_strings) {
    return Invalid(absl::StrCat("sampling.stop has ", sampling.stop_size(),
                                " strings, more than the limit of ", limits.max_stop_strings,
                                " (--max-stop-strings)"));
  }
  for (int i = 0; i < sampling.stop_size(); ++i) {
    const std::string& stop = sampling.stop(i);
    if (stop.empty()) return Invalid(absl::StrCat("sampling.stop[", i, "] is empty"));
    if (static_cast<int64_t>(stop.size()) > limits.max_stop_string_bytes) {
      return Invalid(absl::StrCat("sampling.stop[", i, "] has ", stop.size(),
                                  " bytes, more than the limit of ", limits.max_stop_string_bytes,
                                  " (--max-stop-string-bytes)"));
    }
    params.stop.push_back(stop);
  }
  if (sampling.stop_token_ids_size() > limits.max_stop_token_ids) {
    return Invalid(absl::StrCat("sampling.stop_token_ids has ", sampling.stop_token_ids_size(),
                                " ids, more than the limit of ", limits.max_stop_token_ids));
  }
  params.stop_token_ids.assign(sampling.stop_token_ids().begin(),
                               sampling.stop_token_ids().end());
  if (sampling.has_ignore_eos()) params.ignore_eos = sampling.ignore_eos();
  return params;
}

}  // namespace

std::string NewRequestId() {
  thread_local std::mt19937_64 generator{std::random_device{}()};
  return absl::StrFormat("req-%016x%016x", generator(), generator());
}

absl::Status ValidateRequestId(const std::string& request_id, const RequestLimits& limits) {
  if (static_cast<int64_t>(request_id.size()) > limits.max_request_id_bytes) {
    return Invalid(absl::StrCat("request_id has ", request_id.size(),
                                " bytes, more than the limit of ", limits.max_request_id_bytes));
  }
  for (size_t i = 0; i < request_id.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(request_id[i]);
    if (c < 0x21 || c > 0x7e) {
      return Invalid(absl::StrCat("request_id has byte 0x", absl::Hex(c), " at offset ", i,
                                  ": use printable ASCII without spaces"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<GenerationRequest> BuildGenerationRequest(const v1::GenerateRequest& request,
                                                         const std::string& request_id,
                                                         const Tokenizer& tokenizer,
                                                         int64_t context_length,
                                                         const RequestLimits& limits,
                                                         absl::Time deadline) {
  GenerationRequest out;
  out.request_id = request_id;
  out.deadline = deadline;
  out.echo = request.echo();

  ASSIGN_OR_RETURN(out.sampling, ConvertSampling(request.sampling(), limits));
  ASSIGN_OR_RETURN(out.prompt_ids, EncodePrompt(request, tokenizer, limits));

  const int64_t prompt_tokens = static_cast<int64_t>(out.prompt_ids.size());
  if (limits.max_prompt_tokens > 0 && prompt_tokens > limits.max_prompt_tokens) {
    return Invalid(absl::StrCat("prompt has ", prompt_tokens, " tokens, more than the limit of ",
                                limits.max_prompt_tokens, " (--max-prompt-tokens)"));
  }
  if (prompt_tokens >= context_length) {
    return Invalid(absl::StrCat("prompt has ", prompt_tokens,
                                " tokens, which leaves no room to generate within the context "
                                "length of ",
                                context_length, "; shorten the prompt"));
  }

  const v1::SamplingParameters& sampling = request.sampling();
  if (sampling.has_max_tokens()) {
    const int64_t max_tokens = sampling.max_tokens();
    if (max_tokens < 1 || max_tokens > limits.max_tokens) {
      return Invalid(absl::StrCat("sampling.max_tokens = ", max_tokens,
                                  " is invalid: use a value in [1, ", limits.max_tokens,
                                  "] (--max-tokens-limit)"));
    }
    if (prompt_tokens + max_tokens > context_length) {
      return Invalid(absl::StrCat("prompt of ", prompt_tokens, " tokens plus sampling.max_tokens = ",
                                  max_tokens, " exceeds the context length of ", context_length,
                                  "; lower max_tokens to at most ",
                                  context_length - prompt_tokens));
    }
    out.sampling.max_tokens = max_tokens;
  } else {
    out.sampling.max_tokens = std::min({limits.default_max_tokens, limits.max_tokens,
                                        context_length - prompt_tokens});
  }

  if (request.top_logprobs() < 0 || request.top_logprobs() > limits.max_top_logprobs) {
    return Invalid(absl::StrCat("top_logprobs = ", request.top_logprobs(),
                                " is invalid: use a value in [0, ", limits.max_top_logprobs,
                                "] (--max-top-logprobs)"));
  }
  if (request.logprobs() || request.top_logprobs() > 0) {
    out.top_logprobs = request.top_logprobs();
  }

  if (absl::Status status = out.sampling.Validate(); !status.ok()) {
    return Invalid(absl::StrCat("sampling: ", status.message()));
  }
  return out;
}

}  // namespace w8a8::server
