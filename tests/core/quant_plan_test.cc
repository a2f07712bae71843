// Automatic plan selection, plan files and the compressed-tensors config of a plan.
#include <cmath>
#include <map>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/compressed_tensors.h"
#include "core/quant_analysis.h"
#include "core/quantization.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace w8a8 {
namespace {

using ::testing::HasSubstr;

// An analysis of `count` layers whose per-channel errors scatter by about 10% around 0.5%,
// with the layers in `outliers` given `outlier_error` instead.
ModelAnalysis SyntheticAnalysis(int count, const std::map<int, double>& outliers,
                                int64_t in_features = 64) {
  std::mt19937_64 rng(7);
  std::normal_distribution<double> noise(0.0, 0.1);
  ModelAnalysis analysis;
  analysis.group_size = 16;
  for (int i = 0; i < count; ++i) {
    LayerAnalysis layer;
    layer.name = absl::StrCat("model.layers.", i / 7, ".proj", i % 7);
    layer.out_features = 32;
    layer.in_features = in_features;
    layer.group_size = 16;
    layer.last_group_size = LastGroupSize(in_features, 16);
    layer.per_channel.relative_error = 0.005 * std::exp(noise(rng));
    layer.per_group.relative_error = 0.8 * layer.per_channel.relative_error;
    if (const auto found = outliers.find(i); found != outliers.end()) {
      layer.per_channel.relative_error = found->second;
      layer.per_group.relative_error = 0.006;
    }
    analysis.layers.push_back(layer);
  }
  return analysis;
}

TEST(SelectPlan, PicksTheOutlierLayerForPerGroup) {
  const ModelAnalysis analysis = SyntheticAnalysis(40, {{12, 0.05}});
  absl::StatusOr<QuantPlan> plan = SelectPlan(analysis, QuantConfig{});
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->layers.size(), 40u);
  EXPECT_EQ(plan->CountScheme(WeightScheme::kPerGroup), 1);
  EXPECT_EQ(plan->CountScheme(WeightScheme::kPerChannel), 39);
  const LayerPlan& chosen = plan->layers[12];
  EXPECT_EQ(chosen.scheme, WeightScheme::kPerGroup);
  EXPECT_EQ(chosen.group_size, 128);
  ASSERT_TRUE(chosen.log_error_z.has_value());
  EXPECT_GT(*chosen.log_error_z, 3.5);
  EXPECT_THAT(chosen.reason, HasSubstr("robust z"));
  EXPECT_THAT(chosen.reason, HasSubstr("per-group (G=128)"));
  EXPECT_EQ(plan->layers[0].group_size, 0);
  EXPECT_FALSE(plan->layers[0].reason.empty());
}

TEST(SelectPlan, ReasonFlagsGroupCoveringWholeRow) {
  QuantConfig config;
  config.group_size = 64;  // The synthetic layers have 64 inputs.
  absl::StatusOr<QuantPlan> plan = SelectPlan(SyntheticAnalysis(40, {{12, 0.05}}), config);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->layers[12].scheme, WeightScheme::kPerGroup);
  EXPECT_THAT(plan->layers[12].reason, HasSubstr("equals per-channel"));
}

TEST(SelectPlan, ModelWithoutOutliersIsPerChannel) {
  absl::StatusOr<QuantPlan> plan = SelectPlan(SyntheticAnalysis(40, {}), QuantConfig{});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->CountScheme(WeightScheme::kPerChannel), 40);
}

TEST(SelectPlan, EqualErrorsStayPerChannel) {
  // A zero MAD makes every z-score huge; the error ratio test keeps these per-channel.
  ModelAnalysis analysis = SyntheticAnalysis(10, {});
  for (LayerAnalysis& layer : analysis.layers) layer.per_channel.relative_error = 0.004;
  analysis.layers[3].per_channel.relative_error = 0.0045;
  absl::StatusOr<QuantPlan> plan = SelectPlan(analysis, QuantConfig{});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->CountScheme(WeightScheme::kPerChannel), 10);
}

