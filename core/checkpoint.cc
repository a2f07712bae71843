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

namespace {

struct ExpectedTensor {
  std::vector<int64_t> shape;
  bool is_linear = false;
};

constexpr std::string_view kLayerTensors[] = {
    "input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
    "self_attn.k_proj.weight", "self_attn.v_proj.weight",        "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",   "mlp.up_proj.weight",              "mlp.down_proj.weight",
};

// The shape of `suffix` ("mlp.up_proj.weight") in any layer; nullopt for unknown suffixes.
std::optional<ExpectedTensor> ExpectedLayerTensor(const ModelConfig& config,
                                                  std::string_view suffix) {
  const int64_t head_dim =
      config.head_dim != 0 ? config.head_dim : config.hidden_size / config.num_attention_heads;
  const int64_t hidden = config.hidden_size;
  const int64_t q_rows = config.num_attention_heads * head_dim;
  const int64_t kv_rows = config.num_key_value_heads * head_dim;
  const int64_t intermediate = config.intermediate_size;
  if (suffix == "input_layernorm.weight" || suffix == "post_attention_layernorm.weight") {
    return ExpectedTensor{{hidden}, false};
  }
  if (suffix == "self_attn.q_proj.weight") return ExpectedTensor{{q_rows, hidden}, true};
  if (suffix == "self_attn.k_proj.weight" || suffix == "self_attn.v_proj.weight") {
    return ExpectedTensor{{kv_rows, hidden}, true};
  }
  if (suffix == "self_attn.o_proj.weight") return ExpectedTensor{{hidden, q_rows}, true};
  if (suffix == "mlp.gate_proj.weight" || suffix == "mlp.up_proj.weight") {
    return ExpectedTensor{{intermediate, hidden}, true};
  }
  if (suffix == "mlp.down_proj.weight") return ExpectedTensor{{hidden, intermediate}, true};
  return std::nullopt;
}

// The expected shape of tensor `name` for `config`, or nullopt when the model has no such
// tensor (including layers at or past num_hidden_layers).
std::optional<ExpectedTensor> ExpectedTensorFor(const ModelConfig& config,
                                                const std::string& name) {
  if (name == "model.embed_tokens.weight") {
    return ExpectedTensor{{config.vocab_size, config.hidden_size}, false};
  }
  if (name == "model.norm.weight") return ExpectedTensor{{config.hidden_size}, false};
  if (name == "lm_head.weight" && !config.tie_word_embeddings) {
    return ExpectedTensor{{config.vocab_size, config.hidden_size}, true};
  }
  constexpr std::string_view kPrefix = "model.layers.";
  if (!name.starts_with(kPrefix)) return std::nullopt;
  const size_t dot = name.find('.', kPrefix.size());
  if (dot == std::string::npos) return std::nullopt;
  const std::string layer_text = name.substr(kPrefix.size(), dot - kPrefix.size());
  int64_t layer = 0;
  if (layer_text.empty() || layer_text.size() > 9 ||
      layer_text.find_first_not_of("0123456789") != std::string::npos ||
      (layer_text.size() > 1 && layer_text[0] == '0')) {
    return std::nullopt;
  }
  layer = std::stoll(layer_text);
  if (layer >= config.num_hidden_layers) return std::nullopt;
  return ExpectedLayerTensor(config, std::string_view(name).substr(dot + 1));
}

}  // namespace

absl::Status CheckLlamaTensorSet(const ModelConfig& config,
                                 const std::map<std::string, const TensorView*>& tensors,
                                 bool quantized, const std::string& source) {
  // Names in checking order. The loop stops at the first missing tensor, so a corrupt layer
  // count cannot make it run long.
  const auto check_present = [&](const std::string& name) -> absl::Status {
    const std::optional<ExpectedTensor> expected = ExpectedTensorFor(config, name);
    const auto it = tensors.find(name);
    if (it == tensors.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": tensor '", name, "' is missing; a LLaMA model with ",
          config.num_hidden_layers, " layers",
          config.tie_word_embeddings ? "" : " and untied embeddings", " needs it"));
    }
    const TensorView& tensor = *it->second;
    if (tensor.shape != expected->shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": tensor '", name, "' has shape ", ShapeString(tensor.shape),
          ", but the config (hidden_size ", config.hidden_size, ", intermediate_size ",
          config.intermediate_size, ", ", config.num_attention_heads, " heads, ",
          config.num_key_value_heads, " key/value heads, head_dim ", config.head_dim,
          ", vocab_size ", config.vocab_size, ") needs ", ShapeString(expected->shape)));
    }
    const bool int8_linear = expected->is_linear && quantized && tensor.dtype == DType::kI8;
    if (!IsFloatDType(tensor.dtype) && !int8_linear) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": tensor '", name, "' has dtype ", std::string(DTypeName(tensor.dtype)),
          expected->is_linear ? "; linear weights must be F32, F16, BF16 or Q8_0, or I8 with "
                                "a quantization_config in config.json"
                              : "; norms and embeddings must be F32, F16, BF16 or Q8_0"));
    }
    return absl::OkStatus();
  };

  RETURN_IF_ERROR(check_present("model.embed_tokens.weight"));
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    for (std::string_view suffix : kLayerTensors) {
      RETURN_IF_ERROR(
          check_present(absl::StrCat("model.layers.", layer, ".", std::string(suffix))));
    }
  }
  RETURN_IF_ERROR(check_present("model.norm.weight"));
  if (!config.tie_word_embeddings) RETURN_IF_ERROR(check_present("lm_head.weight"));

  std::vector<std::string> extra;
  for (const auto& [name, tensor] : tensors) {
    if (ExpectedTensorFor(config, name).has_value()) continue;
    // Older checkpoints store the rotary inverse frequencies, which the runtime recomputes.
    if (absl::EndsWith(name, ".rotary_emb.inv_freq")) continue;
    // Tied checkpoints may still store lm_head as a copy of the embedding.
    if (name == "lm_head.weight" && config.tie_word_embeddings &&
        tensor->shape == std::vector<int64_t>{config.vocab_size, config.hidden_size}) {
      continue;
    }
    if (quantized) {
      bool is_quantization_tensor = false;
      for (absl::string_view suffix :
           {".weight_scale", ".weight_zero_point", ".input_scale", ".input_zero_point"}) {
        if (!absl::EndsWith(name, suffix)) continue;
        const std::string weight =
            absl::StrCat(name.substr(0, name.size() - suffix.size()), ".weight");
        const std::optional<ExpectedTensor> base = ExpectedTensorFor(config, weight);
        if ((base.has_value() && base->is_linear) || weight == "lm_head.weight") {
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
