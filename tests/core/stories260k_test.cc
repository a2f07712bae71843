// The trained stories260K model end to end: its prompt logits against llama.cpp's, and greedy
// generation against the continuation that llama.cpp and llama2.c print, through the library
// and through the `w8a8 generate` binary.
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <fstream>

#include "core/checkpoint.h"
#include "core/generator.h"
#include "core/model.h"
#include "core/tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace w8a8 {
namespace {

// Greedy continuation of "Once upon a time" (with BOS) printed by llama.cpp and llama2.c; the
// first two paragraphs of the 195 tokens.
constexpr char kExpectedContinuation[] =
    ", there was a little girl named Lily. She loved to play outside in the park. One day, she "
    "saw a big, red ball. She wanted to play with it, but it was too high.\n"
    "Lily's mom said, \"Lily, let's go to the park.\" Lily was sad and didn't know what to do. "
    "She said, \"I want to play with your ball, but I can't find it.\"";

class Stories260KTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto checkpoint = Checkpoint::Open(testing::Stories260KGguf());
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    checkpoint_ = std::move(*checkpoint);
    auto tokenizer = Tokenizer::FromSource(checkpoint_->tokenizer_source());
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = std::move(*tokenizer);
    auto model = Model::Create(*checkpoint_, Fp32LinearFactory());
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
  }

  std::unique_ptr<Checkpoint> checkpoint_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Model> model_;
};

TEST_F(Stories260KTest, PromptTokenIdsMatchReference) {
  EXPECT_EQ(tokenizer_->Encode("Once upon a time", true, true),
            (std::vector<int32_t>{1, 403, 407, 261, 378}));
}

TEST_F(Stories260KTest, PromptLogitsMatchLlamaCpp) {
  const nlohmann::json reference = nlohmann::json::parse(
      testing::ReadFile(testing::Stories260KDir() / "reference-logits.json"));
  const std::vector<int32_t> expected_tokens = reference.at("tokens").get<std::vector<int32_t>>();
  const std::vector<int32_t> tokens =
      tokenizer_->Encode("Once upon a time, there was a little girl named Lily.", true, true);
  ASSERT_EQ(tokens, expected_tokens);

  absl::StatusOr<std::vector<float>> logits = PromptLogits(*model_, tokens);
  ASSERT_TRUE(logits.ok()) << logits.status();
  const size_t vocab = 512;
  ASSERT_EQ(logits->size(), tokens.size() * vocab);
  const auto& rows = reference.at("logits");
  ASSERT_EQ(rows.size(), tokens.size());
  double max_error = 0.0;
  for (size_t position = 0; position < tokens.size(); ++position) {
    ASSERT_EQ(rows[position].size(), vocab);
    for (size_t v = 0; v < vocab; ++v) {
      const double expected = rows[position][v].get<double>();
      const double error = std::abs((*logits)[position * vocab + v] - expected);
      max_error = std::max(max_error, error);
      ASSERT_LE(error, 1e-3) << "position " << position << " token " << v;
    }
  }
  std::printf("max |logit - llama.cpp| = %.2e\n", max_error);
}

TEST_F(Stories260KTest, GreedyGenerationMatchesReference) {
  GenerationOptions options;
  options.sampling.temperature = 0.0;
  options.sampling.max_tokens = 195;
  std::string streamed;
  absl::StatusOr<GenerationResult> result =
      Generator(*model_, *tokenizer_).Generate("Once upon a time", options,
                                              [&streamed](std::string_view piece) {
                                                streamed.append(piece);
                                              });
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->text.rfind(kExpectedContinuation, 0), 0u) << result->text;
  EXPECT_EQ(streamed, result->text);
  EXPECT_EQ(result->tokens.size(), 195u);
  EXPECT_EQ(result->finish_reason, "length");
  std::printf("195 tokens: prefill %.4f s, decode %.4f s\n", result->prefill_seconds,
              result->decode_seconds);
}

