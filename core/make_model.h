// Synthetic LLaMA checkpoints with seeded random weights, in the Hugging Face layout, for tests
// and benchmarks of models that cannot be downloaded here.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/model_config.h"

namespace w8a8 {

// Names accepted by PresetConfig: "llama-3.2-1b", "llama-3.1-8b" and "llama3-tiny" (hidden 64,
// 2 layers, the real 128256-token vocabulary; about 16 MB in BF16).
std::vector<std::string> PresetNames();
// The architecture of a preset. Fails with the list of names for an unknown one.
absl::StatusOr<ModelConfig> PresetConfig(std::string_view name);

struct MakeModelOptions {
  ModelConfig config;
  uint64_t seed = 0;
  // Copied into the output as tokenizer.json, with a tokenizer_config.json found beside it.
  // Empty: the checkpoint gets no tokenizer.
  std::filesystem::path tokenizer_json;
  // Above this many bytes of tensor data the weights are split into shards
  // "model-0000i-of-0000n.safetensors" listed in model.safetensors.index.json. A tensor larger
  // than the limit gets a shard of its own.
  uint64_t max_shard_bytes = uint64_t{2} << 30;
};

// Writes config.json, generation_config.json, the BF16 weights and the tokenizer into
// `out_dir` (created when missing). Weights are normal with standard deviation 0.02 (norm
// weights 1 plus such noise), drawn from std::mt19937_64 streams derived from the seed, the
// tensor's index and the position, so the same seed always writes the same files. At most one
// shard of weights is held in memory at a time. Blocks; uses OpenMP worker threads.
absl::Status MakeModel(const MakeModelOptions& options, const std::filesystem::path& out_dir);

}  // namespace w8a8
