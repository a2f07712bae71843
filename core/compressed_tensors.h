// Quantized checkpoints in the compressed-tensors "int-quantized" format that vLLM and
// llm-compressor use for W8A8: int8 `weight` tensors with FP32 `weight_scale` tensors, and a
// `quantization_config` in config.json that names which layers use which scheme.
#pragma once

#include <filesystem>

#include "absl/status/statusor.h"
#include "core/checkpoint.h"
#include "core/linear.h"
#include "core/quantization.h"
#include "nlohmann/json.hpp"

namespace w8a8 {

// Whether config.json has a quantization_config with quant_method "compressed-tensors".
bool IsCompressedTensorsCheckpoint(const Checkpoint& checkpoint);

// Builds the quantization_config object for `plan`. Quantized layers are grouped by scheme:
// one config group targeting "Linear" when every quantized layer shares one scheme, else one
// group per scheme that targets its layers by name. lm_head and fp layers go to "ignore".
// Rejects a per-group layer whose group size does not divide its input size: the
// compressed-tensors group strategy and vLLM's grouped kernels assume whole groups, so a
// shorter last group cannot be stored. `in_features` maps layer names to input sizes.
absl::StatusOr<nlohmann::json> CompressedTensorsConfig(
    const QuantPlan& plan, const std::map<std::string, int64_t>& in_features);

// Writes `source` quantized by `plan` to `out_dir` (created if needed): config.json with the
// quantization_config, model.safetensors, and the tokenizer and generation config files of a
// Hugging Face source directory. Layers are quantized one at a time from the memory-mapped
// source, so peak memory is about the int8 model plus one layer in FP32. Float tensors that
// stay unquantized keep their dtype. Fails without writing anything if the plan cannot be
// stored.
absl::Status WriteCompressedTensors(const Checkpoint& source, const QuantPlan& plan,
                                    const std::filesystem::path& out_dir);

// Serves a compressed-tensors checkpoint as stored: int8 weights and their scales go into
// QuantizedLinear layers, ignored layers load as FP32. Rejects formats other than
// "int-quantized", weights that are not 8-bit symmetric int, and static activation scales.
absl::StatusOr<LinearFactory> CompressedTensorsLinearFactory(const Checkpoint& checkpoint);

}  // namespace w8a8
