// The analyze, inject-outliers and quantize commands of the built `w8a8` tool, end to end on
// stories260K.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace w8a8 {
namespace {

using ::testing::HasSubstr;

using testing::CommandResult;

using testing::RunW8a8Tool;

class QuantCli : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(std::filesystem::exists(testing::W8a8Tool()))
        << "build the w8a8 target first: " << testing::W8a8Tool();
  }
  const std::string model_ = testing::Stories260KGguf().string();
  testing::TempDir dir_;
};

TEST_F(QuantCli, AnalyzeJsonListsEveryLinearLayer) {
  const CommandResult result = RunW8a8Tool("analyze --model " + model_ + " --json");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const nlohmann::json report = nlohmann::json::parse(result.output, nullptr, false);
  ASSERT_FALSE(report.is_discarded()) << result.output;
  ASSERT_EQ(report["layers"].size(), 35u);
  for (const nlohmann::json& layer : report["layers"]) {
    EXPECT_THAT(layer["name"].get<std::string>(), HasSubstr("model.layers."));
    EXPECT_EQ(layer["scheme"], "per-channel") << layer["name"];
    EXPECT_TRUE(layer["per_channel"]["relative_error"].is_number()) << layer["name"];
    EXPECT_TRUE(layer["kurtosis"].is_number()) << layer["name"];
  }
}

TEST_F(QuantCli, OutliersAreFoundAndQuantized) {
  const std::string modified = (dir_ / "modified").string();
  const CommandResult injected =
      RunW8a8Tool("inject-outliers --model " + model_ + " --out " + modified +
                  " --layers model.layers.1.mlp.down_proj --factor 100 --seed 5");
  ASSERT_EQ(injected.exit_code, 0) << injected.output;

  testing::WriteFile(dir_ / "g4.yaml", "group_size: 4\n");
  const std::string config = (dir_ / "g4.yaml").string();
  const CommandResult analyzed =
      RunW8a8Tool("analyze --model " + modified + " --json --config " + config);
  ASSERT_EQ(analyzed.exit_code, 0) << analyzed.output;
  const nlohmann::json report = nlohmann::json::parse(analyzed.output, nullptr, false);
  ASSERT_FALSE(report.is_discarded()) << analyzed.output;
  for (const nlohmann::json& layer : report["layers"]) {
    const bool injected_layer = layer["name"] == "model.layers.1.mlp.down_proj";
    EXPECT_EQ(layer["scheme"], injected_layer ? "per-group" : "per-channel") << layer["name"];
  }

  const std::string quantized = (dir_ / "quantized").string();
  const CommandResult written =
      RunW8a8Tool("quantize --model " + modified + " --plan " + config + " --out " + quantized);
  ASSERT_EQ(written.exit_code, 0) << written.output;
  EXPECT_THAT(written.output, HasSubstr("34 per-channel, 1 per-group"));
  const nlohmann::json stored =
      nlohmann::json::parse(testing::ReadFile(dir_ / "quantized" / "config.json"));
  EXPECT_EQ(stored["quantization_config"]["quant_method"], "compressed-tensors");
  EXPECT_EQ(stored["quantization_config"]["config_groups"].size(), 2u);
  EXPECT_TRUE(stored.contains("w8a8_synthetic"));
}

TEST_F(QuantCli, InvalidArgumentsExitWithMessage) {
  const CommandResult no_plan =
      RunW8a8Tool("quantize --model " + model_ + " --out " + (dir_ / "x").string());
  EXPECT_EQ(no_plan.exit_code, 1);
  EXPECT_THAT(no_plan.output, HasSubstr("--plan is missing"));

  const CommandResult too_many = RunW8a8Tool("inject-outliers --model " + model_ + " --out " +
                                             (dir_ / "y").string() + " --layers 3");
  EXPECT_EQ(too_many.exit_code, 1);
  EXPECT_THAT(too_many.output, HasSubstr("at most 1 of the model's 35 linear layers"));

  testing::WriteFile(dir_ / "bad.yaml", "group_size: 0\n");
  const CommandResult bad_config =
      RunW8a8Tool("analyze --model " + model_ + " --config " + (dir_ / "bad.yaml").string());
  EXPECT_EQ(bad_config.exit_code, 1);
  EXPECT_THAT(bad_config.output, HasSubstr("invalid group_size 0"));
}

}  // namespace
}  // namespace w8a8
