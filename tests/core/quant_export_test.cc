// compressed-tensors export of stories260K and serving the written checkpoint, plan files and
// config files as plan arguments.
#include <cstring>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/compressed_tensors.h"
#include "core/model.h"
#include "core/quantization.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace w8a8 {
namespace {

using ::testing::HasSubstr;

// BOS and "Once upon a time" as stories260K's tokenizer encodes them, then arbitrary ids.
const std::vector<int32_t> kTokens = {1, 403, 407, 261, 378, 426, 395, 261, 261, 300, 268, 376};

std::vector<float> AllLogits(const Checkpoint& checkpoint, const LinearFactory& factory) {
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Create(checkpoint, factory);
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return {};
  KvCache cache((*model)->config(), 2, 16);
  const std::vector<int32_t> table = {0, 1};
  SequenceStep step;
  step.tokens = kTokens;
  step.block_table = table;
  step.logits = SequenceStep::Logits::kAll;
  std::vector<float> logits;
  const absl::Status status = (*model)->Forward({&step, 1}, cache, logits);
  EXPECT_TRUE(status.ok()) << status;
  return logits;
}

class QuantExport : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
        Checkpoint::Open(testing::Stories260KGguf());
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    source_ = std::move(*checkpoint);
  }

  // Exports `plan`, reopens the output and checks that it serves the same logits as `plan`
  // applied in memory.
  void ExpectRoundTrip(const QuantPlan& plan, const std::string& name) {
    const std::vector<float> expected = AllLogits(*source_, LinearFactoryForQuantPlan(plan));
    ASSERT_FALSE(expected.empty());
    const absl::Status written = WriteCompressedTensors(*source_, plan, dir_ / name);
    ASSERT_TRUE(written.ok()) << written;
    absl::StatusOr<std::unique_ptr<Checkpoint>> stored = Checkpoint::Open(dir_ / name);
    ASSERT_TRUE(stored.ok()) << stored.status();
    EXPECT_TRUE(IsCompressedTensorsCheckpoint(**stored));
    absl::StatusOr<LinearFactory> factory = LinearFactoryForPlan(**stored, "");
    ASSERT_TRUE(factory.ok()) << factory.status();
    const std::vector<float> actual = AllLogits(**stored, *factory);
    ASSERT_EQ(actual.size(), expected.size());
    EXPECT_EQ(std::memcmp(actual.data(), expected.data(), actual.size() * sizeof(float)), 0)
        << "logits of the stored checkpoint differ from the in-memory plan";
    stored_ = std::move(*stored);
  }

  std::unique_ptr<Checkpoint> source_;
  std::unique_ptr<Checkpoint> stored_;
  testing::TempDir dir_;
};

TEST_F(QuantExport, PerChannelRoundTripIsExact) {
  absl::StatusOr<QuantPlan> plan = ResolvePlan(*source_, "per-channel");
  ASSERT_TRUE(plan.ok()) << plan.status();
  ExpectRoundTrip(*plan, "per-channel");
  ASSERT_NE(stored_, nullptr);

  const nlohmann::json& config = *stored_->quantization_config();
  EXPECT_EQ(config["quant_method"], "compressed-tensors");
  EXPECT_EQ(config["format"], "int-quantized");
  EXPECT_EQ(config["config_groups"]["group_0"]["targets"], nlohmann::json::array({"Linear"}));
  EXPECT_EQ(config["ignore"], nlohmann::json::array({"lm_head"}));

  absl::StatusOr<TensorView> weight = stored_->Tensor("model.layers.0.mlp.down_proj.weight");
  ASSERT_TRUE(weight.ok()) << weight.status();
  EXPECT_EQ(weight->dtype, DType::kI8);
  EXPECT_EQ(weight->shape, (std::vector<int64_t>{64, 172}));
  absl::StatusOr<TensorView> scale =
      stored_->Tensor("model.layers.0.mlp.down_proj.weight_scale");
  ASSERT_TRUE(scale.ok()) << scale.status();
  EXPECT_EQ(scale->dtype, DType::kF32);
  EXPECT_EQ(scale->shape, (std::vector<int64_t>{64, 1}));
  absl::StatusOr<TensorView> norm = stored_->Tensor("model.norm.weight");
  ASSERT_TRUE(norm.ok()) << norm.status();
  EXPECT_EQ(norm->dtype, DType::kF32);
}

