#include "core/make_model.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <numbers>
#include <random>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/checkpoint.h"
#include "core/status_macros.h"
#include "nlohmann/json.hpp"

namespace w8a8 {
namespace {

constexpr double kWeightStd = 0.02;
// Elements drawn from one random stream; chunks are independent, so threads can share a tensor.
constexpr int64_t kChunkElements = int64_t{1} << 20;

ModelConfig Llama3Base() {
  ModelConfig config;
  config.vocab_size = 128256;
  config.rope_theta = 500000.0;
  config.rms_norm_eps = 1e-5;
  config.max_position_embeddings = 131072;
  config.bos_token_id = 128000;
  // <|end_of_text|>, <|eom_id|>, <|eot_id|> as in the Llama 3.1 and 3.2 instruct configs.
  config.eos_token_ids = {128001, 128008, 128009};
  config.torch_dtype = "bfloat16";
  return config;
}

struct TensorPlan {
  std::string name;
  std::vector<int64_t> shape;
  bool is_norm = false;

  int64_t num_elements() const {
    int64_t count = 1;
    for (const int64_t dim : shape) count *= dim;
    return count;
  }
};

// Every tensor of the checkpoint in the order Transformers saves them.
std::vector<TensorPlan> PlanTensors(const ModelConfig& config) {
  const int64_t hidden = config.hidden_size;
  const int64_t q_features = config.num_attention_heads * config.head_dim;
  const int64_t kv_features = config.num_key_value_heads * config.head_dim;
  std::vector<TensorPlan> plan;
  plan.push_back({"model.embed_tokens.weight", {config.vocab_size, hidden}});
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const std::string prefix = absl::StrCat("model.layers.", l, ".");
    plan.push_back({prefix + "input_layernorm.weight", {hidden}, true});
    plan.push_back({prefix + "self_attn.q_proj.weight", {q_features, hidden}});
    plan.push_back({prefix + "self_attn.k_proj.weight", {kv_features, hidden}});
    plan.push_back({prefix + "self_attn.v_proj.weight", {kv_features, hidden}});
    plan.push_back({prefix + "self_attn.o_proj.weight", {hidden, q_features}});
    plan.push_back({prefix + "post_attention_layernorm.weight", {hidden}, true});
    plan.push_back({prefix + "mlp.gate_proj.weight", {config.intermediate_size, hidden}});
    plan.push_back({prefix + "mlp.up_proj.weight", {config.intermediate_size, hidden}});
    plan.push_back({prefix + "mlp.down_proj.weight", {hidden, config.intermediate_size}});
  }
  plan.push_back({"model.norm.weight", {hidden}, true});
  if (!config.tie_word_embeddings) plan.push_back({"lm_head.weight", {config.vocab_size, hidden}});
  return plan;
}

// SplitMix64 finalizer: spreads (seed, tensor, chunk) over distinct generator seeds.
uint64_t MixSeed(uint64_t value) {
  value += 0x9e3779b97f4a7c15ULL;
  value = (value ^ (value >> 30)) * 0xbf58476d1ce4e5b9ULL;
  value = (value ^ (value >> 27)) * 0x94d049bb133111ebULL;
  return value ^ (value >> 31);
}

// BF16 values N(mean, kWeightStd^2) by the Box-Muller transform on 53-bit uniform doubles.
void FillNormalBf16(uint64_t seed, uint64_t tensor_index, double mean, uint16_t* out,
                    int64_t count) {
  const int64_t chunks = (count + kChunkElements - 1) / kChunkElements;
#pragma omp parallel for schedule(dynamic)
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    std::mt19937_64 rng(MixSeed(seed ^ MixSeed(tensor_index ^ MixSeed(static_cast<uint64_t>(chunk)))));
    const auto uniform = [&rng] { return static_cast<double>(rng() >> 11) * 0x1.0p-53; };
    const int64_t begin = chunk * kChunkElements;
    const int64_t end = std::min(count, begin + kChunkElements);
    for (int64_t i = begin; i < end; i += 2) {
      const double radius = std::sqrt(-2.0 * std::log(1.0 - uniform()));  // 1 - u is in (0, 1].
      const double angle = 2.0 * std::numbers::pi * uniform();
      out[i] = FloatToBFloat16(static_cast<float>(mean + kWeightStd * radius * std::cos(angle)));
      if (i + 1 < end) {
        out[i + 1] =
            FloatToBFloat16(static_cast<float>(mean + kWeightStd * radius * std::sin(angle)));
      }
    }
  }
}

absl::Status WriteJson(const std::filesystem::path& path, const nlohmann::json& json) {
  std::ofstream out(path);
  out << json.dump(2) << "\n";
  out.close();
  if (!out) {
    return absl::InternalError(absl::StrCat("Failed to write ", path.string(),
                                            "; check that the directory is writable."));
  }
  return absl::OkStatus();
}

