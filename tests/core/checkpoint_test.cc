#include "core/checkpoint.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>

#include "core/gguf.h"
#include "tests/core/checkpoint_test_util.h"
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

// stories260K.bin is the llama2.c export of the same model. llama2.c keeps Meta's interleaved
// rotary rows, as GGUF does, so its wq must come out of Tensor() permuted to the Hugging Face
// layout.
TEST(CheckpointGguf, Stories260KQueryRowsMatchTheLlama2cExport) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
      Checkpoint::Open(testing::Stories260KGguf());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const std::string bin = testing::ReadFile(testing::Stories260KDir() / "stories260K.bin");
  // Header of 7 int32, then token embeddings [512, 64], attention norms [5, 64], wq [5, 64, 64],
  // wk [5, 32, 64].
  const size_t wq_offset = 7 * 4 + (512 * 64 + 5 * 64) * 4;
  const size_t wk_offset = wq_offset + 5 * 64 * 64 * 4;
  ASSERT_GT(bin.size(), wk_offset + 5 * 32 * 64 * 4);
  for (int layer : {0, 4}) {
    std::vector<float> wq(64 * 64);
    std::memcpy(wq.data(), bin.data() + wq_offset + layer * 64 * 64 * 4, wq.size() * 4);
    std::vector<float> wk(32 * 64);
    std::memcpy(wk.data(), bin.data() + wk_offset + layer * 32 * 64 * 4, wk.size() * 4);
    absl::StatusOr<std::vector<float>> wq_hf = GgufRotaryRowsToHf(wq, 8, 8);
    absl::StatusOr<std::vector<float>> wk_hf = GgufRotaryRowsToHf(wk, 4, 8);
    ASSERT_TRUE(wq_hf.ok()) << wq_hf.status();
    ASSERT_TRUE(wk_hf.ok()) << wk_hf.status();
    const std::string prefix = "model.layers." + std::to_string(layer) + ".self_attn.";
    absl::StatusOr<std::vector<float>> q = (*checkpoint)->LoadFloat32(prefix + "q_proj.weight", {64, 64});
    absl::StatusOr<std::vector<float>> k = (*checkpoint)->LoadFloat32(prefix + "k_proj.weight", {32, 64});
    ASSERT_TRUE(q.ok()) << q.status();
    ASSERT_TRUE(k.ok()) << k.status();
    EXPECT_EQ(*q, *wq_hf) << layer;
    EXPECT_EQ(*k, *wk_hf) << layer;
    EXPECT_NE(*q, wq) << layer;  // The layouts differ, so the test can tell them apart.
  }
}

TEST(CheckpointGguf, LoadFloat32RejectsWrongShape) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
      Checkpoint::Open(testing::Stories260KGguf());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  absl::StatusOr<std::vector<float>> values =
      (*checkpoint)->LoadFloat32("model.norm.weight", {65});
  ASSERT_FALSE(values.ok());
  EXPECT_THAT(values.status().message(), HasSubstr("model.norm.weight"));
  EXPECT_THAT(values.status().message(), HasSubstr("[64]"));
  EXPECT_THAT(values.status().message(), HasSubstr("[65]"));
  EXPECT_EQ((*checkpoint)->Tensor("model.missing.weight").status().code(),
            absl::StatusCode::kNotFound);
}

// Writes the tiny model as GGUF after `edit` adjusts the writer.
absl::StatusOr<std::unique_ptr<Checkpoint>> OpenTinyGguf(
    const testing::TempDir& dir, const ModelConfig& config,
    const std::map<std::string, testing::FloatTensor>& weights,
    const std::function<void(GgufWriter&)>& edit = nullptr) {
  GgufWriter writer;
  std::vector<std::vector<std::byte>> storage;
  absl::Status status = testing::FillGgufWriter(writer, config, weights, storage);
  if (!status.ok()) return status;
  if (edit) edit(writer);
  status = writer.WriteFile(dir / "tiny.gguf");
  if (!status.ok()) return status;
  return Checkpoint::Open(dir / "tiny.gguf");
}

