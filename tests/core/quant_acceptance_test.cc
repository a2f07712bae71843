// End-to-end checks of W8A8 on the real stories260K model: greedy output against FP32, next-token
// fidelity over a text, and the outlier pathology on a labelled synthetic copy of the model.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/checkpoint.h"
#include "core/model.h"
#include "core/outliers.h"
#include "core/quantization.h"
#include "core/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace w8a8 {
namespace {

// A short story written for this test, in the style of the TinyStories data the model saw.
constexpr const char* kStory =
    "Once upon a time, there was a little boy named Tom. Tom liked to play with his red ball in "
    "the garden. One day, the ball rolled under a big tree. Tom looked under the tree, but he "
    "could not find it. He was sad and went to his mom. His mom said, \"Do not be sad, Tom. We "
    "can look for it together.\" They went back to the garden and looked everywhere. Then Tom "
    "saw a small dog with his ball! The dog wagged its tail and dropped the ball at Tom's feet. "
    "Tom laughed and threw the ball for the dog. The dog ran fast and brought it back. Tom and "
    "the dog played all day. When the sun went down, Tom gave the dog a hug. \"You are my new "
    "friend,\" he said. The dog barked happily. From that day on, Tom and the dog played in the "
    "garden every morning, and Tom was never sad again. The end.";

// Runs `tokens` as one sequence and returns the logits of every position.
std::vector<float> AllLogits(const Model& model, const std::vector<int32_t>& tokens) {
  const int64_t block_size = 16;
  const int64_t blocks = static_cast<int64_t>(tokens.size()) / block_size + 1;
  KvCache cache(model.config(), blocks, block_size);
  std::vector<int32_t> table(static_cast<size_t>(blocks));
  for (int64_t i = 0; i < blocks; ++i) table[i] = static_cast<int32_t>(i);
  SequenceStep step;
  step.tokens = tokens;
  step.start_position = 0;
  step.block_table = table;
  step.logits = SequenceStep::Logits::kAll;
  std::vector<float> logits;
  const absl::Status status = model.Forward({&step, 1}, cache, logits);
  EXPECT_TRUE(status.ok()) << status;
  return logits;
}

// Greedy continuation of `prompt` for `count` tokens.
std::vector<int32_t> Greedy(const Model& model, std::vector<int32_t> prompt, int64_t count) {
  const int64_t block_size = 16;
  const int64_t blocks = (static_cast<int64_t>(prompt.size()) + count) / block_size + 1;
  KvCache cache(model.config(), blocks, block_size);
  std::vector<int32_t> table(static_cast<size_t>(blocks));
  for (int64_t i = 0; i < blocks; ++i) table[i] = static_cast<int32_t>(i);
  std::vector<int32_t> output;
  std::vector<int32_t> pending = prompt;
  int64_t position = 0;
  for (int64_t i = 0; i < count; ++i) {
    SequenceStep step;
    step.tokens = pending;
    step.start_position = position;
    step.block_table = table;
    step.logits = SequenceStep::Logits::kLast;
    std::vector<float> logits;
    const absl::Status status = model.Forward({&step, 1}, cache, logits);
    EXPECT_TRUE(status.ok()) << status;
    if (!status.ok()) break;
    position += static_cast<int64_t>(pending.size());
    const int32_t next =
        static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    output.push_back(next);
    pending = {next};
  }
  return output;
}

struct Fidelity {
  double top1_agreement = 0.0;  // Fraction of positions whose argmax matches the reference.
  double mean_kl = 0.0;         // Mean KL(reference || candidate) in nats.
};

Fidelity Compare(const std::vector<float>& reference, const std::vector<float>& candidate,
                 int64_t vocab) {
  const int64_t positions = static_cast<int64_t>(reference.size()) / vocab;
  Fidelity result;
  std::vector<double> p(static_cast<size_t>(vocab));
  std::vector<double> q(static_cast<size_t>(vocab));
  for (int64_t row = 0; row < positions; ++row) {
    const float* r = reference.data() + row * vocab;
    const float* c = candidate.data() + row * vocab;
    auto log_softmax = [vocab](const float* logits, std::vector<double>& out) {
      const double max = *std::max_element(logits, logits + vocab);
      double sum = 0.0;
      for (int64_t i = 0; i < vocab; ++i) sum += std::exp(logits[i] - max);
      const double log_sum = std::log(sum) + max;
      for (int64_t i = 0; i < vocab; ++i) out[i] = logits[i] - log_sum;
    };
    log_softmax(r, p);
    log_softmax(c, q);
    double kl = 0.0;
    for (int64_t i = 0; i < vocab; ++i) kl += std::exp(p[i]) * (p[i] - q[i]);
    result.mean_kl += kl;
    if (std::max_element(r, r + vocab) - r == std::max_element(c, c + vocab) - c) {
      result.top1_agreement += 1.0;
    }
  }
  result.top1_agreement /= static_cast<double>(positions);
  result.mean_kl /= static_cast<double>(positions);
  return result;
}

class QuantAcceptance : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
        Checkpoint::Open(testing::Stories260KGguf());
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    source_ = checkpoint->release();
    absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
        Tokenizer::FromSource(source_->tokenizer_source());
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = tokenizer->release();
  }
  static void TearDownTestSuite() {
    delete source_;
    delete tokenizer_;
    source_ = nullptr;
    tokenizer_ = nullptr;
  }

  static std::unique_ptr<Model> Build(const Checkpoint& checkpoint, const LinearFactory& factory) {
    absl::StatusOr<std::unique_ptr<Model>> model = Model::Create(checkpoint, factory);
    EXPECT_TRUE(model.ok()) << model.status();
    return model.ok() ? std::move(*model) : nullptr;
  }

  static std::unique_ptr<Model> BuildWithPlan(const Checkpoint& checkpoint,
                                              const std::string& plan) {
    absl::StatusOr<LinearFactory> factory = LinearFactoryForPlan(checkpoint, plan);
    EXPECT_TRUE(factory.ok()) << factory.status();
    return factory.ok() ? Build(checkpoint, *factory) : nullptr;
  }

  static const Checkpoint* source_;
  static const Tokenizer* tokenizer_;
};