absl::Status CopyTokenizer(const std::filesystem::path& tokenizer_json,
                           const std::filesystem::path& out_dir) {
  std::error_code error;
  std::filesystem::copy_file(tokenizer_json, out_dir / "tokenizer.json",
                             std::filesystem::copy_options::overwrite_existing, error);
  if (error) {
    return absl::NotFoundError(absl::StrCat("Failed to copy the tokenizer ",
                                            tokenizer_json.string(), " into ", out_dir.string(),
                                            ": ", error.message()));
  }
  const std::filesystem::path tokenizer_config =
      tokenizer_json.parent_path() / "tokenizer_config.json";
  if (std::filesystem::exists(tokenizer_config)) {
    std::filesystem::copy_file(tokenizer_config, out_dir / "tokenizer_config.json",
                               std::filesystem::copy_options::overwrite_existing, error);
    if (error) {
      return absl::InternalError(absl::StrCat("Failed to copy ", tokenizer_config.string(),
                                              " into ", out_dir.string(), ": ",
                                              error.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<std::string> PresetNames() { return {"llama-3.2-1b", "llama-3.1-8b", "llama3-tiny"}; }

absl::StatusOr<ModelConfig> PresetConfig(std::string_view name) {
  ModelConfig config = Llama3Base();
  if (name == "llama-3.2-1b") {
    config.hidden_size = 2048;
    config.intermediate_size = 8192;
    config.num_hidden_layers = 16;
    config.num_attention_heads = 32;
    config.num_key_value_heads = 8;
    config.head_dim = 64;
    config.rope_scaling = Llama3RopeScaling{32.0, 1.0, 4.0, 8192};
    config.tie_word_embeddings = true;
  } else if (name == "llama-3.1-8b") {
    config.hidden_size = 4096;
    config.intermediate_size = 14336;
    config.num_hidden_layers = 32;
    config.num_attention_heads = 32;
    config.num_key_value_heads = 8;
    config.head_dim = 128;
    config.rope_scaling = Llama3RopeScaling{8.0, 1.0, 4.0, 8192};
    config.tie_word_embeddings = false;
  } else if (name == "llama3-tiny") {
    config.hidden_size = 64;
    config.intermediate_size = 192;
    config.num_hidden_layers = 2;
    config.num_attention_heads = 4;
    config.num_key_value_heads = 2;
    config.head_dim = 16;
    config.rope_scaling = Llama3RopeScaling{32.0, 1.0, 4.0, 8192};
    config.tie_word_embeddings = true;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("Unknown model preset '", std::string(name),
                                                   "'; valid presets: ",
                                                   absl::StrJoin(PresetNames(), ", "), "."));
  }
  return config;
}

absl::Status MakeModel(const MakeModelOptions& options, const std::filesystem::path& out_dir) {
  const ModelConfig& config = options.config;
  RETURN_IF_ERROR(config.Validate());
  if (options.max_shard_bytes == 0) {
    return absl::InvalidArgumentError("max_shard_bytes is 0; it must be > 0.");
  }
  std::error_code error;
  std::filesystem::create_directories(out_dir, error);
  if (error) {
    return absl::InternalError(absl::StrCat("Failed to create the output directory ",
                                            out_dir.string(), ": ", error.message()));
  }

  // Group tensors into shards before drawing any weights, so shard names can carry the total.
  const std::vector<TensorPlan> plan = PlanTensors(config);
  std::vector<std::vector<size_t>> shards;
  uint64_t shard_bytes = 0;
  uint64_t total_bytes = 0;
  for (size_t i = 0; i < plan.size(); ++i) {
    const uint64_t bytes = static_cast<uint64_t>(plan[i].num_elements()) * sizeof(uint16_t);
    if (shards.empty() || (shard_bytes > 0 && shard_bytes + bytes > options.max_shard_bytes)) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(i);
    shard_bytes += bytes;
    total_bytes += bytes;
  }

  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string file_name =
        shards.size() == 1
            ? std::string("model.safetensors")
            : absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, shards.size());
    std::vector<std::vector<uint16_t>> buffers;
    std::vector<TensorToWrite> tensors;
    buffers.reserve(shards[s].size());
    for (const size_t index : shards[s]) {
      const TensorPlan& tensor = plan[index];
      std::vector<uint16_t>& buffer = buffers.emplace_back(static_cast<size_t>(tensor.num_elements()));
      FillNormalBf16(options.seed, index, tensor.is_norm ? 1.0 : 0.0, buffer.data(),
                     tensor.num_elements());
      tensors.push_back({tensor.name, DType::kBF16, tensor.shape,
                         std::as_bytes(std::span<const uint16_t>(buffer))});
      weight_map[tensor.name] = file_name;
    }
    RETURN_IF_ERROR(WriteSafetensors(out_dir / file_name, tensors, {{"format", "pt"}}));
  }
  if (shards.size() > 1) {
    nlohmann::json index = {{"metadata", {{"total_size", total_bytes}}},
                            {"weight_map", weight_map}};
    RETURN_IF_ERROR(WriteJson(out_dir / "model.safetensors.index.json", index));
  } else {
    // A previous run with a smaller shard limit may have left an index that would win over
    // model.safetensors.
    std::filesystem::remove(out_dir / "model.safetensors.index.json", error);
  }

  RETURN_IF_ERROR(WriteJson(out_dir / "config.json", ToHfConfigJson(config)));
  nlohmann::json generation = {{"bos_token_id", config.bos_token_id},
                               {"eos_token_id", config.eos_token_ids},
                               {"do_sample", true},
                               {"temperature", 0.6},
                               {"top_p", 0.9}};
  RETURN_IF_ERROR(WriteJson(out_dir / "generation_config.json", generation));
  if (!options.tokenizer_json.empty()) {
    RETURN_IF_ERROR(CopyTokenizer(options.tokenizer_json, out_dir));
  }
  return absl::OkStatus();
}

}  // namespace w8a8
