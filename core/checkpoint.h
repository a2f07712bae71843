// Read-only access to a model checkpoint on disk: a Hugging Face directory (config.json plus
// model.safetensors or an index of shards) or a GGUF v3 file of architecture "llama".
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model_config.h"
#include "core/tensor.h"
#include "nlohmann/json.hpp"

namespace w8a8 {

// Tokenizer description carried inside a GGUF file (keys under "tokenizer.ggml.").
struct GgufTokenizerData {
  std::string model;                // "llama" (SentencePiece) or "gpt2" (byte-level BPE).
  std::string pre;                  // Pre-tokenizer name, e.g. "llama-bpe"; may be empty.
  std::vector<std::string> tokens;
  std::vector<float> scores;        // Empty when absent.
  std::vector<int32_t> token_types; // 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
  std::vector<std::string> merges;  // "a b" pairs for BPE models.
  std::optional<int32_t> bos_token_id;
  std::optional<int32_t> eos_token_id;
  std::optional<int32_t> unknown_token_id;
  std::optional<int32_t> padding_token_id;
  std::optional<bool> add_bos_token;
  std::optional<bool> add_eos_token;
  std::optional<bool> add_space_prefix;
  std::optional<std::string> chat_template;
};

// The origin of a checkpoint's tokenizer. At most one member is set: none when the
// checkpoint carries no tokenizer (a directory without tokenizer.json and tokenizer.model, or
// a GGUF file without tokenizer.ggml.tokens).
struct TokenizerSource {
  std::optional<std::filesystem::path> tokenizer_json;   // Hugging Face tokenizer.json.
  std::optional<std::filesystem::path> sentencepiece_model;  // tokenizer.model protobuf.
  std::optional<GgufTokenizerData> gguf;
};

class Checkpoint {
 public:
  virtual ~Checkpoint() = default;

  // Opens `path`: a directory with config.json, or a .gguf file. Memory-maps the tensor data
  // and validates every header, offset and shape before returning; errors name the file and
  // the tensor or key at fault.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::filesystem::path& path);

  virtual const std::filesystem::path& path() const = 0;
  virtual std::string format() const = 0;  // "safetensors" or "gguf".
  virtual const ModelConfig& config() const = 0;
  virtual const GenerationDefaults& generation_defaults() const = 0;
  virtual const TokenizerSource& tokenizer_source() const = 0;

  // Tensor names as Hugging Face spells them ("model.layers.0.self_attn.q_proj.weight"),
  // whatever the file format. GGUF names are mapped, and GGUF's interleaved rotary layout of
  // q_proj/k_proj rows is converted to the Hugging Face layout by Tensor().
  virtual std::vector<std::string> TensorNames() const = 0;
  virtual bool HasTensor(const std::string& name) const = 0;
  // The view stays valid while the Checkpoint lives. For GGUF q_proj/k_proj tensors the rows
  // are permuted into a buffer that the Checkpoint owns.
  virtual absl::StatusOr<TensorView> Tensor(const std::string& name) const = 0;

  // Loads a float tensor as FP32 and checks its shape; the error names tensor, expected and
  // actual shape.
  absl::StatusOr<std::vector<float>> LoadFloat32(const std::string& name,
                                                 const std::vector<int64_t>& expected_shape) const;

  // The `quantization_config` object of config.json, when present (compressed-tensors).
  virtual const std::optional<nlohmann::json>& quantization_config() const = 0;
  // The whole config.json (or an equivalent built from GGUF metadata).
  virtual const nlohmann::json& raw_config() const = 0;

  // Per-frequency divisors for Llama 3 rotary scaling ([head_dim / 2], F32), which some GGUF
  // files carry as the tensor "rope_freqs.weight" instead of rope_scaling parameters. The
  // tensor is also returned by Tensor("rope_freqs.weight") but not listed in TensorNames().
  // nullopt for every other checkpoint.
  virtual std::optional<TensorView> rope_frequency_factors() const { return std::nullopt; }
};

// Writes tensors as a .safetensors file with an optional "__metadata__" object. Tensors are
// written in the given order; data must match dtype and shape.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::span<const std::byte> data;
};
absl::Status WriteSafetensors(const std::filesystem::path& path,
                              const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace w8a8
