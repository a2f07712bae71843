#include <algorithm>
#include <array>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "core/tokenizer.h"

namespace w8a8 {

absl::StatusOr<std::string> FormatLlama3Chat(const std::vector<ChatMessage>& messages,
                                             bool add_generation_prompt) {
  constexpr std::array<std::string_view, 4> kRoles = {"system", "user", "assistant", "ipython"};
  if (messages.empty()) {
    return absl::InvalidArgumentError("chat request has no messages; send at least one");
  }
  std::string prompt = "<|begin_of_text|>";
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& message = messages[i];
    if (std::find(kRoles.begin(), kRoles.end(), message.role) == kRoles.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "chat message ", i, " has unknown role \"", message.role,
          "\"; use system, user, assistant or ipython"));
    }
    absl::StrAppend(&prompt, "<|start_header_id|>", message.role, "<|end_header_id|>\n\n",
                    absl::StripAsciiWhitespace(message.content), "<|eot_id|>");
  }
  if (add_generation_prompt) {
    absl::StrAppend(&prompt, "<|start_header_id|>assistant<|end_header_id|>\n\n");
  }
  return prompt;
}

}  // namespace w8a8