TEST(CheckpointGguf, WrittenModelReturnsHfLayoutWeights) {
  testing::TempDir dir;
  const ModelConfig config = testing::TinyConfig();
  const auto weights = testing::TinyWeights(config);
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = OpenTinyGguf(dir, config, weights);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ((*checkpoint)->config().num_key_value_heads, 2);
  EXPECT_FALSE((*checkpoint)->config().tie_word_embeddings);
  ASSERT_EQ((*checkpoint)->TensorNames().size(), weights.size());
  for (const auto& [name, tensor] : weights) {
    absl::StatusOr<std::vector<float>> loaded = (*checkpoint)->LoadFloat32(name, tensor.shape);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(*loaded, tensor.values) << name;
  }
  // A second request returns the same permuted buffer.
  absl::StatusOr<TensorView> first = (*checkpoint)->Tensor("model.layers.1.self_attn.k_proj.weight");
  absl::StatusOr<TensorView> second = (*checkpoint)->Tensor("model.layers.1.self_attn.k_proj.weight");
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(first->data, second->data);
}

// Q8_0 q_proj/k_proj rows are dequantized and permuted; other Q8_0 tensors stay as stored.
TEST(CheckpointGguf, Q8_0WeightsLoadInHfLayout) {
  testing::TempDir dir;
  ModelConfig config = testing::TinyConfig();
  config.hidden_size = 32;
  config.intermediate_size = 64;
  config.head_dim = 8;
  const auto weights = testing::TinyWeights(config);
  GgufWriter writer;
  std::vector<std::vector<std::byte>> storage;
  ASSERT_TRUE(testing::FillGgufWriter(writer, config, weights, storage, DType::kQ8_0).ok());
  ASSERT_TRUE(writer.WriteFile(dir / "q8.gguf").ok());
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(dir / "q8.gguf");
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();

  for (const std::string name : {"model.layers.0.self_attn.q_proj.weight",
                                 "model.layers.1.self_attn.k_proj.weight",
                                 "model.layers.0.mlp.down_proj.weight"}) {
    const testing::FloatTensor& original = weights.at(name);
    // Q8_0 blocks lie within rows, so quantizing the Hugging Face rows gives the same values
    // as quantizing the permuted rows and permuting back.
    const std::vector<std::byte> encoded = testing::Encode(original.values, DType::kQ8_0);
    const TensorView expected_view{name, DType::kQ8_0, original.shape, encoded.data(),
                                   encoded.size()};
    absl::StatusOr<std::vector<float>> expected = ToFloat32(expected_view);
    ASSERT_TRUE(expected.ok()) << expected.status();
    absl::StatusOr<std::vector<float>> loaded = (*checkpoint)->LoadFloat32(name, original.shape);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(*loaded, *expected) << name;
  }
  absl::StatusOr<TensorView> q = (*checkpoint)->Tensor("model.layers.0.self_attn.q_proj.weight");
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->dtype, DType::kF32);
  absl::StatusOr<TensorView> down = (*checkpoint)->Tensor("model.layers.0.mlp.down_proj.weight");
  ASSERT_TRUE(down.ok()) << down.status();
  EXPECT_EQ(down->dtype, DType::kQ8_0);
  EXPECT_EQ((*checkpoint)->config().torch_dtype, "bfloat16");
}

TEST(CheckpointGguf, MissingOutputMeansTiedEmbeddings) {
  testing::TempDir dir;
  ModelConfig config = testing::TinyConfig();
  config.tie_word_embeddings = true;
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
      OpenTinyGguf(dir, config, testing::TinyWeights(config));
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_TRUE((*checkpoint)->config().tie_word_embeddings);
  EXPECT_FALSE((*checkpoint)->HasTensor("lm_head.weight"));
  EXPECT_EQ((*checkpoint)->raw_config()["tie_word_embeddings"], true);
}