TEST_F(QuantExport, MixedPlanRoundTripIsExact) {
  // Groups of 4 divide down_proj's 172 inputs (43 groups).
  const std::filesystem::path config_path = dir_ / "mixed.yaml";
  testing::WriteFile(config_path,
                     "scheme: per-channel\n"
                     "overrides:\n"
                     "  - {pattern: '.*down_proj', scheme: per-group, group_size: 4}\n"
                     "  - {pattern: 'model\\.layers\\.1\\.self_attn\\.q_proj', scheme: fp}\n");
  absl::StatusOr<QuantPlan> plan = ResolvePlan(*source_, config_path.string());
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->CountScheme(WeightScheme::kPerGroup), 5);
  EXPECT_EQ(plan->CountScheme(WeightScheme::kFp), 1);
  ExpectRoundTrip(*plan, "mixed");
  ASSERT_NE(stored_, nullptr);

  const nlohmann::json& stored_config = *stored_->quantization_config();
  ASSERT_EQ(stored_config["config_groups"].size(), 2u);
  const nlohmann::json& grouped = stored_config["config_groups"]["group_1"];
  EXPECT_EQ(grouped["weights"]["strategy"], "group");
  EXPECT_EQ(grouped["weights"]["group_size"], 4);
  EXPECT_EQ(grouped["targets"].size(), 5u);
  EXPECT_EQ(stored_config["ignore"],
            nlohmann::json::array({"model.layers.1.self_attn.q_proj", "lm_head"}));
  absl::StatusOr<TensorView> scale =
      stored_->Tensor("model.layers.3.mlp.down_proj.weight_scale");
  ASSERT_TRUE(scale.ok()) << scale.status();
  EXPECT_EQ(scale->shape, (std::vector<int64_t>{64, 43}));
  absl::StatusOr<TensorView> kept = stored_->Tensor("model.layers.1.self_attn.q_proj.weight");
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(kept->dtype, DType::kF32);
}

TEST_F(QuantExport, RejectsGroupSizeThatDoesNotDivide) {
  // Groups of 16 divide 64 but not down_proj's 172 inputs.
  testing::WriteFile(dir_ / "g16.json", R"({"scheme": "per-group", "group_size": 16})");
  absl::StatusOr<QuantPlan> plan = ResolvePlan(*source_, (dir_ / "g16.json").string());
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->Find("model.layers.0.mlp.down_proj")->last_group_size, 12);  // 172 = 10*16+12.
  const absl::Status written = WriteCompressedTensors(*source_, *plan, dir_ / "g16");
  ASSERT_FALSE(written.ok());
  EXPECT_THAT(std::string(written.message()), HasSubstr("172 inputs"));
  EXPECT_FALSE(std::filesystem::exists(dir_ / "g16" / "model.safetensors"));

  // The in-memory plan serves the shorter last group.
  EXPECT_FALSE(AllLogits(*source_, LinearFactoryForQuantPlan(*plan)).empty());
}

TEST_F(QuantExport, PlanFileServesLikeInMemoryPlan) {
  QuantConfig config;
  config.group_size = 4;
  absl::StatusOr<QuantizationReport> report = AnalyzeQuantization(*source_, config);
  ASSERT_TRUE(report.ok()) << report.status();
  const std::filesystem::path plan_path = dir_ / "plan.json";
  testing::WriteFile(plan_path, PlanToJson(report->plan).dump(2));
  absl::StatusOr<LinearFactory> from_file = LinearFactoryForPlan(*source_, plan_path.string());
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  EXPECT_EQ(AllLogits(*source_, *from_file),
            AllLogits(*source_, LinearFactoryForQuantPlan(report->plan)));

  const nlohmann::json json = QuantizationReportToJson(*report);
  ASSERT_EQ(json["layers"].size(), 35u);
  EXPECT_EQ(json["layers"][0]["name"], "model.layers.0.self_attn.q_proj");
  EXPECT_EQ(json["layers"][0]["scheme"], "per-channel");
  EXPECT_TRUE(json["layers"][0]["per_channel"]["relative_error"].is_number());
  EXPECT_TRUE(json["layers"][0]["per_group"]["sqnr_db"].is_number());
}

