#include "core/eval.h"

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/generator.h"
#include "core/model.h"
#include "core/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace w8a8 {
namespace {

using ::testing::HasSubstr;

constexpr char kText[] =
    "Once upon a time, there was a little girl named Lily. She liked to play in the park with "
    "her dog. One day, the dog ran after a red ball and Lily laughed.";

class EvalTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto checkpoint = Checkpoint::Open(testing::Stories260KGguf());
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    checkpoint_ = std::move(*checkpoint).release();
    auto tokenizer = Tokenizer::FromSource(checkpoint_->tokenizer_source());
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = std::move(*tokenizer).release();
    auto model = Model::Create(*checkpoint_, Fp32LinearFactory());
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model).release();
  }

  // Log-probability of `token` under `logits`, computed in double.
  static double LogProbability(const float* logits, int64_t vocab, int32_t token) {
    double max_logit = logits[0];
    for (int64_t v = 1; v < vocab; ++v) max_logit = std::max<double>(max_logit, logits[v]);
    double sum = 0.0;
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(logits[v] - max_logit);
    return logits[token] - max_logit - std::log(sum);
  }

  static inline Checkpoint* checkpoint_ = nullptr;
  static inline Tokenizer* tokenizer_ = nullptr;
  static inline Model* model_ = nullptr;
};

TEST_F(EvalTest, PerplexityMatchesIndependentComputation) {
  const std::vector<int32_t> tokens = tokenizer_->Encode(kText, true, false);
  ASSERT_GT(tokens.size(), 20u);
  auto logits = PromptLogits(*model_, tokens);
  ASSERT_TRUE(logits.ok()) << logits.status();
  const int64_t vocab = model_->config().vocab_size;
  double nll = 0.0;
  for (size_t t = 1; t < tokens.size(); ++t) {
    nll -= LogProbability(logits->data() + (t - 1) * vocab, vocab, tokens[t]);
  }
  const double expected = std::exp(nll / static_cast<double>(tokens.size() - 1));

  WindowOptions options;
  options.context_length = 512;
  options.stride = 256;
  auto result = ComputePerplexity(*model_, tokens, options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->tokens_scored, static_cast<int64_t>(tokens.size()) - 1);
  EXPECT_NEAR(result->perplexity(), expected, 1e-4 * expected);
  EXPECT_GT(result->perplexity(), 1.0);
}

TEST_F(EvalTest, SlidingWindowsScoreEveryTokenOnce) {
  const std::vector<int32_t> tokens = tokenizer_->Encode(kText, true, false);
  WindowOptions options;
  options.context_length = 8;
  options.stride = 3;
  auto windowed = ComputePerplexity(*model_, tokens, options);
  ASSERT_TRUE(windowed.ok()) << windowed.status();
  EXPECT_EQ(windowed->tokens_scored, static_cast<int64_t>(tokens.size()) - 1);

  // Short windows see less context than one long window, so they predict worse on this text.
  options.context_length = 1024;
  options.stride = 1024;
  auto whole = ComputePerplexity(*model_, tokens, options);
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_GT(windowed->perplexity(), whole->perplexity());
}

TEST_F(EvalTest, InvalidWindowsAreRejected) {
  const std::vector<int32_t> tokens = tokenizer_->Encode(kText, true, false);
  WindowOptions options;
  options.context_length = 16;
  options.stride = 17;
  auto result = ComputePerplexity(*model_, tokens, options);
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(result.status().message(), HasSubstr("stride 17"));

  options.stride = 8;
  const std::vector<int32_t> one_token = {1};
  auto too_short = ComputePerplexity(*model_, one_token, options);
  ASSERT_FALSE(too_short.ok());
  EXPECT_THAT(too_short.status().message(), HasSubstr("1 tokens"));
}

TEST_F(EvalTest, ModelComparedWithItselfHasNoDivergence) {
  const std::vector<int32_t> tokens = tokenizer_->Encode(kText, true, false);
  WindowOptions options;
  options.context_length = 16;
  options.stride = 8;
  auto fidelity = CompareModels(*model_, *model_, tokens, options);
  ASSERT_TRUE(fidelity.ok()) << fidelity.status();
  EXPECT_EQ(fidelity->positions, static_cast<int64_t>(tokens.size()) - 1);
  EXPECT_DOUBLE_EQ(fidelity->mean_kl, 0.0);
  EXPECT_DOUBLE_EQ(fidelity->p99_kl, 0.0);
  EXPECT_DOUBLE_EQ(fidelity->top1_agreement, 1.0);
  EXPECT_EQ(fidelity->top1_agreements, fidelity->positions);
  ASSERT_EQ(static_cast<int64_t>(fidelity->kl_values.size()), fidelity->positions);
  for (double kl : fidelity->kl_values) EXPECT_DOUBLE_EQ(kl, 0.0);
  EXPECT_DOUBLE_EQ(fidelity->reference.perplexity(), fidelity->candidate.perplexity());
}