TEST(SelectPlan, BudgetKeepsOnlyTheWorstOutliers) {
  // floor(3% of 40) = 1 layer, so only the worst of three outliers gets per-group.
  const ModelAnalysis analysis = SyntheticAnalysis(40, {{3, 0.03}, {20, 0.08}, {33, 0.05}});
  absl::StatusOr<QuantPlan> plan = SelectPlan(analysis, QuantConfig{});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->CountScheme(WeightScheme::kPerGroup), 1);
  EXPECT_EQ(plan->layers[20].scheme, WeightScheme::kPerGroup);
  EXPECT_EQ(plan->layers[3].scheme, WeightScheme::kPerChannel);
  EXPECT_THAT(plan->layers[3].reason, HasSubstr("budget of 1 layers"));

  QuantConfig generous;
  generous.thresholds.max_per_group_fraction = 0.1;  // 4 layers.
  absl::StatusOr<QuantPlan> wider = SelectPlan(analysis, generous);
  ASSERT_TRUE(wider.ok()) << wider.status();
  EXPECT_EQ(wider->CountScheme(WeightScheme::kPerGroup), 3);
}

TEST(SelectPlan, ZeroFractionStillAllowsOneLayer) {
  QuantConfig config;
  config.thresholds.max_per_group_fraction = 0.0;
  absl::StatusOr<QuantPlan> plan = SelectPlan(SyntheticAnalysis(10, {{4, 0.1}}), config);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->layers[4].scheme, WeightScheme::kPerGroup);
}

TEST(SelectPlan, OverridesWinOverAutomaticChoice) {
  QuantConfig config;
  config.overrides.push_back({"model\\.layers\\.0\\..*", WeightScheme::kFp, std::nullopt});
  config.overrides.push_back({".*proj6", WeightScheme::kPerGroup, 8});
  config.overrides.push_back({"model\\.layers\\.1\\.proj", WeightScheme::kPerTensor,
                              std::nullopt});  // Matches no whole name.
  absl::StatusOr<QuantPlan> plan = SelectPlan(SyntheticAnalysis(14, {{2, 0.1}}), config);
  ASSERT_TRUE(plan.ok()) << plan.status();
  for (int i = 0; i < 7; ++i) {
    EXPECT_EQ(plan->layers[i].scheme, WeightScheme::kFp) << plan->layers[i].name;
  }
  EXPECT_EQ(plan->layers[13].scheme, WeightScheme::kPerGroup);
  EXPECT_EQ(plan->layers[13].group_size, 8);
  EXPECT_EQ(plan->layers[13].last_group_size, 8);
  EXPECT_THAT(plan->layers[13].reason, HasSubstr("override"));
  EXPECT_EQ(plan->CountScheme(WeightScheme::kPerTensor), 0);
}

TEST(SelectPlan, FixedSchemeAppliesToEveryLayer) {
  QuantConfig config;
  config.scheme = WeightScheme::kPerGroup;
  config.group_size = 48;
  absl::StatusOr<QuantPlan> plan = SelectPlan(SyntheticAnalysis(5, {}, 172), config);
  ASSERT_TRUE(plan.ok()) << plan.status();
  for (const LayerPlan& layer : plan->layers) {
    EXPECT_EQ(layer.scheme, WeightScheme::kPerGroup);
    EXPECT_EQ(layer.group_size, 48);
    EXPECT_EQ(layer.last_group_size, 28);  // 172 = 3 * 48 + 28.
  }
}

TEST(PlanJson, RoundTripKeepsEveryField) {
  absl::StatusOr<QuantPlan> plan = SelectPlan(SyntheticAnalysis(40, {{5, 0.07}}), QuantConfig{});
  ASSERT_TRUE(plan.ok()) << plan.status();
  const nlohmann::json json = PlanToJson(*plan);
  absl::StatusOr<QuantPlan> restored = PlanFromJson(nlohmann::json::parse(json.dump()), "plan.json");
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ(PlanToJson(*restored), json);
  EXPECT_EQ(restored->layers[5].scheme, WeightScheme::kPerGroup);
}

TEST(PlanJson, RejectsBrokenPlans) {
  const nlohmann::json good = PlanToJson(*SelectPlan(SyntheticAnalysis(3, {}), QuantConfig{}));
  struct Case {
    std::function<void(nlohmann::json&)> edit;
    const char* message;
  };
  const Case cases[] = {
      {[](nlohmann::json& j) { j.erase("format"); }, "w8a8-plan"},
      {[](nlohmann::json& j) { j["version"] = 2; }, "unsupported plan version 2"},
      {[](nlohmann::json& j) { j["extra"] = 1; }, "unknown key 'extra'"},
      {[](nlohmann::json& j) { j["layers"][1]["scheme"] = "int4"; }, "layers[1]"},
      {[](nlohmann::json& j) { j["layers"][0]["bits"] = 4; }, "unknown key 'bits' in layers[0]"},
      {[](nlohmann::json& j) { j["layers"][0].erase("name"); }, "needs \"name\" and \"scheme\""},
      {[](nlohmann::json& j) {
         j["layers"][0]["scheme"] = "per-group";
         j["layers"][0]["group_size"] = 0;
       },
       "per-group needs group_size >= 1"},
      {[](nlohmann::json& j) { j["layers"][1]["name"] = j["layers"][0]["name"]; }, "listed twice"},
      {[](nlohmann::json& j) { j["group_size"] = "big"; }, "invalid plan field"},
      {[](nlohmann::json& j) { j["activations"] = "per-row"; }, "per-row"},
  };
  for (const Case& test_case : cases) {
    nlohmann::json broken = good;
    test_case.edit(broken);
    absl::StatusOr<QuantPlan> plan = PlanFromJson(broken, "plan.json");
    ASSERT_FALSE(plan.ok()) << test_case.message;
    EXPECT_THAT(std::string(plan.status().message()), HasSubstr(test_case.message));
    EXPECT_THAT(std::string(plan.status().message()), HasSubstr("plan.json"));
  }
}

