// Export of a LLaMA checkpoint as a GGUF v3 file of architecture "llama" that llama.cpp loads:
// hyperparameters, tokenizer and weights in llama.cpp's tensor names and rotary row layout.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/checkpoint.h"
#include "core/gguf.h"

namespace w8a8 {

// Element type of the exported 2-D weights. 1-D tensors (norm weights, rope_freqs.weight)
// are always F32, as llama.cpp's convert_hf_to_gguf.py writes them.
enum class GgufOutType { kF32, kF16, kBF16, kQ8_0 };

// "f32", "f16", "bf16" or "q8_0".
std::string_view GgufOutTypeName(GgufOutType type);
// Parses a name of GgufOutTypeName; the error names the value and lists the valid ones.
absl::StatusOr<GgufOutType> ParseGgufOutType(std::string_view name);

struct GgufExportOptions {
  GgufOutType out_type = GgufOutType::kF16;
  // general.name; empty uses the source directory's (or file's stem) name.
  std::string model_name;
};

struct GgufExportSummary {
  int64_t tensor_count = 0;
  uint64_t file_bytes = 0;
  // GGUF names of 2-D tensors written as F16 instead of Q8_0 because their row length is not
  // a multiple of 32.
  std::vector<std::string> q8_0_fallbacks;
};

// Writes `source` as a GGUF file at `out`. Tensors are converted and written one at a time,
// so the memory allocated stays near three FP32 copies of the largest q_proj/k_proj weight
// plus the tokenizer metadata, whatever the model size. Mapped source pages come on top, and
// a GGUF source also caches the q_proj/k_proj weights it converted. The file is written
// under a temporary name in the same directory and renamed to `out` only when complete. On
// failure the temporary file is removed and `out` is left as it was. Fails when the source
// has no tokenizer or is quantized, when an F16 export would overflow (|x| > 65504), or when
// a weight is not finite. Blocks; uses OpenMP worker threads.
absl::StatusOr<GgufExportSummary> ExportGguf(const Checkpoint& source,
                                             const std::filesystem::path& out,
                                             const GgufExportOptions& options);

// Encodes `values` (a multiple of 32, each |x| <= 65504 * 127) as Q8_0 blocks: per block an
// FP16 scale d, the block's max |x| / 127 rounded up to FP16, then 32 int8 q = round(x / d).
// Quantizing with the stored scale keeps every decoded q * d within d / 2 of x. llama.cpp
// rounds d to nearest and quantizes with the unrounded value, so its blocks can differ from
// these by one step in q. `out` holds values.size() / 32 * 34 bytes.
void QuantizeQ8_0(std::span<const float> values, std::span<std::byte> out);

// The llama.cpp per-frequency rotary divisors ([head_dim / 2]) of Llama 3 rope scaling:
// Transformers' scaled inverse frequency of pair i is the unscaled one divided by factor i.
std::vector<float> Llama3RopeFrequencyFactors(const ModelConfig& config);

}  // namespace w8a8
