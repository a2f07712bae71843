// Format-specific openers behind Checkpoint::Open and the LLaMA tensor-set check they share.
// Internal to core/: callers use Checkpoint::Open.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/checkpoint.h"
#include "core/gguf.h"

namespace w8a8::checkpoint_internal {

// Opens a Hugging Face directory: config.json, optional generation_config.json, and
// model.safetensors or the shards listed in model.safetensors.index.json.
absl::StatusOr<std::unique_ptr<Checkpoint>> OpenHfDirectory(const std::filesystem::path& dir);

// Opens a GGUF file of architecture "llama".
absl::StatusOr<std::unique_ptr<Checkpoint>> OpenGgufFile(const std::filesystem::path& path);
// Builds the checkpoint from an already parsed GGUF file (for example one parsed from memory
// by tests); path() is the file's source().
absl::StatusOr<std::unique_ptr<Checkpoint>> OpenGgufCheckpoint(std::unique_ptr<GgufFile> file);

// Checks `tensors` (Hugging Face names) against the set a LLaMA model with `config` needs:
// the embedding, per layer two norms and seven linear weights, the final norm, and lm_head
// unless the embeddings are tied. Shapes must match the config exactly. With `quantized`
// (config.json has a quantization_config), linear weights may be I8 and the tensors
// `<linear>.weight_scale`, `.weight_zero_point`, `.input_scale` and `.input_zero_point` are
// allowed. Errors start with `source` and name the tensor.
absl::Status CheckLlamaTensorSet(const ModelConfig& config,
                                 const std::map<std::string, const TensorView*>& tensors,
                                 bool quantized, const std::string& source);

}  // namespace w8a8::checkpoint_internal
