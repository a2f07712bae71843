// Synthetic outlier weights: a labelled copy of a model in which a few layers get the kind of
// outsized weights that make per-channel W8A8 fail on LLaMA 3-70B. Used to test that the
// automatic plan finds such layers from the weights alone.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/checkpoint.h"

namespace w8a8 {

struct OutlierOptions {
  // Layer names ("model.layers.1.self_attn.q_proj"), or empty to draw `count` layers at random.
  std::vector<std::string> layers;
  int64_t count = 1;
  // Size of the outliers relative to the other weights (see InjectOutliers).
  double factor = 100.0;
  int64_t per_row = 1;  // Outlier weights in every row.
  uint64_t seed = 0;
};

// Returns the maximum number of layers that may be modified: 3% of the linear layers,
// rounded down, but at least 1.
int64_t MaxOutlierLayers(int64_t linear_layers);

// Parses a --layers argument: a count ("1") or comma-separated layer names.
absl::Status ParseOutlierLayers(const std::string& argument, OutlierOptions& options);

// Returns the layers that InjectOutliers modifies: the named ones, checked against the
// checkpoint, or `count` layers drawn with `seed`. Rejects more than MaxOutlierLayers.
absl::StatusOr<std::vector<std::string>> ChooseOutlierLayers(const Checkpoint& source,
                                                             const OutlierOptions& options);

// Writes a Hugging Face safetensors directory to `out_dir`: every tensor of `source`, with the
// chosen layers modified (stored as F32). In a down_proj or o_proj, the `per_row` least
// important input channels get columns of `factor` times the layer's RMS, and the rows of
// up_proj or v_proj that feed those channels are divided by the same scale, so the FP32 model
// computes the same function. Any other layer gets `per_row` weights per row, at random
// columns, set to `factor` times the row's RMS, which changes the model. config.json gains a
// "w8a8_synthetic" object and the safetensors metadata a "w8a8_synthetic" entry that name the
// modified layers, the factor and the seed. Returns the modified layer names.
absl::StatusOr<std::vector<std::string>> InjectOutliers(const Checkpoint& source,
                                                        const OutlierOptions& options,
                                                        const std::filesystem::path& out_dir);

}  // namespace w8a8
