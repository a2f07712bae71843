// Checkpoint over a GGUF file of architecture "llama".
#include <map>
#include <memory>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/checkpoint.h"
#include "core/checkpoint_formats.h"
#include "core/gguf.h"
#include "core/status_macros.h"

namespace w8a8::checkpoint_internal {
namespace {

// Some converted files store 0xFFFFFFFF as the id of an absent token (padding, separator).
constexpr int64_t kNoToken = 0xFFFFFFFF;
// llama.cpp's tensor of per-frequency rotary divisors for Llama 3.1 scaling.
constexpr std::string_view kRopeFreqsTensor = "rope_freqs.weight";

class MetadataReader {
 public:
  explicit MetadataReader(const GgufFile& file) : file_(file) {}

  absl::Status Missing(const std::string& key) const {
    return absl::InvalidArgumentError(
        absl::StrCat(file_.source(), ": required GGUF key '", key, "' is missing"));
  }

  absl::Status WrongType(const std::string& key, absl::string_view expected) const {
    const GgufValue* value = file_.FindMetadata(key);
    return absl::InvalidArgumentError(absl::StrCat(
        file_.source(), ": GGUF key '", key, "' must be ", expected, ", but has type ",
        std::string(GgufTypeName(value->type))));
  }

  absl::StatusOr<std::optional<int64_t>> Int(const std::string& key) const {
    const GgufValue* value = file_.FindMetadata(key);
    if (value == nullptr) return std::optional<int64_t>();
    const std::optional<int64_t> result = value->AsInt();
    if (!result.has_value()) return WrongType(key, "an integer");
    return result;
  }

  absl::StatusOr<int64_t> RequiredInt(const std::string& key) const {
    ASSIGN_OR_RETURN(const std::optional<int64_t> value, Int(key));
    if (!value.has_value()) return Missing(key);
    return *value;
  }

  absl::StatusOr<std::optional<double>> Double(const std::string& key) const {
    const GgufValue* value = file_.FindMetadata(key);
    if (value == nullptr) return std::optional<double>();
    const std::optional<double> result = value->AsDouble();
    if (!result.has_value()) return WrongType(key, "a number");
    return result;
  }

  absl::StatusOr<std::optional<bool>> Bool(const std::string& key) const {
    const GgufValue* value = file_.FindMetadata(key);
    if (value == nullptr) return std::optional<bool>();
    const std::optional<bool> result = value->AsBool();
    if (!result.has_value()) return WrongType(key, "a bool");
    return result;
  }

  absl::StatusOr<std::optional<std::string>> String(const std::string& key) const {
    const GgufValue* value = file_.FindMetadata(key);
    if (value == nullptr) return std::optional<std::string>();
    const std::string* result = value->AsString();
    if (result == nullptr) return WrongType(key, "a string");
    return std::optional<std::string>(*result);
  }

  // A token id key; kNoToken counts as absent.
  absl::StatusOr<std::optional<int32_t>> TokenId(const std::string& key, int64_t vocab_size) const {
    ASSIGN_OR_RETURN(const std::optional<int64_t> value, Int(key));
    if (!value.has_value() || *value == kNoToken) return std::optional<int32_t>();
    if (*value < 0 || *value >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(file_.source(), ": GGUF key '", key,
                                                     "' is token id ", *value,
                                                     ", outside the vocabulary of ", vocab_size));
    }
    return std::optional<int32_t>(static_cast<int32_t>(*value));
  }