TEST(CheckpointGguf, RopeFrequencyFactorsAreExposed) {
  testing::TempDir dir;
  const ModelConfig config = testing::TinyConfig();
  const std::vector<float> factors = {1.0f};  // head_dim / 2 = 1 entry.
  const std::vector<std::byte> bytes(reinterpret_cast<const std::byte*>(factors.data()),
                                     reinterpret_cast<const std::byte*>(factors.data()) + 4);
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
      OpenTinyGguf(dir, config, testing::TinyWeights(config), [&](GgufWriter& writer) {
        ASSERT_TRUE(writer.AddTensor("rope_freqs.weight", DType::kF32, {1}, bytes).ok());
      });
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  ASSERT_TRUE((*checkpoint)->rope_frequency_factors().has_value());
  EXPECT_EQ((*checkpoint)->rope_frequency_factors()->shape, std::vector<int64_t>{1});
  EXPECT_TRUE((*checkpoint)->HasTensor("rope_freqs.weight"));
  absl::StatusOr<std::vector<float>> loaded = (*checkpoint)->LoadFloat32("rope_freqs.weight", {1});
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(*loaded, factors);
}

TEST(CheckpointGguf, BadMetadataIsRejectedByKey) {
  testing::TempDir dir;
  const ModelConfig config = testing::TinyConfig();
  const auto weights = testing::TinyWeights(config);
  struct Case {
    const char* label;
    std::function<void(GgufWriter&)> edit;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"architecture",
       [](GgufWriter& w) { w.SetMetadata("general.architecture", GgufValue::String("falcon")); },
       "'falcon'"},
      {"kv heads",
       [](GgufWriter& w) { w.SetMetadata("llama.attention.head_count_kv", GgufValue::Uint32(3)); },
       "num_key_value_heads 3"},
      {"missing key",
       [](GgufWriter& w) {
         w.SetMetadata("llama.block_count", GgufValue::String("two"));
       },
       "llama.block_count"},
      {"extra layer",
       [](GgufWriter& w) { w.SetMetadata("llama.block_count", GgufValue::Uint32(3)); },
       "model.layers.2.input_layernorm.weight"},
      {"fewer layers",
       [](GgufWriter& w) { w.SetMetadata("llama.block_count", GgufValue::Uint32(1)); },
       "unexpected tensor"},
      {"rope dims",
       [](GgufWriter& w) { w.SetMetadata("llama.rope.dimension_count", GgufValue::Uint32(4)); },
       "partial rotary"},
      {"eos id",
       [](GgufWriter& w) { w.SetMetadata("tokenizer.ggml.eos_token_id", GgufValue::Uint32(99)); },
       "tokenizer.ggml.eos_token_id"},
      {"unknown tensor",
       [](GgufWriter& w) {
         static const std::vector<std::byte> bytes(4);
         ASSERT_TRUE(w.AddTensor("blk.0.attn_q.bias", DType::kF32, {1}, bytes).ok());
       },
       "blk.0.attn_q.bias"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
        OpenTinyGguf(dir, config, weights, c.edit);
    ASSERT_FALSE(checkpoint.ok()) << c.label;
    EXPECT_THAT(checkpoint.status().message(), HasSubstr(c.message)) << c.label;
    EXPECT_THAT(checkpoint.status().message(), HasSubstr("tiny.gguf")) << c.label;
  }
}

TEST(CheckpointHf, ShardedMixedDTypesLoadAndMatch) {
  testing::TempDir dir;
  const ModelConfig config = testing::TinyConfig();
  const auto weights = testing::TinyWeights(config);
  const std::vector<DType> dtypes = {DType::kF32, DType::kF16, DType::kBF16};
  ASSERT_TRUE(testing::WriteHfDirectory(dir.path(), config, weights, dtypes, 3).ok());
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(dir.path());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ((*checkpoint)->format(), "safetensors");
  EXPECT_EQ((*checkpoint)->config().hidden_size, 8);
  EXPECT_EQ((*checkpoint)->TensorNames().size(), weights.size());
  EXPECT_FALSE((*checkpoint)->quantization_config().has_value());
  size_t i = 0;
  for (const auto& [name, tensor] : weights) {
    const DType dtype = dtypes[i++ % dtypes.size()];
    absl::StatusOr<TensorView> view = (*checkpoint)->Tensor(name);
    ASSERT_TRUE(view.ok()) << view.status();
    EXPECT_EQ(view->dtype, dtype) << name;
    absl::StatusOr<std::vector<float>> loaded = (*checkpoint)->LoadFloat32(name, tensor.shape);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(*loaded, testing::RoundTrip(tensor.values, dtype)) << name;
  }
}

