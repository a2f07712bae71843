#include "core/tokenizer_files.h"

#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace w8a8 {
namespace {

TEST(TokenizerFilesTest, GgufTokenizerWrittenAsModelEncodesAlike) {
  auto checkpoint = Checkpoint::Open(testing::Stories260KGguf());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  testing::TempDir dir;
  ASSERT_TRUE(WriteTokenizerFiles(**checkpoint, dir.path()).ok());
  ASSERT_TRUE(std::filesystem::exists(dir / "tokenizer.model"));

  auto from_gguf = Tokenizer::FromSource((*checkpoint)->tokenizer_source());
  ASSERT_TRUE(from_gguf.ok()) << from_gguf.status();
  auto from_file = Tokenizer::FromSentencePieceModel(dir / "tokenizer.model");
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  EXPECT_EQ((*from_file)->vocab_size(), (*from_gguf)->vocab_size());
  EXPECT_EQ((*from_file)->bos_id(), (*from_gguf)->bos_id());
  EXPECT_EQ((*from_file)->eos_ids(), (*from_gguf)->eos_ids());
  const std::vector<std::string> texts = {
      "Once upon a time", "  two  spaces\tand a tab\n", "Emoji 😀 and CJK 日本語", "", "x"};
  for (const std::string& text : texts) {
    const std::vector<int32_t> expected = (*from_gguf)->Encode(text, true, false);
    EXPECT_EQ((*from_file)->Encode(text, true, false), expected) << text;
    EXPECT_EQ((*from_file)->Decode(expected, true), (*from_gguf)->Decode(expected, true)) << text;
  }
}

TEST(TokenizerFilesTest, ByteLevelGgufTokenizerIsNotConverted) {
  GgufTokenizerData data;
  data.model = "gpt2";
  data.tokens = {"a", "b"};
  testing::TempDir dir;
  const absl::Status status = WriteSentencePieceModel(data, dir / "tokenizer.model");
  EXPECT_TRUE(absl::IsFailedPrecondition(status)) << status;
  EXPECT_THAT(status.message(), ::testing::HasSubstr("\"gpt2\""));
}

TEST(TokenizerFilesTest, MismatchedScoresAreRejected) {
  GgufTokenizerData data;
  data.model = "llama";
  data.tokens = {"<unk>", "<s>", "</s>"};
  data.scores = {0.0f};
  testing::TempDir dir;
  const absl::Status status = WriteSentencePieceModel(data, dir / "tokenizer.model");
  EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
  EXPECT_THAT(status.message(), ::testing::HasSubstr("3 tokens but 1 scores"));
}

}  // namespace
}  // namespace w8a8