TEST(CompressedTensorsConfig, SingleSchemeTargetsLinear) {
  QuantConfig config;
  config.scheme = WeightScheme::kPerChannel;
  config.overrides.push_back({".*proj3", WeightScheme::kFp, std::nullopt});
  absl::StatusOr<QuantPlan> plan = SelectPlan(SyntheticAnalysis(7, {}), config);
  ASSERT_TRUE(plan.ok()) << plan.status();
  absl::StatusOr<nlohmann::json> json = CompressedTensorsConfig(*plan, {});
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_EQ((*json)["quant_method"], "compressed-tensors");
  EXPECT_EQ((*json)["format"], "int-quantized");
  ASSERT_EQ((*json)["config_groups"].size(), 1u);
  const nlohmann::json& group = (*json)["config_groups"]["group_0"];
  EXPECT_EQ(group["targets"], nlohmann::json::array({"Linear"}));
  EXPECT_EQ(group["weights"]["num_bits"], 8);
  EXPECT_EQ(group["weights"]["type"], "int");
  EXPECT_EQ(group["weights"]["symmetric"], true);
  EXPECT_EQ(group["weights"]["strategy"], "channel");
  EXPECT_EQ(group["weights"]["dynamic"], false);
  EXPECT_TRUE(group["weights"]["group_size"].is_null());
  EXPECT_EQ(group["input_activations"]["strategy"], "token");
  EXPECT_EQ(group["input_activations"]["dynamic"], true);
  EXPECT_EQ((*json)["ignore"], nlohmann::json::array({"model.layers.0.proj3", "lm_head"}));
}

TEST(CompressedTensorsConfig, MixedPlanTargetsLayersByName) {
  absl::StatusOr<QuantPlan> plan = SelectPlan(SyntheticAnalysis(40, {{9, 0.09}}), QuantConfig{});
  ASSERT_TRUE(plan.ok()) << plan.status();
  plan->layers[9].group_size = 16;  // Divides 64.
  absl::StatusOr<nlohmann::json> json =
      CompressedTensorsConfig(*plan, {{plan->layers[9].name, 64}});
  ASSERT_TRUE(json.ok()) << json.status();
  ASSERT_EQ((*json)["config_groups"].size(), 2u);
  const nlohmann::json& channel = (*json)["config_groups"]["group_0"];
  const nlohmann::json& grouped = (*json)["config_groups"]["group_1"];
  EXPECT_EQ(channel["weights"]["strategy"], "channel");
  EXPECT_EQ(channel["targets"].size(), 39u);
  EXPECT_EQ(grouped["weights"]["strategy"], "group");
  EXPECT_EQ(grouped["weights"]["group_size"], 16);
  EXPECT_EQ(grouped["targets"], nlohmann::json::array({plan->layers[9].name}));
}

TEST(CompressedTensorsConfig, RejectsGroupThatDoesNotDivide) {
  absl::StatusOr<QuantPlan> plan = SelectPlan(SyntheticAnalysis(40, {{9, 0.09}}), QuantConfig{});
  ASSERT_TRUE(plan.ok()) << plan.status();
  plan->layers[9].group_size = 16;
  absl::StatusOr<nlohmann::json> json =
      CompressedTensorsConfig(*plan, {{plan->layers[9].name, 172}});
  ASSERT_FALSE(json.ok());
  EXPECT_THAT(std::string(json.status().message()), HasSubstr("172 inputs"));
  EXPECT_THAT(std::string(json.status().message()), HasSubstr("group size 16"));
}

}  // namespace
}  // namespace w8a8
