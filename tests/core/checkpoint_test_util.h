// Tiny LLaMA checkpoints written by the loader tests: the same random weights as a Hugging Face
// directory (one safetensors file or shards) or as a GGUF file.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/checkpoint.h"
#include "core/gguf.h"
#include "core/model_config.h"
#include "core/safetensors.h"
#include "core/tensor.h"
#include "nlohmann/json.hpp"

namespace w8a8::testing {

// hidden 8, 2 layers, 4 heads of size 2, 2 key/value heads, intermediate 12, vocab 32.
inline ModelConfig TinyConfig() {
  ModelConfig config;
  config.hidden_size = 8;
  config.intermediate_size = 12;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;
  config.head_dim = 2;
  config.vocab_size = 32;
  config.max_position_embeddings = 64;
  config.bos_token_id = 1;
  config.eos_token_ids = {2};
  return config;
}

struct FloatTensor {
  std::vector<int64_t> shape;
  std::vector<float> values;
};

// Every tensor a LLaMA model with `config` needs, by Hugging Face name, with values drawn
// from `seed`.
inline std::map<std::string, FloatTensor> TinyWeights(const ModelConfig& config,
                                                      uint32_t seed = 7) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::map<std::string, FloatTensor> tensors;
  const auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    int64_t count = 1;
    for (int64_t dim : shape) count *= dim;
    FloatTensor tensor{std::move(shape), std::vector<float>(static_cast<size_t>(count))};
    for (float& v : tensor.values) v = uniform(rng);
    tensors[name] = std::move(tensor);
  };
  const int64_t h = config.hidden_size;
  const int64_t q = config.num_attention_heads * config.head_dim;
  const int64_t kv = config.num_key_value_heads * config.head_dim;
  const int64_t f = config.intermediate_size;
  add("model.embed_tokens.weight", {config.vocab_size, h});
  add("model.norm.weight", {h});
  if (!config.tie_word_embeddings) add("lm_head.weight", {config.vocab_size, h});
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    add(p + "input_layernorm.weight", {h});
    add(p + "post_attention_layernorm.weight", {h});
    add(p + "self_attn.q_proj.weight", {q, h});
    add(p + "self_attn.k_proj.weight", {kv, h});
    add(p + "self_attn.v_proj.weight", {kv, h});
    add(p + "self_attn.o_proj.weight", {h, q});
    add(p + "mlp.gate_proj.weight", {f, h});
    add(p + "mlp.up_proj.weight", {f, h});
    add(p + "mlp.down_proj.weight", {h, f});
  }
  return tensors;
}

// Encodes FP32 values as `dtype` (F32, F16, BF16 or Q8_0). Q8_0 takes blocks of 32
// consecutive values with scale max|x| / 127, so rows must be a multiple of 32 long.
inline std::vector<std::byte> Encode(const std::vector<float>& values, DType dtype) {
  std::vector<std::byte> bytes;
  if (dtype == DType::kQ8_0) {
    for (size_t block = 0; block < values.size(); block += 32) {
      float max_abs = 0;
      for (size_t i = block; i < block + 32; ++i) max_abs = std::max(max_abs, std::abs(values[i]));
      const float scale = max_abs / 127;
      const uint16_t scale_bits = FloatToHalf(scale);
      bytes.push_back(static_cast<std::byte>(scale_bits & 0xff));
      bytes.push_back(static_cast<std::byte>(scale_bits >> 8));
      for (size_t i = block; i < block + 32; ++i) {
        const float q = scale == 0 ? 0 : std::round(values[i] / scale);
        bytes.push_back(static_cast<std::byte>(static_cast<int8_t>(q)));
      }
    }
    return bytes;
  }
  if (dtype == DType::kF32) {
    bytes.resize(values.size() * 4);
    std::memcpy(bytes.data(), values.data(), bytes.size());
    return bytes;
  }
  bytes.resize(values.size() * 2);
  for (size_t i = 0; i < values.size(); ++i) {
    const uint16_t bits =
        dtype == DType::kF16 ? FloatToHalf(values[i]) : FloatToBFloat16(values[i]);
    std::memcpy(bytes.data() + 2 * i, &bits, 2);
  }
  return bytes;
}

// Rounds values through `dtype` and back, as a reader of that dtype returns them.
inline std::vector<float> RoundTrip(const std::vector<float>& values, DType dtype) {
  std::vector<float> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::kF32) {
      out[i] = values[i];
    } else if (dtype == DType::kF16) {
      out[i] = HalfToFloat(FloatToHalf(values[i]));
    } else {
      out[i] = BFloat16ToFloat(FloatToBFloat16(values[i]));
    }
  }
  return out;
}

inline void WriteJson(const std::filesystem::path& path, const nlohmann::json& json) {
  std::ofstream(path) << json.dump(2);
}