 private:
  const GgufFile& file_;
};

absl::StatusOr<std::optional<GgufTokenizerData>> ReadTokenizer(const GgufFile& file,
                                                               const MetadataReader& meta) {
  const GgufValue* tokens_value = file.FindMetadata("tokenizer.ggml.tokens");
  if (tokens_value == nullptr) return std::optional<GgufTokenizerData>();
  const std::vector<std::string>* tokens = tokens_value->AsStringArray();
  if (tokens == nullptr) return meta.WrongType("tokenizer.ggml.tokens", "an array of strings");

  GgufTokenizerData data;
  data.tokens = *tokens;
  const auto vocab_size = static_cast<int64_t>(data.tokens.size());
  ASSIGN_OR_RETURN(const std::optional<std::string> model, meta.String("tokenizer.ggml.model"));
  if (!model.has_value()) return meta.Missing("tokenizer.ggml.model");
  data.model = *model;
  ASSIGN_OR_RETURN(const std::optional<std::string> pre, meta.String("tokenizer.ggml.pre"));
  data.pre = pre.value_or("");

  if (const GgufValue* scores = file.FindMetadata("tokenizer.ggml.scores")) {
    const std::optional<std::vector<double>> values = scores->AsDoubleArray();
    if (!values.has_value()) return meta.WrongType("tokenizer.ggml.scores", "an array of floats");
    data.scores.assign(values->begin(), values->end());
    if (static_cast<int64_t>(data.scores.size()) != vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat(file.source(), ": tokenizer.ggml.scores has ", data.scores.size(),
                       " entries, but tokenizer.ggml.tokens has ", vocab_size));
    }
  }
  if (const GgufValue* types = file.FindMetadata("tokenizer.ggml.token_type")) {
    const std::optional<std::vector<int64_t>> values = types->AsIntArray();
    if (!values.has_value()) {
      return meta.WrongType("tokenizer.ggml.token_type", "an array of integers");
    }
    if (static_cast<int64_t>(values->size()) != vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat(file.source(), ": tokenizer.ggml.token_type has ", values->size(),
                       " entries, but tokenizer.ggml.tokens has ", vocab_size));
    }
    data.token_types.reserve(values->size());
    for (int64_t type : *values) data.token_types.push_back(static_cast<int32_t>(type));
  }
  if (const GgufValue* merges = file.FindMetadata("tokenizer.ggml.merges")) {
    const std::vector<std::string>* values = merges->AsStringArray();
    if (values == nullptr) return meta.WrongType("tokenizer.ggml.merges", "an array of strings");
    data.merges = *values;
  }
  ASSIGN_OR_RETURN(data.bos_token_id, meta.TokenId("tokenizer.ggml.bos_token_id", vocab_size));
  ASSIGN_OR_RETURN(data.eos_token_id, meta.TokenId("tokenizer.ggml.eos_token_id", vocab_size));
  ASSIGN_OR_RETURN(data.unknown_token_id,
                   meta.TokenId("tokenizer.ggml.unknown_token_id", vocab_size));
  ASSIGN_OR_RETURN(data.padding_token_id,
                   meta.TokenId("tokenizer.ggml.padding_token_id", vocab_size));
  ASSIGN_OR_RETURN(data.add_bos_token, meta.Bool("tokenizer.ggml.add_bos_token"));
  ASSIGN_OR_RETURN(data.add_eos_token, meta.Bool("tokenizer.ggml.add_eos_token"));
  ASSIGN_OR_RETURN(data.add_space_prefix, meta.Bool("tokenizer.ggml.add_space_prefix"));
  ASSIGN_OR_RETURN(data.chat_template, meta.String("tokenizer.chat_template"));
  return std::optional<GgufTokenizerData>(std::move(data));
}

std::string TorchDTypeOf(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "float32";
    case DType::kF16:
      return "float16";
    default:
      return "bfloat16";
  }
}

