// Hyperparameters of a LLaMA-family model and its generation defaults.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"

namespace w8a8 {

// `rope_scaling` of type "llama3" (Llama 3.1 and later): low frequencies are divided by
// `factor`, high ones kept, and the band between is interpolated smoothly.
struct Llama3RopeScaling {
  double factor = 8.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string architecture = "LlamaForCausalLM";
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;  // hidden_size / num_attention_heads unless config.json sets it.
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  std::optional<Llama3RopeScaling> rope_scaling;
  bool tie_word_embeddings = false;
  int32_t bos_token_id = 1;
  std::vector<int32_t> eos_token_ids;  // Every id that ends generation.
  std::string torch_dtype = "bfloat16";

  // Checks sizes, head counts and ids for consistency; the message names the key at fault.
  absl::Status Validate() const;
};

// Sampling defaults from generation_config.json; absent keys stay unset.
struct GenerationDefaults {
  std::optional<double> temperature;
  std::optional<double> top_p;
  std::optional<int64_t> top_k;
  std::optional<int64_t> max_new_tokens;
  std::optional<double> repetition_penalty;
  std::vector<int32_t> eos_token_ids;
};

// Parses a Hugging Face config.json; `source` names the file in error messages.
absl::StatusOr<ModelConfig> ParseHfConfig(const nlohmann::json& json, const std::string& source);
absl::StatusOr<ModelConfig> ReadHfConfig(const std::filesystem::path& config_json);
absl::StatusOr<GenerationDefaults> ReadGenerationConfig(const std::filesystem::path& path);
// Serializes `config` as a config.json of LlamaForCausalLM that Transformers reads.
nlohmann::json ToHfConfigJson(const ModelConfig& config);

}  // namespace w8a8