TEST(CheckpointHf, SingleFileWithSidecarFiles) {
  testing::TempDir dir;
  ModelConfig config = testing::TinyConfig();
  config.tie_word_embeddings = true;
  ASSERT_TRUE(testing::WriteHfDirectory(dir.path(), config, testing::TinyWeights(config)).ok());
  testing::WriteFile(dir / "tokenizer.model", "spm");
  testing::WriteJson(dir / "generation_config.json",
                     {{"temperature", 0.6}, {"top_p", 0.9}, {"eos_token_id", {2, 3}}});
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(dir.path());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_TRUE((*checkpoint)->config().tie_word_embeddings);
  EXPECT_EQ((*checkpoint)->tokenizer_source().sentencepiece_model, dir / "tokenizer.model");
  EXPECT_FALSE((*checkpoint)->tokenizer_source().tokenizer_json.has_value());
  EXPECT_EQ((*checkpoint)->generation_defaults().temperature, 0.6);
  EXPECT_EQ((*checkpoint)->generation_defaults().eos_token_ids, (std::vector<int32_t>{2, 3}));
  EXPECT_EQ((*checkpoint)->raw_config()["hidden_size"], 8);

  testing::WriteFile(dir / "tokenizer.json", "{}");
  checkpoint = Checkpoint::Open(dir.path());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ((*checkpoint)->tokenizer_source().tokenizer_json, dir / "tokenizer.json");
  EXPECT_FALSE((*checkpoint)->tokenizer_source().sentencepiece_model.has_value());
}

TEST(CheckpointHf, TensorSetErrorsNameTheTensor) {
  const ModelConfig config = testing::TinyConfig();
  struct Case {
    const char* label;
    std::function<void(std::map<std::string, testing::FloatTensor>&)> edit;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"missing", [](auto& w) { w.erase("model.layers.1.mlp.up_proj.weight"); },
       "'model.layers.1.mlp.up_proj.weight' is missing"},
      {"missing lm_head", [](auto& w) { w.erase("lm_head.weight"); }, "'lm_head.weight'"},
      {"extra", [](auto& w) { w["model.layers.2.mlp.up_proj.weight"] = {{12, 8}, std::vector<float>(96)}; },
       "unexpected tensor(s) for a LLaMA model with 2 layers: 'model.layers.2.mlp.up_proj.weight'"},
      {"scale without quantization", [](auto& w) { w["model.layers.0.mlp.up_proj.weight_scale"] = {{12, 1}, std::vector<float>(12)}; },
       "'model.layers.0.mlp.up_proj.weight_scale'"},
      {"shape", [](auto& w) { w["model.layers.0.self_attn.k_proj.weight"] = {{8, 8}, std::vector<float>(64)}; },
       "'model.layers.0.self_attn.k_proj.weight' has shape [8, 8]"},
  };
  for (const Case& c : cases) {
    testing::TempDir dir;
    auto weights = testing::TinyWeights(config);
    c.edit(weights);
    ASSERT_TRUE(testing::WriteHfDirectory(dir.path(), config, weights).ok()) << c.label;
    absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(dir.path());
    ASSERT_FALSE(checkpoint.ok()) << c.label;
    EXPECT_THAT(checkpoint.status().message(), HasSubstr(c.message)) << c.label;
  }
}

