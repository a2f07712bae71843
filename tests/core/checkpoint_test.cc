#include "core/checkpoint.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

#include "core/gguf.h"
#include "tests/test_util.h"

namespace w8a8 {
namespace {

using ::testing::HasSubstr;

TEST(CheckpointGguf, Stories260KLoadsWithItsHyperparameters) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
      Checkpoint::Open(testing::Stories260KGguf());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const ModelConfig& config = (*checkpoint)->config();
  EXPECT_EQ((*checkpoint)->format(), "gguf");
  EXPECT_EQ(config.hidden_size, 64);
  EXPECT_EQ(config.intermediate_size, 172);
  EXPECT_EQ(config.num_hidden_layers, 5);
  EXPECT_EQ(config.num_attention_heads, 8);
  EXPECT_EQ(config.num_key_value_heads, 4);
  EXPECT_EQ(config.head_dim, 8);
  EXPECT_EQ(config.vocab_size, 512);
  EXPECT_EQ(config.max_position_embeddings, 2048);
  EXPECT_NEAR(config.rms_norm_eps, 1e-5, 1e-9);
  EXPECT_EQ(config.rope_theta, 10000.0);
  EXPECT_FALSE(config.tie_word_embeddings);
  EXPECT_EQ(config.bos_token_id, 1);
  EXPECT_EQ(config.eos_token_ids, std::vector<int32_t>{2});
  EXPECT_EQ(config.torch_dtype, "float32");
  EXPECT_EQ((*checkpoint)->TensorNames().size(), 2u + 5u * 9u + 1u);
}

TEST(CheckpointGguf, Stories260KTokenizerComesFromMetadata) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
      Checkpoint::Open(testing::Stories260KGguf());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const TokenizerSource& source = (*checkpoint)->tokenizer_source();
  ASSERT_TRUE(source.gguf.has_value());
  EXPECT_FALSE(source.tokenizer_json.has_value());
  EXPECT_FALSE(source.sentencepiece_model.has_value());
  const GgufTokenizerData& data = *source.gguf;
  EXPECT_EQ(data.model, "llama");
  ASSERT_EQ(data.tokens.size(), 512u);
  EXPECT_EQ(data.tokens[0], "<unk>");
  EXPECT_EQ(data.tokens[1], "<s>");
  EXPECT_EQ(data.tokens[3], "<0x00>");
  EXPECT_EQ(data.scores.size(), 512u);
  ASSERT_EQ(data.token_types.size(), 512u);
  EXPECT_EQ(data.token_types[0], 2);
  EXPECT_EQ(data.token_types[1], 3);
  EXPECT_EQ(data.token_types[3], 6);
  EXPECT_EQ(data.bos_token_id, 1);
  EXPECT_EQ(data.eos_token_id, 2);
  EXPECT_EQ(data.unknown_token_id, 0);
  EXPECT_FALSE(data.padding_token_id.has_value());  // Stored as 0xFFFFFFFF.
}

TEST(CheckpointGguf, Stories260KTensorsHaveHfNamesAndShapes) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
      Checkpoint::Open(testing::Stories260KGguf());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const Checkpoint& ckpt = **checkpoint;
  const std::pair<std::string, std::vector<int64_t>> expected[] = {
      {"model.embed_tokens.weight", {512, 64}},
      {"lm_head.weight", {512, 64}},
      {"model.norm.weight", {64}},
      {"model.layers.0.self_attn.q_proj.weight", {64, 64}},
      {"model.layers.4.self_attn.k_proj.weight", {32, 64}},
      {"model.layers.2.self_attn.v_proj.weight", {32, 64}},
      {"model.layers.1.self_attn.o_proj.weight", {64, 64}},
      {"model.layers.3.mlp.gate_proj.weight", {172, 64}},
      {"model.layers.3.mlp.up_proj.weight", {172, 64}},
      {"model.layers.3.mlp.down_proj.weight", {64, 172}},
      {"model.layers.0.input_layernorm.weight", {64}},
      {"model.layers.0.post_attention_layernorm.weight", {64}},
  };
  for (const auto& [name, shape] : expected) {
    absl::StatusOr<TensorView> tensor = ckpt.Tensor(name);
    ASSERT_TRUE(tensor.ok()) << tensor.status();
    EXPECT_EQ(tensor->shape, shape) << name;
    EXPECT_EQ(tensor->dtype, DType::kF32) << name;
    absl::StatusOr<std::vector<float>> values = ckpt.LoadFloat32(name, shape);
    ASSERT_TRUE(values.ok()) << values.status();
    for (float v : *values) ASSERT_TRUE(std::isfinite(v)) << name;
  }
  EXPECT_FALSE(ckpt.HasTensor("token_embd.weight"));
  EXPECT_FALSE(ckpt.rope_frequency_factors().has_value());
}

}  // namespace
}  // namespace w8a8
