#include "core/model_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <functional>

#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace w8a8 {
namespace {

using ::testing::HasSubstr;
using nlohmann::json;

// The keys of Llama 3.1 8B's config.json.
json Llama31Config() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": false,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": false,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
      "factor": 8.0,
      "low_freq_factor": 1.0,
      "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192,
      "rope_type": "llama3"
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": false,
    "torch_dtype": "bfloat16",
    "use_cache": true,
    "vocab_size": 128256
  })");
}

TEST(ParseHfConfig, Llama31ConfigParses) {
  absl::StatusOr<ModelConfig> config = ParseHfConfig(Llama31Config(), "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, "LlamaForCausalLM");
  EXPECT_EQ(config->hidden_size, 4096);
  EXPECT_EQ(config->intermediate_size, 14336);
  EXPECT_EQ(config->num_hidden_layers, 32);
  EXPECT_EQ(config->num_attention_heads, 32);
  EXPECT_EQ(config->num_key_value_heads, 8);
  EXPECT_EQ(config->head_dim, 128);
  EXPECT_EQ(config->vocab_size, 128256);
  EXPECT_EQ(config->max_position_embeddings, 131072);
  EXPECT_EQ(config->rope_theta, 500000.0);
  EXPECT_EQ(config->rms_norm_eps, 1e-5);
  ASSERT_TRUE(config->rope_scaling.has_value());
  EXPECT_EQ(config->rope_scaling->factor, 8.0);
  EXPECT_EQ(config->rope_scaling->low_freq_factor, 1.0);
  EXPECT_EQ(config->rope_scaling->high_freq_factor, 4.0);
  EXPECT_EQ(config->rope_scaling->original_max_position_embeddings, 8192);
  EXPECT_EQ(config->bos_token_id, 128000);
  EXPECT_EQ(config->eos_token_ids, (std::vector<int32_t>{128001, 128008, 128009}));
  EXPECT_FALSE(config->tie_word_embeddings);
}

TEST(ParseHfConfig, Llama2DefaultsApply) {
  json object = Llama31Config();
  object.erase("num_key_value_heads");
  object.erase("rope_theta");
  object["rope_scaling"] = nullptr;
  object["eos_token_id"] = 2;
  object["bos_token_id"] = 1;
  object["vocab_size"] = 32000;
  absl::StatusOr<ModelConfig> config = ParseHfConfig(object, "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->num_key_value_heads, 32);
  EXPECT_EQ(config->rope_theta, 10000.0);
  EXPECT_FALSE(config->rope_scaling.has_value());
  EXPECT_EQ(config->eos_token_ids, std::vector<int32_t>{2});
}

TEST(ParseHfConfig, ExplicitHeadDimAndOldRopeTypeKey) {
  json object = Llama31Config();
  object["head_dim"] = 64;
  object["rope_scaling"].erase("rope_type");
  object["rope_scaling"]["type"] = "llama3";
  absl::StatusOr<ModelConfig> config = ParseHfConfig(object, "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->head_dim, 64);
  EXPECT_TRUE(config->rope_scaling.has_value());
}

struct BadConfigCase {
  const char* label;
  std::function<void(json&)> edit;
  const char* message;
};

TEST(ParseHfConfig, InvalidConfigsNameTheKey) {
  const std::vector<BadConfigCase> cases = {
      {"architecture", [](json& j) { j["architectures"] = {"MistralForCausalLM"}; },
       "'MistralForCausalLM' is not supported"},
      {"model type", [](json& j) { j.erase("architectures"); j["model_type"] = "gemma"; },
       "gemma"},
      {"rope linear", [](json& j) { j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}}; },
       "'linear'"},
      {"rope yarn", [](json& j) { j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 2.0}}; },
       "'yarn'"},
      {"missing hidden", [](json& j) { j.erase("hidden_size"); }, "'hidden_size' is missing"},
      {"string size", [](json& j) { j["intermediate_size"] = "big"; },
       "'intermediate_size' must be an integer"},
      {"float size", [](json& j) { j["num_hidden_layers"] = 2.5; }, "'num_hidden_layers'"},
      {"zero layers", [](json& j) { j["num_hidden_layers"] = 0; }, "'num_hidden_layers'"},
      {"kv heads", [](json& j) { j["num_key_value_heads"] = 5; }, "num_key_value_heads 5"},
      {"heads divide", [](json& j) { j["num_attention_heads"] = 30; }, "not divisible"},
      {"odd head dim", [](json& j) { j["head_dim"] = 127; }, "head_dim 127"},
      {"eos outside vocab", [](json& j) { j["eos_token_id"] = 200000; }, "eos_token_id 200000"},
      {"negative eos", [](json& j) { j["eos_token_id"] = {1, -1}; }, "'eos_token_id'"},
      {"bos list", [](json& j) { j["bos_token_id"] = {1, 2}; }, "'bos_token_id'"},
      {"eps", [](json& j) { j["rms_norm_eps"] = 0; }, "rms_norm_eps"},
      {"bias", [](json& j) { j["attention_bias"] = true; }, "'attention_bias'"},
      {"activation", [](json& j) { j["hidden_act"] = "gelu"; }, "'hidden_act'"},
      {"tie type", [](json& j) { j["tie_word_embeddings"] = "yes"; }, "'tie_word_embeddings'"},
      {"scaling factors", [](json& j) { j["rope_scaling"]["high_freq_factor"] = 0.5; },
       "high_freq_factor"},
      {"not an object", [](json& j) { j = json::array(); }, "JSON object"},
  };
  for (const BadConfigCase& c : cases) {
    json object = Llama31Config();
    c.edit(object);
    absl::StatusOr<ModelConfig> config = ParseHfConfig(object, "dir/config.json");
    ASSERT_FALSE(config.ok()) << c.label;
    EXPECT_THAT(config.status().message(), HasSubstr(c.message)) << c.label;
    EXPECT_THAT(config.status().message(), HasSubstr("dir/config.json")) << c.label;
  }
}