// compressed-tensors checkpoints: I8 linear weights with F32 weight_scale tensors.
TEST(CheckpointHf, Int8WeightsNeedAQuantizationConfig) {
  testing::TempDir dir;
  const ModelConfig config = testing::TinyConfig();
  const auto weights = testing::TinyWeights(config);
  std::vector<std::vector<std::byte>> storage;
  storage.reserve(weights.size() * 2);
  std::vector<TensorToWrite> tensors;
  for (const auto& [name, tensor] : weights) {
    const bool linear = tensor.shape.size() == 2 && name != "model.embed_tokens.weight";
    if (!linear) {
      storage.push_back(testing::Encode(tensor.values, DType::kF32));
      tensors.push_back({name, DType::kF32, tensor.shape, storage.back()});
      continue;
    }
    storage.emplace_back(tensor.values.size());
    for (size_t i = 0; i < tensor.values.size(); ++i) {
      storage.back()[i] = static_cast<std::byte>(static_cast<int8_t>(tensor.values[i] * 127));
    }
    tensors.push_back({name, DType::kI8, tensor.shape, storage.back()});
    const std::string base = name.substr(0, name.size() - std::string(".weight").size());
    storage.push_back(testing::Encode(std::vector<float>(tensor.shape[0], 1.0f / 127), DType::kF32));
    tensors.push_back({base + ".weight_scale", DType::kF32, {tensor.shape[0], 1}, storage.back()});
  }
  ASSERT_TRUE(WriteSafetensors(dir / "model.safetensors", tensors).ok());
  nlohmann::json json = ToHfConfigJson(config);
  testing::WriteJson(dir / "config.json", json);
  absl::StatusOr<std::unique_ptr<Checkpoint>> plain = Checkpoint::Open(dir.path());
  ASSERT_FALSE(plain.ok());
  EXPECT_THAT(plain.status().message(), HasSubstr("dtype I8"));

  json["quantization_config"] = {{"quant_method", "compressed-tensors"}, {"format", "int-quantized"}};
  testing::WriteJson(dir / "config.json", json);
  absl::StatusOr<std::unique_ptr<Checkpoint>> quantized = Checkpoint::Open(dir.path());
  ASSERT_TRUE(quantized.ok()) << quantized.status();
  ASSERT_TRUE((*quantized)->quantization_config().has_value());
  EXPECT_EQ((*(*quantized)->quantization_config())["quant_method"], "compressed-tensors");
  absl::StatusOr<TensorView> weight = (*quantized)->Tensor("model.layers.0.mlp.down_proj.weight");
  ASSERT_TRUE(weight.ok());
  EXPECT_EQ(weight->dtype, DType::kI8);
  EXPECT_TRUE((*quantized)->HasTensor("model.layers.0.mlp.down_proj.weight_scale"));
  EXPECT_FALSE((*quantized)->LoadFloat32("model.layers.0.mlp.down_proj.weight", {8, 12}).ok());
}

TEST(CheckpointHf, BadShardIndexIsRejected) {
  const ModelConfig config = testing::TinyConfig();
  const auto weights = testing::TinyWeights(config);
  {
    testing::TempDir dir;
    ASSERT_TRUE(testing::WriteHfDirectory(dir.path(), config, weights, {DType::kF32}, 2).ok());
    std::filesystem::remove(dir / "model-00002-of-00002.safetensors");
    absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(dir.path());
    ASSERT_FALSE(checkpoint.ok());
    EXPECT_THAT(checkpoint.status().message(), HasSubstr("model-00002-of-00002.safetensors"));
  }
  {
    testing::TempDir dir;
    ASSERT_TRUE(testing::WriteHfDirectory(dir.path(), config, weights, {DType::kF32}, 2).ok());
    testing::WriteJson(dir / "model.safetensors.index.json",
                       {{"weight_map", {{"model.norm.weight", "../model.safetensors"}}}});
    absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(dir.path());
    ASSERT_FALSE(checkpoint.ok());
    EXPECT_THAT(checkpoint.status().message(), HasSubstr("not a file name inside"));
  }
  {
    testing::TempDir dir;
    ASSERT_TRUE(testing::WriteHfDirectory(dir.path(), config, weights, {DType::kF32}, 2).ok());
    nlohmann::json index;
    std::ifstream(dir / "model.safetensors.index.json") >> index;
    index["weight_map"].erase("model.norm.weight");
    testing::WriteJson(dir / "model.safetensors.index.json", index);
    absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(dir.path());
    ASSERT_FALSE(checkpoint.ok());
    EXPECT_THAT(checkpoint.status().message(), HasSubstr("'model.norm.weight' is not listed"));
  }
}