const Checkpoint* QuantAcceptance::source_ = nullptr;
const Tokenizer* QuantAcceptance::tokenizer_ = nullptr;

TEST_F(QuantAcceptance, PerChannelGreedyMatchesFp32) {
  const std::vector<int32_t> prompt = tokenizer_->Encode("Once upon a time", true, false);
  ASSERT_EQ(prompt, (std::vector<int32_t>{1, 403, 407, 261, 378}));
  std::unique_ptr<Model> fp32 = BuildWithPlan(*source_, "fp32");
  std::unique_ptr<Model> w8a8 = BuildWithPlan(*source_, "per-channel");
  ASSERT_NE(fp32, nullptr);
  ASSERT_NE(w8a8, nullptr);
  const std::vector<int32_t> expected = Greedy(*fp32, prompt, 40);
  const std::vector<int32_t> actual = Greedy(*w8a8, prompt, 40);
  std::printf("FP32:        %s\nper-channel: %s\n", tokenizer_->Decode(expected).c_str(),
              tokenizer_->Decode(actual).c_str());
  EXPECT_EQ(actual, expected);
}

TEST_F(QuantAcceptance, ReportsNextTokenFidelityOverText) {
  const std::vector<int32_t> tokens = tokenizer_->Encode(kStory, true, false);
  ASSERT_GT(tokens.size(), 150u);
  std::unique_ptr<Model> fp32 = BuildWithPlan(*source_, "fp32");
  ASSERT_NE(fp32, nullptr);
  const std::vector<float> reference = AllLogits(*fp32, tokens);
  const int64_t vocab = fp32->config().vocab_size;
  std::printf("%zu tokens\n%-12s %10s %12s\n", tokens.size(), "plan", "top-1", "mean KL");
  for (const char* plan : {"per-channel", "per-group", "per-tensor", "auto"}) {
    std::unique_ptr<Model> model = BuildWithPlan(*source_, plan);
    ASSERT_NE(model, nullptr);
    const Fidelity fidelity = Compare(reference, AllLogits(*model, tokens), vocab);
    std::printf("%-12s %9.2f%% %12.6f\n", plan, 100.0 * fidelity.top1_agreement,
                fidelity.mean_kl);
    EXPECT_GT(fidelity.top1_agreement, 0.9) << plan;
    EXPECT_LT(fidelity.mean_kl, 0.05) << plan;
  }
}