TEST(ModelConfigValidate, UnsetHeadDimFollowsHiddenSize) {
  ModelConfig config;
  config.hidden_size = 64;
  config.intermediate_size = 172;
  config.num_hidden_layers = 5;
  config.num_attention_heads = 8;
  config.num_key_value_heads = 4;
  config.vocab_size = 512;
  EXPECT_TRUE(config.Validate().ok());
  config.num_attention_heads = 6;  // 64 / 6 is not whole.
  config.num_key_value_heads = 3;
  EXPECT_FALSE(config.Validate().ok());
  config.head_dim = 10;
  EXPECT_TRUE(config.Validate().ok()) << config.Validate();
}

TEST(ToHfConfigJson, RoundTripsThroughTheParser) {
  absl::StatusOr<ModelConfig> original = ParseHfConfig(Llama31Config(), "config.json");
  ASSERT_TRUE(original.ok());
  const json written = ToHfConfigJson(*original);
  EXPECT_EQ(written["architectures"], json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(written["model_type"], "llama");
  EXPECT_EQ(written["rope_scaling"]["rope_type"], "llama3");
  EXPECT_EQ(written["eos_token_id"], json::array({128001, 128008, 128009}));
  absl::StatusOr<ModelConfig> parsed = ParseHfConfig(written, "written");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->hidden_size, original->hidden_size);
  EXPECT_EQ(parsed->num_key_value_heads, original->num_key_value_heads);
  EXPECT_EQ(parsed->head_dim, original->head_dim);
  EXPECT_EQ(parsed->rope_theta, original->rope_theta);
  EXPECT_EQ(parsed->rope_scaling->factor, original->rope_scaling->factor);
  EXPECT_EQ(parsed->eos_token_ids, original->eos_token_ids);
  EXPECT_EQ(parsed->max_position_embeddings, original->max_position_embeddings);

  ModelConfig single = *original;
  single.eos_token_ids = {7};
  single.rope_scaling.reset();
  EXPECT_EQ(ToHfConfigJson(single)["eos_token_id"], 7);
  EXPECT_TRUE(ToHfConfigJson(single)["rope_scaling"].is_null());
}

TEST(ReadHfConfig, FileErrorsNameThePath) {
  testing::TempDir dir;
  EXPECT_EQ(ReadHfConfig(dir / "config.json").status().code(), absl::StatusCode::kNotFound);
  testing::WriteFile(dir / "config.json", "{\"hidden_size\": 8,");
  absl::StatusOr<ModelConfig> truncated = ReadHfConfig(dir / "config.json");
  ASSERT_FALSE(truncated.ok());
  EXPECT_THAT(truncated.status().message(), HasSubstr("not valid JSON"));
  testing::WriteFile(dir / "config.json", Llama31Config().dump());
  EXPECT_TRUE(ReadHfConfig(dir / "config.json").ok());
}

TEST(ReadGenerationConfig, OptionalKeysStayUnset) {
  testing::TempDir dir;
  testing::WriteFile(dir / "generation_config.json",
                     R"({"bos_token_id": 1, "do_sample": true, "eos_token_id": [128001, 128009],
                         "temperature": 0.6, "top_p": 0.9})");
  absl::StatusOr<GenerationDefaults> defaults = ReadGenerationConfig(dir / "generation_config.json");
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->temperature, 0.6);
  EXPECT_EQ(defaults->top_p, 0.9);
  EXPECT_FALSE(defaults->top_k.has_value());
  EXPECT_FALSE(defaults->max_new_tokens.has_value());
  EXPECT_FALSE(defaults->repetition_penalty.has_value());
  EXPECT_EQ(defaults->eos_token_ids, (std::vector<int32_t>{128001, 128009}));

  testing::WriteFile(dir / "generation_config.json",
                     R"({"eos_token_id": 2, "top_k": 40, "max_new_tokens": 100})");
  defaults = ReadGenerationConfig(dir / "generation_config.json");
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->top_k, 40);
  EXPECT_EQ(defaults->max_new_tokens, 100);
  EXPECT_EQ(defaults->eos_token_ids, std::vector<int32_t>{2});

  testing::WriteFile(dir / "generation_config.json", R"({"top_k": "many"})");
  absl::StatusOr<GenerationDefaults> bad = ReadGenerationConfig(dir / "generation_config.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("'top_k'"));
}

}  // namespace
}  // namespace w8a8
