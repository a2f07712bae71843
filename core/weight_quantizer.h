// Symmetric int8 quantization of a weight matrix [out_features, in_features] with one scale
// per tensor, per output channel (row) or per group of consecutive inputs of a row.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace w8a8 {

enum class WeightScheme {
  kFp,          // Kept in FP32.
  kPerTensor,   // One scale for the whole matrix.
  kPerChannel,  // One scale per output row.
  kPerGroup,    // One scale per group of group_size consecutive inputs of a row.
};

// "fp", "per-tensor", "per-channel" or "per-group", as configs, plans and reports spell them.
std::string_view WeightSchemeName(WeightScheme scheme);
// Accepts the names above and "fp32" for kFp.
absl::StatusOr<WeightScheme> ParseWeightScheme(std::string_view name);

// Groups per row: ceil(in_features / group_size). The last group has
// in_features - (groups - 1) * group_size inputs.
int64_t NumGroups(int64_t in_features, int64_t group_size);
int64_t LastGroupSize(int64_t in_features, int64_t group_size);

// Int8 weights with their scales. `scales` has 1 entry (per-tensor), out_features entries
// (per-channel) or out_features * NumGroups entries, row-major (per-group).
// Dequantized weight = values[i] * scale of the row or group of i.
struct QuantizedWeight {
  WeightScheme scheme = WeightScheme::kPerChannel;
  int64_t out_features = 0;
  int64_t in_features = 0;
  int64_t group_size = 0;  // Per-group only, else 0.
  std::vector<int8_t> values;
  std::vector<float> scales;

  // Scale of element (row, column).
  float ScaleAt(int64_t row, int64_t column) const;
  // Checks that sizes agree with the scheme and shape.
  absl::Status Validate() const;
};

// Quantizes `weight` (row-major [out_features, in_features]): scale = max|w| / 127 over the
// tensor, row or group (1 when that max is 0), q = round(w / scale) clamped to [-127, 127].
// Rejects kFp, a group_size < 1 for kPerGroup, a size mismatch and non-finite weights.
absl::StatusOr<QuantizedWeight> QuantizeWeight(std::span<const float> weight, int64_t out_features,
                                               int64_t in_features, WeightScheme scheme,
                                               int64_t group_size);

// Returns values times scales as FP32, row-major.
std::vector<float> DequantizeWeight(const QuantizedWeight& weight);

// The rounding rule shared by QuantizeWeight and the error analysis, so both agree bit for bit:
// scale = max_abs / 127 (1 when max_abs is 0) and q = round-half-even(value / scale), clamped.
float Int8ScaleForMaxAbs(float max_abs);
int8_t QuantizeToInt8(float value, float inverse_scale);
}  // namespace w8a8