TEST_F(QuantExport, RejectsInvalidPlanArguments) {
  absl::StatusOr<LinearFactory> unknown = LinearFactoryForPlan(*source_, "per-row");
  ASSERT_FALSE(unknown.ok());
  EXPECT_THAT(std::string(unknown.status().message()), HasSubstr("invalid plan 'per-row'"));

  testing::WriteFile(dir_ / "broken.json", R"({"format": "w8a8-plan", "version": 1})");
  absl::StatusOr<LinearFactory> broken =
      LinearFactoryForPlan(*source_, (dir_ / "broken.json").string());
  ASSERT_FALSE(broken.ok());
  EXPECT_THAT(std::string(broken.status().message()), HasSubstr("layers"));

  nlohmann::json foreign = PlanToJson(*ResolvePlan(*source_, "per-channel"));
  foreign["layers"][0]["name"] = "model.layers.9.self_attn.q_proj";
  testing::WriteFile(dir_ / "foreign.json", foreign.dump());
  absl::StatusOr<LinearFactory> mismatched =
      LinearFactoryForPlan(*source_, (dir_ / "foreign.json").string());
  ASSERT_FALSE(mismatched.ok());
  EXPECT_THAT(std::string(mismatched.status().message()),
              HasSubstr("model.layers.9.self_attn.q_proj is not a linear layer"));

  absl::StatusOr<QuantPlan> plan = ResolvePlan(*source_, "per-channel");
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_TRUE(WriteCompressedTensors(*source_, *plan, dir_ / "stored").ok());
  absl::StatusOr<std::unique_ptr<Checkpoint>> stored = Checkpoint::Open(dir_ / "stored");
  ASSERT_TRUE(stored.ok()) << stored.status();
  absl::StatusOr<LinearFactory> requantized = LinearFactoryForPlan(**stored, "auto");
  ASSERT_FALSE(requantized.ok());
  EXPECT_THAT(std::string(requantized.status().message()), HasSubstr("already quantized"));
}

TEST_F(QuantExport, RejectsUnsupportedStoredSchemes) {
  absl::StatusOr<QuantPlan> plan = ResolvePlan(*source_, "per-channel");
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_TRUE(WriteCompressedTensors(*source_, *plan, dir_ / "edited").ok());
  const std::filesystem::path config_path = dir_ / "edited" / "config.json";
  const nlohmann::json original = nlohmann::json::parse(testing::ReadFile(config_path));
  struct Case {
    const char* pointer;
    nlohmann::json value;
    const char* message;
  };
  const Case cases[] = {
      {"/quantization_config/format", "float-quantized", "unsupported format"},
      {"/quantization_config/config_groups/group_0/weights/num_bits", 4, "not 8-bit"},
      {"/quantization_config/config_groups/group_0/input_activations/dynamic", false,
       "static activation scales"},
      {"/quantization_config/config_groups/group_0/weights/strategy", "block",
       "unsupported weights.strategy"},
  };
  for (const Case& test_case : cases) {
    nlohmann::json edited = original;
    edited[nlohmann::json::json_pointer(test_case.pointer)] = test_case.value;
    testing::WriteFile(config_path, edited.dump());
    absl::StatusOr<std::unique_ptr<Checkpoint>> stored = Checkpoint::Open(dir_ / "edited");
    ASSERT_TRUE(stored.ok()) << stored.status();
    absl::StatusOr<LinearFactory> factory = LinearFactoryForPlan(**stored, "");
    ASSERT_FALSE(factory.ok()) << test_case.pointer;
    EXPECT_THAT(std::string(factory.status().message()), HasSubstr(test_case.message));
  }
}

}  // namespace
}  // namespace w8a8