TEST_F(Stories260KTest, BatchedPromptsMatchSoloPromptLogits) {
  const std::vector<int32_t> a = tokenizer_->Encode("Once upon a time", true, true);
  const std::vector<int32_t> b = tokenizer_->Encode("The cat sat on the mat and", true, true);
  absl::StatusOr<std::vector<float>> solo_a = PromptLogits(*model_, a);
  absl::StatusOr<std::vector<float>> solo_b = PromptLogits(*model_, b);
  ASSERT_TRUE(solo_a.ok()) << solo_a.status();
  ASSERT_TRUE(solo_b.ok()) << solo_b.status();

  KvCache cache(model_->config(), 4, 16);
  const std::vector<int32_t> table_a = {3, 1};
  const std::vector<int32_t> table_b = {0, 2};
  std::vector<SequenceStep> batch = {{a, 0, table_a, SequenceStep::Logits::kAll},
                                     {b, 0, table_b, SequenceStep::Logits::kAll}};
  std::vector<float> logits;
  ASSERT_TRUE(model_->Forward(batch, cache, logits).ok());
  std::vector<float> expected = *solo_a;
  expected.insert(expected.end(), solo_b->begin(), solo_b->end());
  ASSERT_EQ(logits.size(), expected.size());
  for (size_t i = 0; i < logits.size(); ++i) ASSERT_NEAR(logits[i], expected[i], 1e-4) << i;
}

TEST(Stories260KCliTest, GeneratePrintsReferenceContinuation) {
  const testing::TempDir temp;
  const std::string command = testing::W8a8Tool().string() + " generate --model " +
                              testing::Stories260KGguf().string() +
                              " --prompt 'Once upon a time' --max-tokens 195 --temperature 0 > " +
                              (temp / "stdout").string() + " 2> " + (temp / "stderr").string();
  const int status = std::system(command.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << testing::ReadFile(temp / "stderr");
  const std::string output = testing::ReadFile(temp / "stdout");
  EXPECT_EQ(output.rfind(std::string("Once upon a time") + kExpectedContinuation, 0), 0u)
      << output;
  EXPECT_NE(testing::ReadFile(temp / "stderr").find("finish reason: length"), std::string::npos);
}

TEST(Stories260KCliTest, GenerateWithInt8PlanKeepsGreedyStart) {
  const testing::TempDir temp;
  const std::string command = testing::W8a8Tool().string() + " generate --model " +
                              testing::Stories260KGguf().string() +
                              " --prompt 'Once upon a time' --max-tokens 8 --temperature 0 "
                              "--plan per-channel > " +
                              (temp / "stdout").string() + " 2> " + (temp / "stderr").string();
  const int status = std::system(command.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << testing::ReadFile(temp / "stderr");
  // Per-channel int8 weights change the logits slightly, not the first greedy words.
  EXPECT_EQ(testing::ReadFile(temp / "stdout").rfind("Once upon a time, there was a little", 0),
            0u)
      << testing::ReadFile(temp / "stdout");
}

TEST(Stories260KCliTest, GenerateRejectsUnknownPlan) {
  const testing::TempDir temp;
  const std::string command = testing::W8a8Tool().string() + " generate --model " +
                              testing::Stories260KGguf().string() +
                              " --prompt x --plan no-such-plan 2> " + (temp / "stderr").string();
  const int status = std::system(command.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
  EXPECT_NE(testing::ReadFile(temp / "stderr").find("no-such-plan"), std::string::npos)
      << testing::ReadFile(temp / "stderr");
}

TEST(Stories260KCliTest, GenerateRejectsInvalidTemperature) {
  const testing::TempDir temp;
  const std::string command = testing::W8a8Tool().string() + " generate --model " +
                              testing::Stories260KGguf().string() +
                              " --prompt x --temperature -1 2> " + (temp / "stderr").string();
  const int status = std::system(command.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
  EXPECT_NE(testing::ReadFile(temp / "stderr").find("temperature is -1"), std::string::npos)
      << testing::ReadFile(temp / "stderr");
}

}  // namespace
}  // namespace w8a8