TEST(CheckpointOpen, MissingOrForeignPathsAreRejected) {
  testing::TempDir dir;
  EXPECT_EQ(Checkpoint::Open(dir / "nothing").status().code(), absl::StatusCode::kNotFound);
  absl::StatusOr<std::unique_ptr<Checkpoint>> empty_dir = Checkpoint::Open(dir.path());
  ASSERT_FALSE(empty_dir.ok());
  EXPECT_THAT(empty_dir.status().message(), HasSubstr("config.json"));
  testing::WriteFile(dir / "notes.txt", "hello");
  absl::StatusOr<std::unique_ptr<Checkpoint>> text = Checkpoint::Open(dir / "notes.txt");
  ASSERT_FALSE(text.ok());
  EXPECT_THAT(text.status().message(), HasSubstr("notes.txt"));
  testing::WriteFile(dir / "empty.gguf", "");
  EXPECT_FALSE(Checkpoint::Open(dir / "empty.gguf").ok());
  testing::WriteFile(dir / "config.json", "{\"hidden_size\": ");
  absl::StatusOr<std::unique_ptr<Checkpoint>> truncated_config = Checkpoint::Open(dir.path());
  ASSERT_FALSE(truncated_config.ok());
  EXPECT_THAT(truncated_config.status().message(), HasSubstr("config.json"));
}

TEST(CheckpointHf, TruncatedOrFlippedSafetensorsFailCleanly) {
  testing::TempDir dir;
  const ModelConfig config = testing::TinyConfig();
  ASSERT_TRUE(testing::WriteHfDirectory(dir.path(), config, testing::TinyWeights(config)).ok());
  const auto path = dir / "model.safetensors";
  const std::string bytes = testing::ReadFile(path);
  uint64_t header_length = 0;
  std::memcpy(&header_length, bytes.data(), 8);
  const size_t data_start = 8 + header_length;
  ASSERT_LT(data_start, bytes.size());

  // Every 7th header byte here, because each case writes a file; safetensors_test.cc parses
  // every truncation of the same layout in memory.
  std::vector<size_t> lengths;
  for (size_t length = 0; length <= data_start; length += 7) lengths.push_back(length);
  for (size_t length = data_start + 1; length < bytes.size(); length += 61) {
    lengths.push_back(length);
  }
  for (size_t length : lengths) {
    testing::WriteFile(path, bytes.substr(0, length));
    absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(dir.path());
    ASSERT_FALSE(checkpoint.ok()) << "length " << length;
    ASSERT_THAT(checkpoint.status().message(), HasSubstr("model.safetensors")) << length;
  }

  std::string flipped = bytes;
  std::vector<size_t> positions;
  for (size_t i = 0; i < data_start; i += 5) positions.push_back(i);
  for (size_t i = data_start; i < bytes.size(); i += 37) positions.push_back(i);
  for (size_t i : positions) {
    flipped[i] = static_cast<char>(flipped[i] ^ 0x21);
    testing::WriteFile(path, flipped);
    absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(dir.path());
    if (i >= data_start) {
      ASSERT_TRUE(checkpoint.ok()) << "byte " << i << ": " << checkpoint.status();
    } else if (checkpoint.ok()) {
      for (const std::string& name : (*checkpoint)->TensorNames()) {
        ASSERT_TRUE((*checkpoint)->Tensor(name).ok()) << name;
      }
    } else {
      ASSERT_THAT(checkpoint.status().message(), HasSubstr(dir.path().string())) << i;
    }
    flipped[i] = bytes[i];
  }
}

}  // namespace
}  // namespace w8a8
