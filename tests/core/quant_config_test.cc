// Parsing and validation of quantization config files, JSON and YAML.
#include <string>

#include "core/quantization.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace w8a8 {
namespace {

using ::testing::HasSubstr;

TEST(QuantConfig, EmptyTextGivesDefaults) {
  absl::StatusOr<QuantConfig> config = ParseQuantConfig("", "empty.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->scheme.has_value());
  EXPECT_EQ(config->group_size, 128);
  EXPECT_EQ(config->activations, ActivationScheme::kPerToken);
  EXPECT_FALSE(config->quantize_lm_head);
  EXPECT_DOUBLE_EQ(config->thresholds.outlier_z, 3.5);
  EXPECT_DOUBLE_EQ(config->thresholds.min_error_ratio, 2.0);
  EXPECT_DOUBLE_EQ(config->thresholds.max_per_group_fraction, 0.03);
  EXPECT_TRUE(config->overrides.empty());
}

TEST(QuantConfig, ParsesEveryKeyFromJson) {
  const std::string text = R"({
    "scheme": "per-channel",
    "group_size": 64,
    "activations": "per-tensor",
    "quantize_lm_head": true,
    "thresholds": {"outlier_z": 5, "min_error_ratio": 3.5, "max_per_group_fraction": 0.1},
    "overrides": [
      {"pattern": "model\\.layers\\.0\\..*", "scheme": "fp"},
      {"pattern": ".*down_proj", "scheme": "per-group", "group_size": 32}
    ]
  })";
  absl::StatusOr<QuantConfig> config = ParseQuantConfig(text, "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_TRUE(config->scheme.has_value());
  EXPECT_EQ(*config->scheme, WeightScheme::kPerChannel);
  EXPECT_EQ(config->group_size, 64);
  EXPECT_EQ(config->activations, ActivationScheme::kPerTensor);
  EXPECT_TRUE(config->quantize_lm_head);
  EXPECT_DOUBLE_EQ(config->thresholds.outlier_z, 5.0);
  EXPECT_DOUBLE_EQ(config->thresholds.min_error_ratio, 3.5);
  EXPECT_DOUBLE_EQ(config->thresholds.max_per_group_fraction, 0.1);
  ASSERT_EQ(config->overrides.size(), 2u);
  EXPECT_EQ(config->overrides[0].pattern, "model\\.layers\\.0\\..*");
  EXPECT_EQ(config->overrides[0].scheme, WeightScheme::kFp);
  EXPECT_FALSE(config->overrides[0].group_size.has_value());
  EXPECT_EQ(config->overrides[1].scheme, WeightScheme::kPerGroup);
  ASSERT_TRUE(config->overrides[1].group_size.has_value());
  EXPECT_EQ(*config->overrides[1].group_size, 32);
}

TEST(QuantConfig, ParsesYaml) {
  const std::string text =
      "scheme: auto\n"
      "group_size: 16\n"
      "overrides:\n"
      "  - pattern: 'lm_head'\n"
      "    scheme: per-channel\n";
  absl::StatusOr<QuantConfig> config = ParseQuantConfig(text, "config.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->scheme.has_value());
  EXPECT_EQ(config->group_size, 16);
  ASSERT_EQ(config->overrides.size(), 1u);
  EXPECT_EQ(config->overrides[0].pattern, "lm_head");
  EXPECT_EQ(config->overrides[0].scheme, WeightScheme::kPerChannel);
}

TEST(QuantConfig, JsonRoundTripKeepsValues) {
  absl::StatusOr<QuantConfig> config = ParseQuantConfig(
      "scheme: per-group\ngroup_size: 32\noverrides: [{pattern: 'a.*', scheme: fp}]\n", "c.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<QuantConfig> again =
      ParseQuantConfig(QuantConfigToJson(*config).dump(), "again.json");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(QuantConfigToJson(*again), QuantConfigToJson(*config));
}

// Each invalid config and a fragment its error message must contain.
struct InvalidCase {
  const char* text;
  const char* message;
};

TEST(QuantConfig, RejectsInvalidConfigsNamingKeyAndValue) {
  const InvalidCase cases[] = {
      {"colour: blue", "unknown key 'colour'"},
      {"thresholds: {outlier: 3}", "unknown key 'thresholds.outlier'"},
      {"overrides: [{pattern: x, scheme: fp, bits: 4}]", "unknown key 'overrides[0].bits'"},
      {"scheme: per-row", "per-row"},
      {"scheme: [1, 2]", "key 'scheme' is a list"},
      {"group_size: 0", "invalid group_size 0"},
      {"group_size: -8", "invalid group_size -8"},
      {"group_size: 12.5", "key 'group_size' is '12.5', expected an integer"},
      {"group_size: many", "key 'group_size' is 'many'"},
      {"activations: per-channel", "invalid activation scheme 'per-channel'"},
      {"quantize_lm_head: maybe", "key 'quantize_lm_head' is 'maybe'"},
      {"thresholds: {outlier_z: 0}", "invalid thresholds.outlier_z 0"},
      {"thresholds: {min_error_ratio: 0.5}", "invalid thresholds.min_error_ratio 0.5"},
      {"thresholds: {max_per_group_fraction: 1.5}", "invalid thresholds.max_per_group_fraction 1.5"},
      {"thresholds: 3", "key 'thresholds' is '3', expected a map"},
      {"overrides: {pattern: x}", "key 'overrides' is a map, expected a list"},
      {"overrides: [{pattern: x}]", "overrides[0] needs both 'pattern' and 'scheme'"},
      {"overrides: [{pattern: '(unclosed', scheme: fp}]", "invalid overrides[0].pattern '(unclosed'"},
      {"overrides: [{pattern: x, scheme: per-group, group_size: 0}]",
       "invalid overrides[0].group_size 0"},
      {"overrides: [{pattern: x, scheme: per-channel, group_size: 32}]",
       "group_size applies to per-group only"},
      {"[1, 2, 3]", "expected a map of keys"},
      {"{\"scheme\": \"auto\"", "invalid JSON or YAML"},
      {"scheme: auto\n  bad indent: [", "invalid JSON or YAML"},
  };
  for (const InvalidCase& test_case : cases) {
    absl::StatusOr<QuantConfig> config = ParseQuantConfig(test_case.text, "bad.yaml");
    ASSERT_FALSE(config.ok()) << "accepted: " << test_case.text;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << test_case.text;
    EXPECT_THAT(std::string(config.status().message()), HasSubstr(test_case.message))
        << test_case.text;
    EXPECT_THAT(std::string(config.status().message()), HasSubstr("bad.yaml")) << test_case.text;
  }
}

TEST(QuantConfig, ReadsFileAndNamesMissingFile) {
  testing::TempDir dir;
  testing::WriteFile(dir / "quant.yaml", "scheme: per-tensor\nactivations: per-tensor\n");
  absl::StatusOr<QuantConfig> config = ReadQuantConfig(dir / "quant.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_TRUE(config->scheme.has_value());
  EXPECT_EQ(*config->scheme, WeightScheme::kPerTensor);
  EXPECT_EQ(config->activations, ActivationScheme::kPerTensor);

  absl::StatusOr<QuantConfig> missing = ReadQuantConfig(dir / "absent.yaml");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("absent.yaml"));
}

TEST(QuantConfig, SchemeNamesRoundTrip) {
  for (WeightScheme scheme : {WeightScheme::kFp, WeightScheme::kPerTensor,
                              WeightScheme::kPerChannel, WeightScheme::kPerGroup}) {
    absl::StatusOr<WeightScheme> parsed = ParseWeightScheme(WeightSchemeName(scheme));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, scheme);
  }
  absl::StatusOr<WeightScheme> fp32 = ParseWeightScheme("fp32");
  ASSERT_TRUE(fp32.ok());
  EXPECT_EQ(*fp32, WeightScheme::kFp);
  EXPECT_FALSE(ParseWeightScheme("int4").ok());
}

}  // namespace
}  // namespace w8a8
