// The generation loop on the trained stories260K model: stop strings and ids, limits,
// streaming, log-probabilities and seeded sampling.
#include "core/generator.h"

#include <cmath>

#include "core/checkpoint.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace w8a8 {
namespace {

constexpr char kPrompt[] = "Once upon a time";

class GeneratorTest : public ::testing::Test {
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

  static GenerationOptions Greedy(int64_t max_tokens) {
    GenerationOptions options;
    options.sampling.temperature = 0.0;
    options.sampling.max_tokens = max_tokens;
    return options;
  }

  // Generates and records every streamed piece.
  GenerationResult Run(const GenerationOptions& options, std::vector<std::string>* pieces) {
    absl::StatusOr<GenerationResult> result =
        Generator(*model_, *tokenizer_).Generate(kPrompt, options, [pieces](std::string_view piece) {
          pieces->emplace_back(piece);
        });
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *std::move(result) : GenerationResult{};
  }

  static std::string Join(const std::vector<std::string>& pieces) {
    std::string text;
    for (const std::string& piece : pieces) text += piece;
    return text;
  }

  std::unique_ptr<Checkpoint> checkpoint_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Model> model_;
};

// The greedy continuation starts ", there was a little girl named Lily."
TEST_F(GeneratorTest, StopStringAcrossTokensCutsText) {
  GenerationOptions options = Greedy(40);
  options.sampling.stop = {"little girl"};
  std::vector<std::string> pieces;
  const GenerationResult result = Run(options, &pieces);
  EXPECT_EQ(result.text, ", there was a ");
  EXPECT_EQ(result.finish_reason, "stop");
  // " little" was held back as a possible start of the stop string, so it never streamed.
  EXPECT_EQ(Join(pieces), ", there was a ");
  EXPECT_LT(result.tokens.size(), 40u);
}

TEST_F(GeneratorTest, HeldBackTextStreamsWhenStopDiverges) {
  GenerationOptions options = Greedy(12);
  options.sampling.stop = {"little dog"};
  std::vector<std::string> pieces;
  const GenerationResult result = Run(options, &pieces);
  EXPECT_EQ(result.text.rfind(", there was a little girl", 0), 0u) << result.text;
  EXPECT_EQ(result.finish_reason, "length");
  EXPECT_EQ(Join(pieces), result.text);
}

TEST_F(GeneratorTest, EarliestOfSeveralStopStringsWins) {
  GenerationOptions options = Greedy(40);
  options.sampling.stop = {"Lily", "was"};
  std::vector<std::string> pieces;
  const GenerationResult result = Run(options, &pieces);
  EXPECT_EQ(result.text, ", there ");
  EXPECT_EQ(Join(pieces), ", there ");
}

TEST_F(GeneratorTest, MaxTokensFinishesWithLength) {
  std::vector<std::string> pieces;
  const GenerationResult result = Run(Greedy(5), &pieces);
  EXPECT_EQ(result.tokens.size(), 5u);
  EXPECT_EQ(result.finish_reason, "length");
  EXPECT_EQ(result.text, tokenizer_->Decode(result.tokens).substr(0, result.text.size()));
  EXPECT_EQ(Join(pieces), result.text);
  EXPECT_EQ(result.prompt_tokens, (std::vector<int32_t>{1, 403, 407, 261, 378}));
}

TEST_F(GeneratorTest, StopTokenIdEndsWithoutItsText) {
  std::vector<std::string> pieces;
  const GenerationResult free_run = Run(Greedy(6), &pieces);
  ASSERT_EQ(free_run.tokens.size(), 6u);

  GenerationOptions options = Greedy(6);
  options.sampling.stop_token_ids = {free_run.tokens[3]};
  pieces.clear();
  const GenerationResult result = Run(options, &pieces);
  ASSERT_EQ(result.tokens.size(), 4u);
  EXPECT_EQ(result.tokens.back(), free_run.tokens[3]);
  EXPECT_EQ(result.finish_reason, "stop");
  // The stop token's text is not part of the output, which is a strict prefix of the free run's.
  EXPECT_EQ(free_run.text.rfind(result.text, 0), 0u);
  EXPECT_LT(result.text.size(), free_run.text.size());
  EXPECT_EQ(Join(pieces), result.text);
}

TEST_F(GeneratorTest, EndTokenIdsIncludeModelEos) {
  const std::vector<int32_t> ids = Generator(*model_, *tokenizer_).EndTokenIds();
  EXPECT_NE(std::find(ids.begin(), ids.end(), 2), ids.end());
}

TEST_F(GeneratorTest, LogprobsMatchPromptLogits) {
  GenerationOptions options = Greedy(3);
  options.logprobs = true;
  options.top_logprobs = 4;
  std::vector<std::string> pieces;
  const GenerationResult result = Run(options, &pieces);
  ASSERT_EQ(result.logprobs.size(), 3u);
  for (const TokenLogprob& entry : result.logprobs) {
    ASSERT_EQ(entry.top.size(), 4u);
    // Greedy picks the most likely token.
    EXPECT_EQ(entry.top[0].token, entry.token);
    EXPECT_FLOAT_EQ(entry.top[0].logprob, entry.logprob);
    for (size_t i = 1; i < entry.top.size(); ++i) {
      EXPECT_LE(entry.top[i].logprob, entry.top[i - 1].logprob);
    }
    EXPECT_LE(entry.logprob, 0.0f);
  }

  absl::StatusOr<std::vector<float>> logits = PromptLogits(*model_, result.prompt_tokens);
  ASSERT_TRUE(logits.ok()) << logits.status();
  const size_t vocab = 512;
  const std::span<const float> last(logits->data() + logits->size() - vocab, vocab);
  std::vector<float> expected(vocab);
  LogSoftmax(last, expected);
  EXPECT_NEAR(result.logprobs[0].logprob, expected[result.tokens[0]], 1e-4);
}

TEST_F(GeneratorTest, SeededSamplingRepeats) {
  GenerationOptions options;
  options.sampling.max_tokens = 30;
  options.sampling.temperature = 1.0;
  options.sampling.has_seed = true;
  options.sampling.seed = 11;
  std::vector<std::string> pieces;
  const GenerationResult first = Run(options, &pieces);
  const GenerationResult second = Run(options, &pieces);
  options.sampling.seed = 12;
  const GenerationResult other = Run(options, &pieces);
  EXPECT_EQ(first.tokens, second.tokens);
  EXPECT_EQ(first.text, second.text);
  EXPECT_NE(first.tokens, other.tokens);
}

TEST_F(GeneratorTest, ContextLimitFinishesWithLength) {
  const int64_t context = model_->config().max_position_embeddings;
  std::vector<int32_t> prompt(static_cast<size_t>(context - 3), 403);
  prompt[0] = 1;
  GenerationOptions options = Greedy(100);
  options.sampling.ignore_eos = true;
  absl::StatusOr<GenerationResult> result = Generator(*model_, *tokenizer_).Generate(prompt, options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->tokens.size(), 3u);
  EXPECT_EQ(result->finish_reason, "length");
}

TEST_F(GeneratorTest, RejectsInvalidRequests) {
  const Generator generator(*model_, *tokenizer_);
  GenerationOptions options = Greedy(5);
  options.sampling.top_p = 0.0;
  absl::StatusOr<GenerationResult> result = generator.Generate(kPrompt, options);
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("top_p"), std::string::npos) << result.status();

  result = generator.Generate(std::vector<int32_t>{}, Greedy(5));
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);

  const std::vector<int32_t> too_long(
      static_cast<size_t>(model_->config().max_position_embeddings), 403);
  result = generator.Generate(too_long, Greedy(5));
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("max_position_embeddings"), std::string::npos)
      << result.status();
}

TEST_F(GeneratorTest, PromptLogitsHasRowPerToken) {
  const std::vector<int32_t> tokens = {1, 403, 407};
  absl::StatusOr<std::vector<float>> logits = PromptLogits(*model_, tokens);
  ASSERT_TRUE(logits.ok()) << logits.status();
  EXPECT_EQ(logits->size(), 3u * 512u);
  EXPECT_FALSE(PromptLogits(*model_, {}).ok());
}

}  // namespace
}  // namespace w8a8