// Writes `tensors` as a Hugging Face directory: config.json and either model.safetensors or
// `num_shards` shards with an index. Tensor i of the map gets dtype dtypes[i % size].
inline absl::Status WriteHfDirectory(const std::filesystem::path& dir, const ModelConfig& config,
                                     const std::map<std::string, FloatTensor>& tensors,
                                     const std::vector<DType>& dtypes = {DType::kF32},
                                     int num_shards = 1) {
  std::filesystem::create_directories(dir);
  WriteJson(dir / "config.json", ToHfConfigJson(config));
  std::vector<std::vector<TensorToWrite>> shards(num_shards);
  std::vector<std::vector<std::byte>> storage;
  storage.reserve(tensors.size());
  nlohmann::json weight_map = nlohmann::json::object();
  size_t i = 0;
  for (const auto& [name, tensor] : tensors) {
    const DType dtype = dtypes[i % dtypes.size()];
    storage.push_back(Encode(tensor.values, dtype));
    const int shard = static_cast<int>(i % num_shards);
    shards[shard].push_back({name, dtype, tensor.shape, storage.back()});
    weight_map[name] = "model-0000" + std::to_string(shard + 1) + "-of-0000" +
                       std::to_string(num_shards) + ".safetensors";
    ++i;
  }
  if (num_shards == 1) return WriteSafetensors(dir / "model.safetensors", shards[0]);
  for (int shard = 0; shard < num_shards; ++shard) {
    const std::string file = "model-0000" + std::to_string(shard + 1) + "-of-0000" +
                             std::to_string(num_shards) + ".safetensors";
    absl::Status status = WriteSafetensors(dir / file, shards[shard]);
    if (!status.ok()) return status;
  }
  WriteJson(dir / "model.safetensors.index.json",
            {{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}});
  return absl::OkStatus();
}

// Fills `writer` with the llama metadata of `config`, a tokenizer of vocab_size pieces and
// the tensors under their GGUF names, q_proj/k_proj rows permuted into GGUF's layout.
// `storage` receives the encoded tensor bytes, which must outlive the writer's output. With
// `linear_dtype` Q8_0, every 2-D tensor is stored as Q8_0.
inline absl::Status FillGgufWriter(GgufWriter& writer, const ModelConfig& config,
                                   const std::map<std::string, FloatTensor>& tensors,
                                   std::vector<std::vector<std::byte>>& storage,
                                   DType linear_dtype = DType::kF32) {
  writer.SetMetadata("general.architecture", GgufValue::String("llama"));
  writer.SetMetadata("llama.embedding_length", GgufValue::Uint32(config.hidden_size));
  writer.SetMetadata("llama.feed_forward_length", GgufValue::Uint32(config.intermediate_size));
  writer.SetMetadata("llama.block_count", GgufValue::Uint32(config.num_hidden_layers));
  writer.SetMetadata("llama.attention.head_count", GgufValue::Uint32(config.num_attention_heads));
  writer.SetMetadata("llama.attention.head_count_kv",
                     GgufValue::Uint32(config.num_key_value_heads));
  writer.SetMetadata("llama.attention.layer_norm_rms_epsilon",
                     GgufValue::Float32(static_cast<float>(config.rms_norm_eps)));
  writer.SetMetadata("llama.rope.freq_base", GgufValue::Float32(config.rope_theta));
  writer.SetMetadata("llama.context_length", GgufValue::Uint32(config.max_position_embeddings));
  writer.SetMetadata("llama.rope.dimension_count", GgufValue::Uint32(config.head_dim));
  std::vector<std::string> tokens;
  for (int64_t i = 0; i < config.vocab_size; ++i) tokens.push_back(absl::StrCat("t", i));
  writer.SetMetadata("tokenizer.ggml.model", GgufValue::String("llama"));
  writer.SetMetadata("tokenizer.ggml.tokens", GgufValue::StringArray(tokens));
  writer.SetMetadata("tokenizer.ggml.scores",
                     GgufValue::Float32Array(std::vector<float>(tokens.size(), 0.5f)));
  writer.SetMetadata("tokenizer.ggml.token_type",
                     GgufValue::Int32Array(std::vector<int32_t>(tokens.size(), 1)));
  writer.SetMetadata("tokenizer.ggml.bos_token_id", GgufValue::Uint32(config.bos_token_id));
  writer.SetMetadata("tokenizer.ggml.eos_token_id", GgufValue::Uint32(config.eos_token_ids[0]));

  storage.reserve(storage.size() + tensors.size());
  for (const auto& [name, tensor] : tensors) {
    std::vector<float> values = tensor.values;
    const bool is_q = name.find("q_proj") != std::string::npos;
    const bool is_k = name.find("k_proj") != std::string::npos;
    if (is_q || is_k) {
      absl::StatusOr<std::vector<float>> permuted = HfRotaryRowsToGguf(
          values, is_q ? config.num_attention_heads : config.num_key_value_heads,
          config.head_dim);
      if (!permuted.ok()) return permuted.status();
      values = *std::move(permuted);
    }
    const DType dtype = tensor.shape.size() == 2 ? linear_dtype : DType::kF32;
    storage.push_back(Encode(values, dtype));
    const std::optional<std::string> gguf_name = HfToGgufTensorName(name);
    if (!gguf_name.has_value()) return absl::InternalError(absl::StrCat("no GGUF name for ", name));
    absl::Status status = writer.AddTensor(*gguf_name, dtype, tensor.shape, storage.back());
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

}  // namespace w8a8::testing