// The LLaMA 3-70B pathology in miniature. One down_proj of the model gets an input channel
// whose weights are 100x the rest of the layer, compensated in up_proj so that FP32 outputs stay
// the same. Per-channel weight scales then lose every row's other weights; the automatic plan
// finds the layer from its weights alone and gives it per-group scales. Groups of 4 inputs
// cover 1/16 of a 64-input row, about what groups of 128 cover of LLaMA 3-70B's 8192.
TEST_F(QuantAcceptance, AutoPlanRepairsInjectedOutliers) {
  testing::TempDir dir;
  OutlierOptions options;
  options.layers = {"model.layers.2.mlp.down_proj"};
  options.factor = 100.0;
  options.per_row = 1;
  options.seed = 7;
  absl::StatusOr<std::vector<std::string>> modified_layers =
      InjectOutliers(*source_, options, dir / "modified");
  ASSERT_TRUE(modified_layers.ok()) << modified_layers.status();
  EXPECT_EQ(*modified_layers, options.layers);
  absl::StatusOr<std::unique_ptr<Checkpoint>> modified = Checkpoint::Open(dir / "modified");
  ASSERT_TRUE(modified.ok()) << modified.status();
  ASSERT_TRUE((*modified)->raw_config().contains("w8a8_synthetic"));
  EXPECT_EQ((*modified)->raw_config()["w8a8_synthetic"]["outlier_layers"],
            nlohmann::json(options.layers));

  QuantConfig config;
  config.group_size = 4;
  const std::vector<int32_t> tokens = tokenizer_->Encode(kStory, true, false);
  const int64_t vocab = source_->config().vocab_size;
  std::vector<float> original_fp32_logits;
  // fidelity[model][plan] against that model's own FP32 logits.
  std::map<std::string, std::map<std::string, Fidelity>> fidelity;
  std::map<std::string, QuantPlan> auto_plans;
  std::printf("%-10s %-12s %10s %12s\n", "model", "plan", "top-1", "mean KL");
  for (const Checkpoint* checkpoint : {source_, static_cast<const Checkpoint*>(modified->get())}) {
    const std::string label = checkpoint == source_ ? "original" : "outliers";
    std::unique_ptr<Model> fp32 = BuildWithPlan(*checkpoint, "fp32");
    ASSERT_NE(fp32, nullptr);
    const std::vector<float> reference = AllLogits(*fp32, tokens);
    if (checkpoint == source_) {
      original_fp32_logits = reference;
    } else {
      // The compensation keeps the modified model's FP32 function.
      const Fidelity same = Compare(original_fp32_logits, reference, vocab);
      EXPECT_EQ(same.top1_agreement, 1.0);
      EXPECT_LT(same.mean_kl, 1e-6);
    }
    absl::StatusOr<ModelAnalysis> analysis = AnalyzeCheckpoint(*checkpoint, config);
    ASSERT_TRUE(analysis.ok()) << analysis.status();
    for (const char* plan_name : {"fp32", "per-channel", "per-group", "auto"}) {
      QuantConfig plan_config = config;
      if (std::string(plan_name) != "auto") plan_config.scheme = *ParseWeightScheme(plan_name);
      absl::StatusOr<QuantPlan> plan = SelectPlan(*analysis, plan_config);
      ASSERT_TRUE(plan.ok()) << plan.status();
      if (std::string(plan_name) == "auto") {
        auto_plans[label] = *plan;
        std::printf("%s", FormatQuantizationReport({*analysis, *plan}).c_str());
      }
      std::unique_ptr<Model> model = Build(*checkpoint, LinearFactoryForQuantPlan(*plan));
      ASSERT_NE(model, nullptr);
      const Fidelity result = Compare(reference, AllLogits(*model, tokens), vocab);
      fidelity[label][plan_name] = result;
      std::printf("%-10s %-12s %9.2f%% %12.6f\n", label.c_str(), plan_name,
                  100.0 * result.top1_agreement, result.mean_kl);
    }
  }

  // The original model has no outlier layer; the modified one exactly the injected layer.
  EXPECT_EQ(auto_plans["original"].CountScheme(WeightScheme::kPerGroup), 0);
  std::vector<std::string> per_group_layers;
  for (const LayerPlan& layer : auto_plans["outliers"].layers) {
    if (layer.scheme == WeightScheme::kPerGroup) per_group_layers.push_back(layer.name);
  }
  EXPECT_EQ(per_group_layers, options.layers);

  // Per-channel collapses on the modified model, and the automatic plan repairs it.
  const Fidelity& original = fidelity["original"]["auto"];
  EXPECT_LT(fidelity["outliers"]["per-channel"].top1_agreement, original.top1_agreement - 0.03);
  EXPECT_GT(fidelity["outliers"]["per-channel"].mean_kl, 10.0 * original.mean_kl);
  EXPECT_GE(fidelity["outliers"]["auto"].top1_agreement, original.top1_agreement - 0.01);
  EXPECT_LT(fidelity["outliers"]["auto"].mean_kl,
            0.25 * fidelity["outliers"]["per-channel"].mean_kl);
}

}  // namespace
}  // namespace w8a8
