#include "core/checkpoint.h"

#include <fstream>
#include <set>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/checkpoint_formats.h"
#include "core/status_macros.h"

namespace w8a8 {
namespace {

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

bool IsFloatDType(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16 ||
         dtype == DType::kQ8_0;
}

bool StartsWithGgufMagic(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  in.read(magic, sizeof(magic));
  return in.gcount() == 4 && std::string_view(magic, 4) == "GGUF";
}

}  // namespace

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::filesystem::path& path) {
  std::error_code error;
  const std::filesystem::file_status status = std::filesystem::status(path, error);
  if (!std::filesystem::exists(status)) {
    return absl::NotFoundError(absl::StrCat(
        "checkpoint ", path.string(),
        " does not exist; pass a Hugging Face model directory or a .gguf file"));
  }
  if (std::filesystem::is_directory(status)) {
    return checkpoint_internal::OpenHfDirectory(path);
  }
  if (path.extension() == ".gguf" || StartsWithGgufMagic(path)) {
    return checkpoint_internal::OpenGgufFile(path);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "checkpoint ", path.string(),
      " is neither a directory nor a GGUF file; pass a Hugging Face model directory (with "
      "config.json) or a .gguf file"));
}

absl::StatusOr<std::vector<float>> Checkpoint::LoadFloat32(
    const std::string& name, const std::vector<int64_t>& expected_shape) const {
  ASSIGN_OR_RETURN(const TensorView tensor, Tensor(name));
  if (tensor.shape != expected_shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        path().string(), ": tensor '", name, "' has shape ", ShapeString(tensor.shape),
        ", expected ", ShapeString(expected_shape)));
  }
  absl::StatusOr<std::vector<float>> values = ToFloat32(tensor);
  if (!values.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path().string(), ": ", values.status().message()));
  }
  return values;
}

namespace checkpoint_internal {

absl::Status CheckLlamaTensorSet(const ModelConfig& config,
                                 const std::map<std::string, const TensorView*>& tensors,
                                 bool quantized, const std::string& source) {
  const int64_t head_dim =
      config.head_dim != 0 ? config.head_dim : config.hidden_size / config.num_attention_heads;
  const int64_t hidden = config.hidden_size;
  const int64_t q_rows = config.num_attention_heads * head_dim;
  const int64_t kv_rows = config.num_key_value_heads * head_dim;
  const int64_t intermediate = config.intermediate_size;

  // Expected tensors: name -> (shape, whether it is a linear weight).
  std::map<std::string, std::pair<std::vector<int64_t>, bool>> expected;
  expected["model.embed_tokens.weight"] = {{config.vocab_size, hidden}, false};
  expected["model.norm.weight"] = {{hidden}, false};
  if (!config.tie_word_embeddings) expected["lm_head.weight"] = {{config.vocab_size, hidden}, true};
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    const std::string prefix = absl::StrCat("model.layers.", layer, ".");
    expected[prefix + "input_layernorm.weight"] = {{hidden}, false};
    expected[prefix + "post_attention_layernorm.weight"] = {{hidden}, false};
    expected[prefix + "self_attn.q_proj.weight"] = {{q_rows, hidden}, true};
    expected[prefix + "self_attn.k_proj.weight"] = {{kv_rows, hidden}, true};
    expected[prefix + "self_attn.v_proj.weight"] = {{kv_rows, hidden}, true};
    expected[prefix + "self_attn.o_proj.weight"] = {{hidden, q_rows}, true};
    expected[prefix + "mlp.gate_proj.weight"] = {{intermediate, hidden}, true};
    expected[prefix + "mlp.up_proj.weight"] = {{intermediate, hidden}, true};
    expected[prefix + "mlp.down_proj.weight"] = {{hidden, intermediate}, true};
  }

  for (const auto& [name, spec] : expected) {
    const auto& [shape, is_linear] = spec;
    const auto it = tensors.find(name);
    if (it == tensors.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": tensor '", name, "' is missing; a LLaMA model with ",
          config.num_hidden_layers, " layers", config.tie_word_embeddings ? "" : " and untied embeddings",
          " needs it"));
    }
    const TensorView& tensor = *it->second;
    if (tensor.shape != shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": tensor '", name, "' has shape ", ShapeString(tensor.shape), ", but the config (hidden_size ",
          hidden, ", intermediate_size ", intermediate, ", ", config.num_attention_heads,
          " heads, ", config.num_key_value_heads, " key/value heads, head_dim ", head_dim,
          ", vocab_size ", config.vocab_size, ") needs ", ShapeString(shape)));
    }
    const bool int8_linear = is_linear && quantized && tensor.dtype == DType::kI8;
    if (!IsFloatDType(tensor.dtype) && !int8_linear) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": tensor '", name, "' has dtype ", std::string(DTypeName(tensor.dtype)),
          is_linear ? "; linear weights must be F32, F16, BF16 or Q8_0, or I8 with a "
                      "quantization_config in config.json"
                    : "; norms and embeddings must be F32, F16, BF16 or Q8_0"));
    }
  }

  std::vector<std::string> extra;
  for (const auto& [name, tensor] : tensors) {
    if (expected.contains(name)) continue;
    // Older checkpoints store the rotary inverse frequencies, which the runtime recomputes.
    if (absl::EndsWith(name, ".rotary_emb.inv_freq")) continue;
    // Tied checkpoints may still store lm_head as a copy of the embedding.
    if (name == "lm_head.weight" && config.tie_word_embeddings &&
        tensor->shape == std::vector<int64_t>{config.vocab_size, hidden}) {
      continue;
    }
    if (quantized) {
      bool is_quantization_tensor = false;
      for (absl::string_view suffix :
           {".weight_scale", ".weight_zero_point", ".input_scale", ".input_zero_point"}) {
        if (!absl::EndsWith(name, suffix)) continue;
        const std::string weight =
            absl::StrCat(name.substr(0, name.size() - suffix.size()), ".weight");
        const auto it = expected.find(weight);
        if ((it != expected.end() && it->second.second) ||
            (weight == "lm_head.weight" && config.tie_word_embeddings)) {
          is_quantization_tensor = true;
        }
      }
      if (is_quantization_tensor) continue;
    }
    extra.push_back(name);
  }
  if (!extra.empty()) {
    constexpr size_t kShown = 5;
    std::vector<std::string> shown(extra.begin(),
                                   extra.begin() + std::min(extra.size(), kShown));
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": ", extra.size(), " unexpected tensor(s) for a LLaMA model with ",
        config.num_hidden_layers, " layers: '", absl::StrJoin(shown, "', '"), "'",
        extra.size() > kShown ? ", ..." : "",
        "; check num_hidden_layers in the config or remove the tensors"));
  }
  return absl::OkStatus();
}

}  // namespace checkpoint_internal
}  // namespace w8a8