absl::StatusOr<ModelConfig> ReadConfig(const GgufFile& file, const MetadataReader& meta,
                                       const std::optional<GgufTokenizerData>& tokenizer) {
  ASSIGN_OR_RETURN(const std::optional<std::string> architecture,
                   meta.String("general.architecture"));
  if (!architecture.has_value()) return meta.Missing("general.architecture");
  if (*architecture != "llama") {
    return absl::InvalidArgumentError(
        absl::StrCat(file.source(), ": GGUF architecture '", *architecture,
                     "' is not supported; only 'llama' (LLaMA 2, 3, 3.1 and 3.2) is"));
  }

  ModelConfig config;
  ASSIGN_OR_RETURN(config.hidden_size, meta.RequiredInt("llama.embedding_length"));
  ASSIGN_OR_RETURN(config.intermediate_size, meta.RequiredInt("llama.feed_forward_length"));
  ASSIGN_OR_RETURN(config.num_hidden_layers, meta.RequiredInt("llama.block_count"));
  ASSIGN_OR_RETURN(config.num_attention_heads, meta.RequiredInt("llama.attention.head_count"));
  ASSIGN_OR_RETURN(const std::optional<int64_t> kv_heads, meta.Int("llama.attention.head_count_kv"));
  config.num_key_value_heads = kv_heads.value_or(config.num_attention_heads);
  if (config.num_attention_heads <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(file.source(),
                                                   ": llama.attention.head_count must be "
                                                   "positive, got ",
                                                   config.num_attention_heads));
  }

  ASSIGN_OR_RETURN(const std::optional<int64_t> key_length, meta.Int("llama.attention.key_length"));
  ASSIGN_OR_RETURN(const std::optional<int64_t> value_length,
                   meta.Int("llama.attention.value_length"));
  config.head_dim = key_length.value_or(config.hidden_size / config.num_attention_heads);
  if (value_length.has_value() && *value_length != config.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        file.source(), ": llama.attention.value_length ", *value_length,
        " differs from the key length ", config.head_dim, ", which LLaMA does not do"));
  }
  ASSIGN_OR_RETURN(const std::optional<int64_t> rope_dims, meta.Int("llama.rope.dimension_count"));
  if (rope_dims.has_value() && *rope_dims != config.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        file.source(), ": llama.rope.dimension_count ", *rope_dims, " differs from head_dim ",
        config.head_dim, "; partial rotary embeddings are not supported"));
  }

  ASSIGN_OR_RETURN(const std::optional<double> eps,
                   meta.Double("llama.attention.layer_norm_rms_epsilon"));
  config.rms_norm_eps = eps.value_or(1e-5);
  ASSIGN_OR_RETURN(const std::optional<double> theta, meta.Double("llama.rope.freq_base"));
  config.rope_theta = theta.value_or(10000.0);
  ASSIGN_OR_RETURN(const std::optional<int64_t> context, meta.Int("llama.context_length"));
  config.max_position_embeddings = context.value_or(2048);
  ASSIGN_OR_RETURN(const std::optional<std::string> scaling_type,
                   meta.String("llama.rope.scaling.type"));
  if (scaling_type.has_value() && *scaling_type != "none") {
    return absl::InvalidArgumentError(absl::StrCat(
        file.source(), ": llama.rope.scaling.type '", *scaling_type,
        "' is not supported; Llama 3 scaling comes as the tensor rope_freqs.weight"));
  }

  // Vocabulary size: the tokenizer, else llama.vocab_size, else the embedding rows.
  const TensorView* embedding = file.FindTensor("token_embd.weight");
  ASSIGN_OR_RETURN(const std::optional<int64_t> vocab_key, meta.Int("llama.vocab_size"));
  if (tokenizer.has_value()) {
    config.vocab_size = static_cast<int64_t>(tokenizer->tokens.size());
  } else if (vocab_key.has_value()) {
    config.vocab_size = *vocab_key;
  } else if (embedding != nullptr && embedding->shape.size() == 2) {
    config.vocab_size = embedding->shape[0];
  }
  if (vocab_key.has_value() && *vocab_key != config.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.source(), ": llama.vocab_size ", *vocab_key,
                     " disagrees with the ", config.vocab_size, " tokenizer tokens"));
  }

  config.tie_word_embeddings = file.FindTensor("output.weight") == nullptr;
  if (embedding != nullptr) config.torch_dtype = TorchDTypeOf(embedding->dtype);
  if (tokenizer.has_value()) {
    if (tokenizer->bos_token_id.has_value()) config.bos_token_id = *tokenizer->bos_token_id;
    if (tokenizer->eos_token_id.has_value()) {
      config.eos_token_ids.push_back(*tokenizer->eos_token_id);
    }
    // Llama 3 marks the end of a chat turn with a separate id.
    for (const char* key : {"tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
      ASSIGN_OR_RETURN(const std::optional<int32_t> id, meta.TokenId(key, config.vocab_size));
      if (id.has_value() && std::find(config.eos_token_ids.begin(), config.eos_token_ids.end(),
                                      *id) == config.eos_token_ids.end()) {
        config.eos_token_ids.push_back(*id);
      }
    }
  }

  if (absl::Status status = config.Validate(); !status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(file.source(), ": ", status.message()));
  }
  return config;
}