TEST_F(EvalTest, MultipleChoiceScoresKnownAnswers) {
  // The gold indices are the choices this test itself finds most and least likely, so a
  // correct scorer gets 100% and 0%.
  const std::vector<std::pair<std::string, std::vector<std::string>>> questions = {
      {"Once upon a", {" banana", " time", " seven"}},
      {"Lily went to the", {" park", " green", " under", " of"}},
      {"The cat drank some", {" she", " milk", " the"}},
      {"She was very", {" happy", " dog", " and"}},
  };
  std::vector<MultipleChoiceItem> best_items;
  std::vector<MultipleChoiceItem> worst_items;
  for (const auto& [context, choices] : questions) {
    const std::vector<int32_t> context_tokens = tokenizer_->Encode(context, true, false);
    std::vector<double> scores;
    for (const std::string& choice : choices) {
      const std::vector<int32_t> whole = tokenizer_->Encode(context + choice, true, false);
      ASSERT_GT(whole.size(), context_tokens.size());
      auto logits = PromptLogits(*model_, whole);
      ASSERT_TRUE(logits.ok()) << logits.status();
      double score = 0.0;
      for (size_t t = context_tokens.size(); t < whole.size(); ++t) {
        score += LogProbability(logits->data() + (t - 1) * model_->config().vocab_size,
                                model_->config().vocab_size, whole[t]);
      }
      scores.push_back(score);
    }
    const int64_t best = std::max_element(scores.begin(), scores.end()) - scores.begin();
    const int64_t worst = std::min_element(scores.begin(), scores.end()) - scores.begin();
    best_items.push_back({context, choices, best});
    worst_items.push_back({context, choices, worst});
  }
  auto best = EvaluateMultipleChoice(*model_, *tokenizer_, best_items);
  ASSERT_TRUE(best.ok()) << best.status();
  EXPECT_EQ(best->items, 4);
  EXPECT_DOUBLE_EQ(best->accuracy, 1.0);
  EXPECT_DOUBLE_EQ(best->accuracy_stderr, 0.0);

  auto worst = EvaluateMultipleChoice(*model_, *tokenizer_, worst_items);
  ASSERT_TRUE(worst.ok()) << worst.status();
  EXPECT_DOUBLE_EQ(worst->accuracy, 0.0);
}

TEST(MultipleChoiceStderrTest, HalfCorrectHasSampleStandardError) {
  // With 2 of 4 correct the standard error is sqrt(p(1-p)/(n-1)) = 0.2887. Both choices of
  // every item are identical, so the first one wins whatever the model predicts.
  testing::TempDir dir;
  testing::WriteFile(dir / "task.jsonl",
                     "{\"context\": \"a\", \"choices\": [\" b\", \" b\"], \"gold\": 0}\n"
                     "{\"context\": \"a\", \"choices\": [\" b\", \" b\"], \"gold\": 1}\n"
                     "\n"
                     "{\"context\": \"a\", \"choices\": [\" b\", \" b\"], \"gold\": \"0\"}\n"
                     "{\"context\": \"a\", \"choices\": [\" b\", \" b\"], \"gold\": 1}\n");
  auto items = ReadMultipleChoiceJsonl(dir / "task.jsonl", TaskFieldMapping());
  ASSERT_TRUE(items.ok()) << items.status();
  ASSERT_EQ(items->size(), 4u);
  EXPECT_EQ((*items)[2].gold, 0);

  auto checkpoint = Checkpoint::Open(testing::Stories260KGguf());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  auto tokenizer = Tokenizer::FromSource((*checkpoint)->tokenizer_source());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto model = Model::Create(**checkpoint, Fp32LinearFactory());
  ASSERT_TRUE(model.ok()) << model.status();
  auto result = EvaluateMultipleChoice(**model, **tokenizer, *items);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_DOUBLE_EQ(result->accuracy, 0.5);
  EXPECT_NEAR(result->accuracy_stderr, std::sqrt(0.25 / 3.0), 1e-12);
}

TEST(MultipleChoiceFileTest, ErrorsNameLineAndField) {
  testing::TempDir dir;
  struct Case {
    std::string line;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"not json", "line 2: not a JSON object"},
      {R"({"choices": [" a", " b"], "gold": 0})", "line 2: field 'query' (context)"},
      {R"({"query": "x", "choices": " a", "gold": 0})", "field 'choices' (choices)"},
      {R"({"query": "x", "choices": [" a", 3], "gold": 0})", "non-string choice"},
      {R"({"query": "x", "choices": [" a", " b"]})", "field 'gold' (gold answer) is missing"},
      {R"({"query": "x", "choices": [" a", " b"], "gold": 2})", "outside [0, 1]"},
      {R"({"query": "x", "choices": [" a", " b"], "gold": "c"})", "neither an index"},
      {R"({"query": "x", "choices": [" a", " b"], "gold": 1.5})", "integer index or a string"},
  };
  TaskFieldMapping fields;
  fields.context = "query";
  for (const Case& test_case : cases) {
    testing::WriteFile(dir / "task.jsonl",
                       "{\"query\": \"ok\", \"choices\": [\" a\", \" b\"], \"gold\": 1}\n" +
                           test_case.line + "\n");
    auto items = ReadMultipleChoiceJsonl(dir / "task.jsonl", fields);
    ASSERT_FALSE(items.ok()) << test_case.line;
    EXPECT_THAT(items.status().message(), HasSubstr(test_case.expected)) << test_case.line;
    EXPECT_THAT(items.status().message(), HasSubstr("task.jsonl")) << test_case.line;
  }
  auto missing = ReadMultipleChoiceJsonl(dir / "absent.jsonl", fields);
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("absent.jsonl"));
}

TEST(TaskFieldMappingTest, ParsesRolesAndRejectsUnknownOnes) {
  auto mapping = ParseTaskFieldMapping("context=query, gold=label");
  ASSERT_TRUE(mapping.ok()) << mapping.status();
  EXPECT_EQ(mapping->context, "query");
  EXPECT_EQ(mapping->choices, "choices");
  EXPECT_EQ(mapping->gold, "label");

  auto unknown = ParseTaskFieldMapping("answer=label");
  ASSERT_FALSE(unknown.ok());
  EXPECT_THAT(unknown.status().message(), HasSubstr("'answer'"));
  auto malformed = ParseTaskFieldMapping("context");
  ASSERT_FALSE(malformed.ok());
  EXPECT_THAT(malformed.status().message(), HasSubstr("ROLE=FIELD"));
}

}  // namespace
}  // namespace w8a8
