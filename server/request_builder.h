// Validation of GenerateRequest messages and their conversion to engine requests.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/engine.h"
#include "core/tokenizer.h"
#include "w8a8serve/v1/w8a8serve.pb.h"

namespace w8a8::server {

// Limits on client-controlled input. A request beyond one is rejected with INVALID_ARGUMENT
// naming the field and the limit.
struct RequestLimits {
  int64_t max_prompt_bytes = int64_t{1} << 20;  // Text, or all chat contents together.
  int64_t max_prompt_tokens = 0;                // 0 allows up to the context length.
  int64_t max_tokens = 4096;                    // Upper bound of sampling.max_tokens.
  int64_t default_max_tokens = 256;             // When sampling.max_tokens is unset.
  int32_t max_stop_strings = 16;
  int32_t max_stop_string_bytes = 256;
  int32_t max_stop_token_ids = 64;
  int32_t max_top_logprobs = 20;
  int32_t max_chat_messages = 1024;
  int32_t max_request_id_bytes = 128;
};

// Returns a fresh request id ("req-" and 32 hex digits from a random 128-bit value).
std::string NewRequestId();

// Checks a client-supplied request id: at most max_request_id_bytes of printable ASCII.
absl::Status ValidateRequestId(const std::string& request_id, const RequestLimits& limits);

// Validates `request` and converts it: encodes the prompt, applies defaults to unset sampling
// fields and checks every field against `limits` and the model (`context_length` positions,
// the tokenizer's vocabulary). `request_id` must already be valid. Errors are
// INVALID_ARGUMENT with the proto field path in the message ("sampling.top_p").
absl::StatusOr<GenerationRequest> BuildGenerationRequest(
    const w8a8serve::v1::GenerateRequest& request, const std::string& request_id,
    const Tokenizer& tokenizer, int64_t context_length, const RequestLimits& limits,
    absl::Time deadline);

}  // namespace w8a8::server