class GgufCheckpoint : public Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(std::unique_ptr<GgufFile> gguf,
                                                          const std::filesystem::path& path) {
    std::unique_ptr<GgufCheckpoint> checkpoint(new GgufCheckpoint());
    checkpoint->path_ = path;
    checkpoint->file_ = std::move(gguf);
    const GgufFile& file = *checkpoint->file_;
    const MetadataReader meta(file);

    ASSIGN_OR_RETURN(const std::optional<GgufTokenizerData> tokenizer, ReadTokenizer(file, meta));
    ASSIGN_OR_RETURN(checkpoint->config_, ReadConfig(file, meta, tokenizer));
    if (tokenizer.has_value()) checkpoint->tokenizer_source_.gguf = tokenizer;
    checkpoint->generation_defaults_.eos_token_ids = checkpoint->config_.eos_token_ids;
    checkpoint->raw_config_ = ToHfConfigJson(checkpoint->config_);

    std::map<std::string, const TensorView*> by_hf_name;
    std::vector<std::string> unknown;
    for (const TensorView& tensor : file.tensors()) {
      if (tensor.name == kRopeFreqsTensor) {
        checkpoint->rope_freqs_ = tensor;
        continue;
      }
      const std::optional<std::string> hf_name = GgufToHfTensorName(tensor.name);
      if (!hf_name.has_value()) {
        unknown.push_back(tensor.name);
        continue;
      }
      TensorView view = tensor;
      view.name = *hf_name;
      checkpoint->tensors_[*hf_name] = std::move(view);
    }
    if (!unknown.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          path.string(), ": GGUF tensor '", unknown.front(), "'",
          unknown.size() > 1 ? absl::StrCat(" and ", unknown.size() - 1, " more") : "",
          " are not part of the llama architecture"));
    }
    for (const auto& [name, view] : checkpoint->tensors_) by_hf_name[name] = &view;
    RETURN_IF_ERROR(CheckLlamaTensorSet(checkpoint->config_, by_hf_name, /*quantized=*/false,
                                        path.string()));
    if (checkpoint->rope_freqs_.has_value()) {
      const int64_t expected = checkpoint->config_.head_dim / 2;
      if (checkpoint->rope_freqs_->shape != std::vector<int64_t>{expected}) {
        return absl::InvalidArgumentError(absl::StrCat(
            path.string(), ": tensor 'rope_freqs.weight' must have shape [", expected,
            "] (head_dim / 2)"));
      }
    }
    return std::unique_ptr<Checkpoint>(std::move(checkpoint));
  }

  const std::filesystem::path& path() const override { return path_; }
  std::string format() const override { return "gguf"; }
  const ModelConfig& config() const override { return config_; }
  const GenerationDefaults& generation_defaults() const override { return generation_defaults_; }
  const TokenizerSource& tokenizer_source() const override { return tokenizer_source_; }

  std::vector<std::string> TensorNames() const override {
    std::vector<std::string> names;
    names.reserve(tensors_.size());
    for (const auto& [name, view] : tensors_) names.push_back(name);
    return names;
  }

  bool HasTensor(const std::string& name) const override {
    return tensors_.contains(name) || (name == kRopeFreqsTensor && rope_freqs_.has_value());
  }

  absl::StatusOr<TensorView> Tensor(const std::string& name) const override {
    if (name == kRopeFreqsTensor && rope_freqs_.has_value()) return *rope_freqs_;
    const auto it = tensors_.find(name);
    if (it == tensors_.end()) {
      return absl::NotFoundError(absl::StrCat(path_.string(), ": no tensor named '", name, "'"));
    }
    const bool is_q = absl::EndsWith(name, ".self_attn.q_proj.weight");
    const bool is_k = absl::EndsWith(name, ".self_attn.k_proj.weight");
    if (!is_q && !is_k) return it->second;
    return PermutedTensor(it->second,
                          is_q ? config_.num_attention_heads : config_.num_key_value_heads);
  }

  const std::optional<nlohmann::json>& quantization_config() const override {
    return quantization_config_;
  }
  const nlohmann::json& raw_config() const override { return raw_config_; }

  std::optional<TensorView> rope_frequency_factors() const override { return rope_freqs_; }

 private:
  GgufCheckpoint() = default;

  // Converts GGUF's interleaved rotary rows to the Hugging Face layout as FP32, once per
  // tensor; later calls return the cached buffer.
  absl::StatusOr<TensorView> PermutedTensor(const TensorView& stored, int64_t num_heads) const {
    absl::MutexLock lock(&mutex_);
    auto cached = permuted_.find(stored.name);
    if (cached == permuted_.end()) {
      ASSIGN_OR_RETURN(const std::vector<float> values, ToFloat32(stored));
      ASSIGN_OR_RETURN(std::vector<float> permuted,
                       GgufRotaryRowsToHf(values, num_heads, config_.head_dim));
      cached = permuted_
                   .emplace(stored.name, std::make_unique<std::vector<float>>(std::move(permuted)))
                   .first;
    }
    TensorView view = stored;
    view.dtype = DType::kF32;
    view.data = reinterpret_cast<const std::byte*>(cached->second->data());
    view.size_bytes = cached->second->size() * sizeof(float);
    return view;
  }

  std::filesystem::path path_;
  std::unique_ptr<GgufFile> file_;
  ModelConfig config_;
  GenerationDefaults generation_defaults_;
  TokenizerSource tokenizer_source_;
  nlohmann::json raw_config_;
  std::optional<nlohmann::json> quantization_config_;
  std::map<std::string, TensorView> tensors_;  // By Hugging Face name, as stored.
  std::optional<TensorView> rope_freqs_;

  mutable absl::Mutex mutex_;
  mutable std::map<std::string, std::unique_ptr<std::vector<float>>> permuted_
      ABSL_GUARDED_BY(mutex_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<Checkpoint>> OpenGgufFile(const std::filesystem::path& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(path));
  return GgufCheckpoint::Open(std::move(file), path);
}

absl::StatusOr<std::unique_ptr<Checkpoint>> OpenGgufCheckpoint(std::unique_ptr<GgufFile> file) {
  const std::filesystem::path path = file->source();
  return GgufCheckpoint::Open(std::move(file), path);
}

}  // namespace w8a8::checkpoint_internal
