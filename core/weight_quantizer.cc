#include "core/weight_quantizer.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace w8a8 {
namespace {

constexpr float kInt8Max = 127.0f;

// Quantizes the `count` values at `w` with one scale and returns that scale.
float QuantizeSpan(const float* w, int8_t* q, int64_t count) {
  float max_abs = 0.0f;
  for (int64_t i = 0; i < count; ++i) max_abs = std::max(max_abs, std::fabs(w[i]));
  const float scale = Int8ScaleForMaxAbs(max_abs);
  const float inverse_scale = 1.0f / scale;
  for (int64_t i = 0; i < count; ++i) q[i] = QuantizeToInt8(w[i], inverse_scale);
  return scale;
}

}  // namespace

float Int8ScaleForMaxAbs(float max_abs) { return max_abs > 0.0f ? max_abs / kInt8Max : 1.0f; }

int8_t QuantizeToInt8(float value, float inverse_scale) {
  const float rounded = std::nearbyint(value * inverse_scale);
  return static_cast<int8_t>(std::clamp(rounded, -kInt8Max, kInt8Max));
}

std::string_view WeightSchemeName(WeightScheme scheme) {
  switch (scheme) {
    case WeightScheme::kFp:
      return "fp";
    case WeightScheme::kPerTensor:
      return "per-tensor";
    case WeightScheme::kPerChannel:
      return "per-channel";
    case WeightScheme::kPerGroup:
      return "per-group";
  }
  return "unknown";
}

absl::StatusOr<WeightScheme> ParseWeightScheme(std::string_view name) {
  if (name == "fp" || name == "fp32") return WeightScheme::kFp;
  if (name == "per-tensor") return WeightScheme::kPerTensor;
  if (name == "per-channel") return WeightScheme::kPerChannel;
  if (name == "per-group") return WeightScheme::kPerGroup;
  return absl::InvalidArgumentError(
      absl::StrCat("invalid weight scheme '", std::string(name),
                   "': expected fp, per-tensor, per-channel or per-group"));
}

int64_t NumGroups(int64_t in_features, int64_t group_size) {
  return (in_features + group_size - 1) / group_size;
}

int64_t LastGroupSize(int64_t in_features, int64_t group_size) {
  return in_features - (NumGroups(in_features, group_size) - 1) * group_size;
}

float QuantizedWeight::ScaleAt(int64_t row, int64_t column) const {
  switch (scheme) {
    case WeightScheme::kPerTensor:
      return scales[0];
    case WeightScheme::kPerGroup:
      return scales[row * NumGroups(in_features, group_size) + column / group_size];
    case WeightScheme::kPerChannel:
    case WeightScheme::kFp:
      break;
  }
  return scales[row];
}

absl::Status QuantizedWeight::Validate() const {
  if (out_features <= 0 || in_features <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("invalid quantized weight shape [",
                                                   out_features, ", ", in_features, "]"));
  }
  if (static_cast<int64_t>(values.size()) != out_features * in_features) {
    return absl::InvalidArgumentError(
        absl::StrCat("quantized weight has ", values.size(), " values, expected ",
                     out_features * in_features, " for shape [", out_features, ", ",
                     in_features, "]"));
  }
  int64_t expected_scales = 0;
  switch (scheme) {
    case WeightScheme::kFp:
      return absl::InvalidArgumentError("a quantized weight cannot have scheme fp");
    case WeightScheme::kPerTensor:
      expected_scales = 1;
      break;
    case WeightScheme::kPerChannel:
      expected_scales = out_features;
      break;
    case WeightScheme::kPerGroup:
      if (group_size < 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("invalid group size ", group_size, " for a per-group weight"));
      }
      expected_scales = out_features * NumGroups(in_features, group_size);
      break;
  }
  if (static_cast<int64_t>(scales.size()) != expected_scales) {
    return absl::InvalidArgumentError(absl::StrCat(
        std::string(WeightSchemeName(scheme)), " weight [", out_features, ", ", in_features, "] has ",
        scales.size(), " scales, expected ", expected_scales));
  }
  for (size_t i = 0; i < scales.size(); ++i) {
    if (!std::isfinite(scales[i]) || scales[i] <= 0.0f) {
      return absl::InvalidArgumentError(
          absl::StrCat("weight scale ", i, " is ", scales[i], ", expected a positive finite value"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<QuantizedWeight> QuantizeWeight(std::span<const float> weight, int64_t out_features,
                                               int64_t in_features, WeightScheme scheme,
                                               int64_t group_size) {
  if (out_features <= 0 || in_features <= 0 ||
      static_cast<int64_t>(weight.size()) != out_features * in_features) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight of ", weight.size(), " elements does not match shape [",
                     out_features, ", ", in_features, "]"));
  }
  if (scheme == WeightScheme::kFp) {
    return absl::InvalidArgumentError("QuantizeWeight called with scheme fp");
  }
  if (scheme == WeightScheme::kPerGroup && group_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid group size ", group_size, ": expected a positive integer"));
  }
  for (size_t i = 0; i < weight.size(); ++i) {
    if (!std::isfinite(weight[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "weight element ", i, " (row ", static_cast<int64_t>(i) / in_features, ") is ",
          weight[i], ": cannot quantize non-finite weights"));
    }
  }

  QuantizedWeight result;
  result.scheme = scheme;
  result.out_features = out_features;
  result.in_features = in_features;
  result.group_size = scheme == WeightScheme::kPerGroup ? group_size : 0;
  result.values.resize(weight.size());
  const float* w = weight.data();
  int8_t* q = result.values.data();

  switch (scheme) {
    case WeightScheme::kPerTensor:
      result.scales.push_back(QuantizeSpan(w, q, out_features * in_features));
      break;
    case WeightScheme::kPerChannel:
      result.scales.resize(out_features);
#pragma omp parallel for schedule(static)
      for (int64_t row = 0; row < out_features; ++row) {
        result.scales[row] =
            QuantizeSpan(w + row * in_features, q + row * in_features, in_features);
      }
      break;
    case WeightScheme::kPerGroup: {
      const int64_t groups = NumGroups(in_features, group_size);
      result.scales.resize(out_features * groups);
#pragma omp parallel for schedule(static)
      for (int64_t row = 0; row < out_features; ++row) {
        for (int64_t group = 0; group < groups; ++group) {
          const int64_t begin = group * group_size;
          const int64_t count = std::min(group_size, in_features - begin);
          const int64_t offset = row * in_features + begin;
          result.scales[row * groups + group] = QuantizeSpan(w + offset, q + offset, count);
        }
      }
      break;
    }
    case WeightScheme::kFp:
      break;
  }
  return result;
}

std::vector<float> DequantizeWeight(const QuantizedWeight& weight) {
  std::vector<float> result(weight.values.size());
  for (int64_t row = 0; row < weight.out_features; ++row) {
    for (int64_t column = 0; column < weight.in_features; ++column) {
      const int64_t i = row * weight.in_features + column;
      result[i] = static_cast<float>(weight.values[i]) * weight.ScaleAt(row, column);
    }
  }
  return result;
}

}  // namespace w8a8
