// FormatLlama3Chat: the Llama 3 chat prompt text and its token ids.
#include <string>
#include <vector>

#include "core/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/reference/reference_paths.h"

namespace w8a8 {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(FormatLlama3Chat, BuildsPromptWithGenerationHeader) {
  absl::StatusOr<std::string> prompt =
      FormatLlama3Chat({{"system", "Be brief."}, {"user", "Hi!"}});
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  EXPECT_EQ(*prompt,
            "<|begin_of_text|>"
            "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(FormatLlama3Chat, OmitsGenerationHeaderOnRequest) {
  absl::StatusOr<std::string> prompt =
      FormatLlama3Chat({{"user", "Hi"}, {"assistant", "Hello."}}, /*add_generation_prompt=*/false);
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  EXPECT_EQ(*prompt,
            "<|begin_of_text|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>");
}

TEST(FormatLlama3Chat, TrimsContentWhitespace) {
  absl::StatusOr<std::string> prompt = FormatLlama3Chat({{"user", "  \n Hi \n\n"}}, false);
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  EXPECT_EQ(*prompt, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>");
}

TEST(FormatLlama3Chat, AcceptsIpythonRole) {
  absl::StatusOr<std::string> prompt = FormatLlama3Chat({{"ipython", "{\"x\": 1}"}}, false);
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  EXPECT_THAT(*prompt, HasSubstr("<|start_header_id|>ipython<|end_header_id|>"));
}

TEST(FormatLlama3Chat, RejectsUnknownRole) {
  absl::StatusOr<std::string> prompt = FormatLlama3Chat({{"user", "a"}, {"robot", "b"}});
  ASSERT_FALSE(prompt.ok());
  EXPECT_EQ(prompt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(prompt.status().message(), HasSubstr("\"robot\""));
  EXPECT_THAT(prompt.status().message(), HasSubstr("message 1"));
}

TEST(FormatLlama3Chat, RejectsEmptyMessageList) {
  absl::StatusOr<std::string> prompt = FormatLlama3Chat({});
  ASSERT_FALSE(prompt.ok());
  EXPECT_EQ(prompt.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(FormatLlama3Chat, TokenizesToHeaderAndTurnTokens) {
  auto tokenizer = Tokenizer::FromTokenizerJson(testing::Llama3TokenizerJson());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  absl::StatusOr<std::string> prompt = FormatLlama3Chat({{"user", "Hello"}});
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  // The prompt carries its own BOS, so none is added by the tokenizer.
  const std::vector<int32_t> ids = (*tokenizer)->Encode(*prompt, false, true);
  const int32_t user = *(*tokenizer)->TokenId("user");
  const int32_t assistant = *(*tokenizer)->TokenId("assistant");
  const int32_t blank_line = *(*tokenizer)->TokenId("\xC4\x8A\xC4\x8A");  // "\n\n"
  EXPECT_THAT(ids, ElementsAre(128000, 128006, user, 128007, blank_line, 9906, 128009, 128006,
                               assistant, 128007, blank_line));
}

}  // namespace
}  // namespace w8a8
