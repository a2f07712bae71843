// `w8a8 tokenize`: runs the built tool on files the test writes and checks its output and exit
// code.
#include <sys/wait.h>

#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/reference/reference_paths.h"
#include "tests/test_util.h"

namespace w8a8 {
namespace {

using ::testing::HasSubstr;

struct ToolResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Runs `w8a8 tokenize FLAGS` with `input` on standard input.
ToolResult RunTokenize(const testing::TempDir& dir, const std::string& flags,
                       const std::string& input) {
  testing::WriteFile(dir / "input.txt", input);
  const std::string command = absl::StrCat(
      "'", testing::W8a8Tool().string(), "' tokenize ", flags, " < '",
      (dir / "input.txt").string(), "' > '", (dir / "out.txt").string(), "' 2> '",
      (dir / "err.txt").string(), "'");
  const int status = std::system(command.c_str());
  ToolResult result;
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  result.out = testing::ReadFile(dir / "out.txt");
  result.err = testing::ReadFile(dir / "err.txt");
  return result;
}

class TokenizeCommand : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(std::filesystem::exists(testing::W8a8Tool()))
        << "missing " << testing::W8a8Tool() << "; build the w8a8 target first";
  }
  testing::TempDir dir_;
};

TEST_F(TokenizeCommand, PrintsIdsForSentencePieceModel) {
  const std::string model = (testing::Stories260KDir() / "tok512.model").string();
  const ToolResult result = RunTokenize(dir_, "--model='" + model + "'", "Once upon a time");
  EXPECT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(result.out, "[1,403,407,261,378]\n");
}

TEST_F(TokenizeCommand, PrintsIdsForGguf) {
  const std::string model = testing::Stories260KGguf().string();
  const ToolResult result = RunTokenize(dir_, "--model='" + model + "'", "Once upon a time");
  EXPECT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(result.out, "[1,403,407,261,378]\n");
}

TEST_F(TokenizeCommand, ParsesSpecialTokensOnlyWithFlag) {
  const std::string model = testing::Llama3TokenizerJson().string();
  const ToolResult parsed = RunTokenize(dir_, "--model='" + model + "' --special", "Hi<|eot_id|>");
  EXPECT_EQ(parsed.exit_code, 0) << parsed.err;
  EXPECT_EQ(parsed.out, "[128000,13347,128009]\n");

  const ToolResult plain = RunTokenize(dir_, "--model='" + model + "'", "Hi<|eot_id|>");
  EXPECT_EQ(plain.exit_code, 0) << plain.err;
  EXPECT_EQ(plain.out, "[128000,13347,27,91,68,354,851,91,29]\n");
}

TEST_F(TokenizeCommand, FailsWithoutModelFlag) {
  const ToolResult result = RunTokenize(dir_, "", "text");
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.err, HasSubstr("--model is missing"));
  EXPECT_EQ(result.out, "");
}

TEST_F(TokenizeCommand, FailsForMissingModelPath) {
  const std::string model = (dir_ / "absent.model").string();
  const ToolResult result = RunTokenize(dir_, "--model='" + model + "'", "text");
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.err, HasSubstr("absent.model"));
  EXPECT_THAT(result.err, HasSubstr("not found"));
}

TEST_F(TokenizeCommand, FailsForCorruptTokenizerJson) {
  testing::WriteFile(dir_ / "tokenizer.json", "{\"model\": {\"type\": \"BPE\"");
  const std::string model = (dir_ / "tokenizer.json").string();
  const ToolResult result = RunTokenize(dir_, "--model='" + model + "'", "text");
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.err, HasSubstr("tokenizer.json"));
}

}  // namespace
}  // namespace w8a8
