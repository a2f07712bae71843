// Per-layer weight analysis, the automatic plan, and plan and report serialization.
#include "core/quant_analysis.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <regex>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/linear.h"
#include "core/status_macros.h"

namespace w8a8 {
namespace {

constexpr double kMadToStddev = 1.4826;
constexpr double kMinMad = 1e-9;

// Squared error of quantizing `count` values at `w` with the scale for `max_abs`.
double SquaredError(const float* w, int64_t count, float max_abs) {
  const float scale = Int8ScaleForMaxAbs(max_abs);
  const float inverse_scale = 1.0f / scale;
  double sum = 0.0;
  for (int64_t i = 0; i < count; ++i) {
    const float dequantized = static_cast<float>(QuantizeToInt8(w[i], inverse_scale)) * scale;
    const double error = static_cast<double>(w[i]) - static_cast<double>(dequantized);
    sum += error * error;
  }
  return sum;
}

float MaxAbs(const float* w, int64_t count) {
  float max_abs = 0.0f;
  for (int64_t i = 0; i < count; ++i) max_abs = std::max(max_abs, std::fabs(w[i]));
  return max_abs;
}

SchemeError ErrorFromSums(double signal_squared, double error_squared) {
  SchemeError result;
  if (signal_squared <= 0.0) return result;
  result.relative_error = std::sqrt(error_squared / signal_squared);
  result.sqnr_db = error_squared > 0.0 ? 10.0 * std::log10(signal_squared / error_squared)
                                       : std::numeric_limits<double>::infinity();
  return result;
}

// JSON has no infinity or NaN, so non-finite figures become null.
nlohmann::json JsonNumber(double value) {
  if (!std::isfinite(value)) return nullptr;
  return value;
}

std::optional<double> OptionalNumber(const nlohmann::json& json, const char* key) {
  if (!json.contains(key) || json[key].is_null()) return std::nullopt;
  return json[key].get<double>();
}

std::string Percent(double fraction) { return absl::StrFormat("%.3f%%", 100.0 * fraction); }

}  // namespace

LayerAnalysis AnalyzeWeight(const std::string& name, std::span<const float> weight,
                            int64_t out_features, int64_t in_features, int64_t group_size) {
  LayerAnalysis result;
  result.name = name;
  result.out_features = out_features;
  result.in_features = in_features;
  result.group_size = group_size;
  result.last_group_size = LastGroupSize(in_features, group_size);
  const int64_t count = out_features * in_features;
  if (count <= 0 || static_cast<int64_t>(weight.size()) != count) return result;
  const float* w = weight.data();

  // Pass 1: row maxima and sums for the mean, RMS and the per-tensor scale.
  std::vector<float> row_max(out_features);
  std::vector<double> row_sum_squares(out_features);
  double sum = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : sum)
  for (int64_t row = 0; row < out_features; ++row) {
    const float* row_data = w + row * in_features;
    double row_sum = 0.0;
    double row_squares = 0.0;
    for (int64_t i = 0; i < in_features; ++i) {
      row_sum += row_data[i];
      row_squares += static_cast<double>(row_data[i]) * row_data[i];
    }
    row_max[row] = MaxAbs(row_data, in_features);
    row_sum_squares[row] = row_squares;
    sum += row_sum;
  }
  const float tensor_max = *std::max_element(row_max.begin(), row_max.end());
  const double mean = sum / static_cast<double>(count);
  result.max_abs = tensor_max;

  for (int64_t row = 0; row < out_features; ++row) {
    const double rms = std::sqrt(row_sum_squares[row] / static_cast<double>(in_features));
    const double ratio = rms > 0.0 ? row_max[row] / rms : 0.0;
    if (ratio > result.worst_row_max_to_rms) {
      result.worst_row_max_to_rms = ratio;
      result.worst_row = row;
    }
  }

  // Pass 2: central moments and the squared error of each scheme.
  const int64_t groups = NumGroups(in_features, group_size);
  double signal = 0.0;
  double second_moment = 0.0;
  double fourth_moment = 0.0;
  double tensor_error = 0.0;
  double channel_error = 0.0;
  double group_error = 0.0;
#pragma omp parallel for schedule(static) \
    reduction(+ : signal, second_moment, fourth_moment, tensor_error, channel_error, group_error)
  for (int64_t row = 0; row < out_features; ++row) {
    const float* row_data = w + row * in_features;
    for (int64_t i = 0; i < in_features; ++i) {
      const double deviation = row_data[i] - mean;
      const double squared = deviation * deviation;
      second_moment += squared;
      fourth_moment += squared * squared;
    }
    signal += row_sum_squares[row];
    tensor_error += SquaredError(row_data, in_features, tensor_max);
    channel_error += SquaredError(row_data, in_features, row_max[row]);
    for (int64_t group = 0; group < groups; ++group) {
      const int64_t begin = group * group_size;
      const int64_t size = std::min(group_size, in_features - begin);
      group_error += SquaredError(row_data + begin, size, MaxAbs(row_data + begin, size));
    }
  }
  const double variance = second_moment / static_cast<double>(count);
  result.stddev = std::sqrt(variance);
  result.kurtosis =
      variance > 0.0 ? (fourth_moment / static_cast<double>(count)) / (variance * variance) : 0.0;
  result.per_tensor = ErrorFromSums(signal, tensor_error);
  result.per_channel = ErrorFromSums(signal, channel_error);
  result.per_group = ErrorFromSums(signal, group_error);
  return result;
}

RobustStatistics MedianAndMad(std::vector<double> values) {
  RobustStatistics result;
  if (values.empty()) return result;
  auto median_of = [](std::vector<double>& sample) {
    std::sort(sample.begin(), sample.end());
    const size_t middle = sample.size() / 2;
    return sample.size() % 2 == 1 ? sample[middle] : 0.5 * (sample[middle - 1] + sample[middle]);
  };
  result.median = median_of(values);
  for (double& value : values) value = std::fabs(value - result.median);
  result.mad = median_of(values);
  return result;
}

double RobustZScore(double value, const RobustStatistics& statistics) {
  return (value - statistics.median) / (kMadToStddev * std::max(statistics.mad, kMinMad));
}

std::vector<std::string> LinearLayerNames(const Checkpoint& checkpoint, bool include_lm_head) {
  static constexpr const char* kProjections[] = {
      "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
      "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
  std::vector<std::string> names;
  for (int64_t layer = 0; layer < checkpoint.config().num_hidden_layers; ++layer) {
    for (const char* projection : kProjections) {
      names.push_back(absl::StrCat("model.layers.", layer, ".", projection));
    }
  }
  // A tied lm_head is quantized from the embedding matrix; the model keeps the FP32 embedding
  // for token lookups.
  if (include_lm_head && (checkpoint.HasTensor("lm_head.weight") ||
                          checkpoint.HasTensor("model.embed_tokens.weight"))) {
    names.push_back("lm_head");
  }
  return names;
}

absl::StatusOr<std::string> WeightTensorName(const Checkpoint& checkpoint,
                                             const std::string& name) {
  if (IsSharedLmHead(checkpoint, name)) return std::string("model.embed_tokens.weight");
  const std::string weight = name + ".weight";
  if (checkpoint.HasTensor(weight)) return weight;
  return absl::NotFoundError(absl::StrCat("tensor ", weight, " not found in ",
                                          checkpoint.path().string(),
                                          ": the checkpoint is not a complete LLaMA model"));
}

absl::StatusOr<ModelAnalysis> AnalyzeCheckpoint(const Checkpoint& checkpoint,
                                                const QuantConfig& config) {
  RETURN_IF_ERROR(config.Validate());
  ModelAnalysis analysis;
  analysis.model = checkpoint.path().string();
  analysis.group_size = config.group_size;
  std::vector<float> buffer;
  for (const std::string& name : LinearLayerNames(checkpoint, config.quantize_lm_head)) {
    ASSIGN_OR_RETURN(const std::string tensor_name, WeightTensorName(checkpoint, name));
    ASSIGN_OR_RETURN(const TensorView view, checkpoint.Tensor(tensor_name));
    if (view.shape.size() != 2 || view.shape[0] <= 0 || view.shape[1] <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", tensor_name, " in ", checkpoint.path().string(),
                       " is not a 2-D weight matrix"));
    }
    if (view.dtype == DType::kI8 || view.dtype == DType::kI32) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", tensor_name, " in ", checkpoint.path().string(), " has dtype ",
          std::string(DTypeName(view.dtype)),
          ": analysis needs float weights, not an already quantized checkpoint"));
    }
    buffer.resize(view.num_elements());
    RETURN_IF_ERROR(ToFloat32(view, buffer));
    analysis.layers.push_back(
        AnalyzeWeight(name, buffer, view.shape[0], view.shape[1], config.group_size));
  }
  return analysis;
}

absl::StatusOr<QuantPlan> SelectPlan(const ModelAnalysis& analysis, const QuantConfig& config) {
  RETURN_IF_ERROR(config.Validate());
  QuantPlan plan;
  plan.activations = config.activations;
  plan.group_size = config.group_size;
  plan.thresholds = config.thresholds;

  std::vector<std::regex> patterns;
  for (const LayerOverride& layer_override : config.overrides) {
    patterns.emplace_back(layer_override.pattern, std::regex::ECMAScript);
  }

  RobustStatistics statistics;
  if (analysis.has_figures) {
    std::vector<double> log_errors;
    for (const LayerAnalysis& layer : analysis.layers) {
      log_errors.push_back(std::log(std::max(layer.per_channel.relative_error, 1e-30)));
    }
    statistics = MedianAndMad(log_errors);
    plan.median_log_error = statistics.median;
    plan.mad_log_error = statistics.mad;
  }
  const double median_error = std::exp(statistics.median);

  // Automatic candidates: outliers that no override claims, worst first.
  std::vector<std::pair<double, size_t>> outliers;
  for (size_t i = 0; i < analysis.layers.size(); ++i) {
    const LayerAnalysis& layer = analysis.layers[i];
    LayerPlan entry;
    entry.name = layer.name;
    if (analysis.has_figures) {
      entry.per_channel_error = layer.per_channel.relative_error;
      entry.per_group_error = layer.per_group.relative_error;
      entry.worst_row_max_to_rms = layer.worst_row_max_to_rms;
      entry.log_error_z = RobustZScore(
          std::log(std::max(layer.per_channel.relative_error, 1e-30)), statistics);
    }

    std::optional<size_t> matched;
    for (size_t p = 0; p < patterns.size() && !matched; ++p) {
      if (std::regex_match(layer.name, patterns[p])) matched = p;
    }
    if (matched.has_value()) {
      const LayerOverride& layer_override = config.overrides[*matched];
      entry.scheme = layer_override.scheme;
      if (entry.scheme == WeightScheme::kPerGroup) {
        entry.group_size = layer_override.group_size.value_or(config.group_size);
      }
      entry.reason = absl::StrCat("override '", layer_override.pattern, "' sets ",
                                  std::string(WeightSchemeName(entry.scheme)));
    } else if (config.scheme.has_value()) {
      entry.scheme = *config.scheme;
      if (entry.scheme == WeightScheme::kPerGroup) entry.group_size = config.group_size;
      entry.reason = absl::StrCat("the configuration sets ",
                                  std::string(WeightSchemeName(entry.scheme)), " for every layer");
    } else if (!analysis.has_figures) {
      return absl::InvalidArgumentError(
          "the automatic plan needs weight statistics, but the analysis has none");
    } else {
      entry.scheme = WeightScheme::kPerChannel;
      const double z = *entry.log_error_z;
      const double ratio = layer.per_channel.relative_error / median_error;
      if (z > config.thresholds.outlier_z && ratio >= config.thresholds.min_error_ratio) {
        outliers.emplace_back(z, i);
      } else {
        entry.reason = absl::StrFormat(
            "per-channel error %s is %.1fx the model median %s (robust z %.2f <= %.2f or ratio "
            "< %.1f)",
            Percent(layer.per_channel.relative_error), ratio, Percent(median_error), z,
            config.thresholds.outlier_z, config.thresholds.min_error_ratio);
      }
    }
    if (entry.scheme == WeightScheme::kPerGroup) {
      entry.last_group_size = LastGroupSize(layer.in_features, entry.group_size);
    }
    plan.layers.push_back(std::move(entry));
  }

  // The per-group budget: a fraction of the analysed layers, at least one when any is an
  // outlier.
  std::sort(outliers.begin(), outliers.end(),
            [](const auto& a, const auto& b) { return a.first > b.first; });
  const size_t budget = std::max<size_t>(
      1, static_cast<size_t>(std::floor(config.thresholds.max_per_group_fraction *
                                        static_cast<double>(analysis.layers.size()))));
  for (size_t rank = 0; rank < outliers.size(); ++rank) {
    const size_t i = outliers[rank].second;
    const LayerAnalysis& layer = analysis.layers[i];
    LayerPlan& entry = plan.layers[i];
    const double ratio = layer.per_channel.relative_error / median_error;
    const std::string figures = absl::StrFormat(
        "per-channel error %s is %.1fx the model median %s (robust z %.2f > %.2f)",
        Percent(layer.per_channel.relative_error), ratio, Percent(median_error),
        outliers[rank].first, config.thresholds.outlier_z);
    if (rank < budget) {
      entry.scheme = WeightScheme::kPerGroup;
      entry.group_size = config.group_size;
      entry.last_group_size = LastGroupSize(layer.in_features, config.group_size);
      entry.reason = absl::StrCat(figures, "; per-group (G=", config.group_size, ") error ",
                                  Percent(layer.per_group.relative_error));
      if (config.group_size >= layer.in_features) {
        absl::StrAppend(&entry.reason, "; the group covers the whole row of ", layer.in_features,
                        " inputs, so it equals per-channel: set a smaller group_size");
      }
    } else {
      entry.reason = absl::StrCat(figures, ", but the per-group budget of ", budget,
                                  " layers went to worse layers");
    }
  }
  return plan;
}

absl::StatusOr<QuantizationReport> AnalyzeQuantization(const Checkpoint& checkpoint,
                                                       const QuantConfig& config) {
  QuantizationReport report;
  ASSIGN_OR_RETURN(report.analysis, AnalyzeCheckpoint(checkpoint, config));
  ASSIGN_OR_RETURN(report.plan, SelectPlan(report.analysis, config));
  return report;
}

const LayerPlan* QuantPlan::Find(std::string_view name) const {
  for (const LayerPlan& layer : layers) {
    if (layer.name == name) return &layer;
  }
  return nullptr;
}

int64_t QuantPlan::CountScheme(WeightScheme scheme) const {
  return std::count_if(layers.begin(), layers.end(),
                       [scheme](const LayerPlan& layer) { return layer.scheme == scheme; });
}

nlohmann::json PlanToJson(const QuantPlan& plan) {
  nlohmann::json json;
  json["format"] = "w8a8-plan";
  json["version"] = 1;
  json["activations"] = std::string(ActivationSchemeName(plan.activations));
  json["group_size"] = plan.group_size;
  json["thresholds"] = {{"outlier_z", plan.thresholds.outlier_z},
                        {"min_error_ratio", plan.thresholds.min_error_ratio},
                        {"max_per_group_fraction", plan.thresholds.max_per_group_fraction}};
  json["median_log_error"] =
      plan.median_log_error.has_value() ? JsonNumber(*plan.median_log_error) : nullptr;
  json["mad_log_error"] =
      plan.mad_log_error.has_value() ? JsonNumber(*plan.mad_log_error) : nullptr;
  json["layers"] = nlohmann::json::array();
  for (const LayerPlan& layer : plan.layers) {
    nlohmann::json entry;
    entry["name"] = layer.name;
    entry["scheme"] = std::string(WeightSchemeName(layer.scheme));
    entry["group_size"] = layer.group_size;
    entry["last_group_size"] = layer.last_group_size;
    auto optional = [](const std::optional<double>& value) -> nlohmann::json {
      return value.has_value() ? JsonNumber(*value) : nlohmann::json(nullptr);
    };
    entry["per_channel_error"] = optional(layer.per_channel_error);
    entry["per_group_error"] = optional(layer.per_group_error);
    entry["log_error_z"] = optional(layer.log_error_z);
    entry["worst_row_max_to_rms"] = optional(layer.worst_row_max_to_rms);
    entry["reason"] = layer.reason;
    json["layers"].push_back(entry);
  }
  return json;
}

absl::StatusOr<QuantPlan> PlanFromJson(const nlohmann::json& json, const std::string& source) {
  auto invalid = [&source](const std::string& message) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", message));
  };
  if (!json.is_object()) return invalid("a plan file must be a JSON object");
  if (json.value("format", "") != "w8a8-plan") {
    return invalid("missing \"format\": \"w8a8-plan\"; write plan files with `w8a8 analyze --json`");
  }
  if (!json.contains("version") || json["version"] != 1) {
    return invalid(absl::StrCat("unsupported plan version ",
                                json.contains("version") ? json["version"].dump() : "(missing)",
                                ": expected 1"));
  }
  static const std::set<std::string> kKeys = {"format",     "version",          "activations",
                                              "group_size", "thresholds",       "median_log_error",
                                              "mad_log_error", "layers"};
  static const std::set<std::string> kLayerKeys = {
      "name",          "scheme",      "group_size",       "last_group_size", "per_channel_error",
      "per_group_error", "log_error_z", "worst_row_max_to_rms", "reason"};
  for (const auto& [key, value] : json.items()) {
    if (!kKeys.contains(key)) return invalid(absl::StrCat("unknown key '", key, "' in the plan"));
  }
  QuantPlan plan;
  try {
    if (json.contains("activations")) {
      absl::StatusOr<ActivationScheme> activations =
          ParseActivationScheme(json["activations"].get<std::string>());
      if (!activations.ok()) return invalid(std::string(activations.status().message()));
      plan.activations = *activations;
    }
    if (json.contains("group_size")) plan.group_size = json["group_size"].get<int64_t>();
    if (json.contains("thresholds")) {
      const nlohmann::json& thresholds = json["thresholds"];
      plan.thresholds.outlier_z = thresholds.value("outlier_z", plan.thresholds.outlier_z);
      plan.thresholds.min_error_ratio =
          thresholds.value("min_error_ratio", plan.thresholds.min_error_ratio);
      plan.thresholds.max_per_group_fraction =
          thresholds.value("max_per_group_fraction", plan.thresholds.max_per_group_fraction);
    }
    plan.median_log_error = OptionalNumber(json, "median_log_error");
    plan.mad_log_error = OptionalNumber(json, "mad_log_error");
    if (!json.contains("layers") || !json["layers"].is_array()) {
      return invalid("missing \"layers\" array");
    }
    for (size_t i = 0; i < json["layers"].size(); ++i) {
      const nlohmann::json& entry = json["layers"][i];
      const std::string where = absl::StrCat("layers[", i, "]");
      if (!entry.is_object() || !entry.contains("name") || !entry.contains("scheme")) {
        return invalid(absl::StrCat(where, " needs \"name\" and \"scheme\""));
      }
      for (const auto& [key, value] : entry.items()) {
        if (!kLayerKeys.contains(key)) {
          return invalid(absl::StrCat("unknown key '", key, "' in ", where));
        }
      }
      LayerPlan layer;
      layer.name = entry["name"].get<std::string>();
      absl::StatusOr<WeightScheme> scheme = ParseWeightScheme(entry["scheme"].get<std::string>());
      if (!scheme.ok()) {
        return invalid(absl::StrCat(where, " (", layer.name, "): ", scheme.status().message()));
      }
      layer.scheme = *scheme;
      layer.group_size = entry.value("group_size", int64_t{0});
      layer.last_group_size = entry.value("last_group_size", int64_t{0});
      if (layer.scheme == WeightScheme::kPerGroup && layer.group_size < 1) {
        return invalid(absl::StrCat(where, " (", layer.name, "): per-group needs group_size >= 1, got ",
                                    layer.group_size));
      }
      if (layer.scheme != WeightScheme::kPerGroup) layer.group_size = 0;
      layer.per_channel_error = OptionalNumber(entry, "per_channel_error");
      layer.per_group_error = OptionalNumber(entry, "per_group_error");
      layer.log_error_z = OptionalNumber(entry, "log_error_z");
      layer.worst_row_max_to_rms = OptionalNumber(entry, "worst_row_max_to_rms");
      layer.reason = entry.value("reason", "");
      if (plan.Find(layer.name) != nullptr) {
        return invalid(absl::StrCat(where, ": layer ", layer.name, " is listed twice"));
      }
      plan.layers.push_back(std::move(layer));
    }
  } catch (const nlohmann::json::exception& error) {
    return invalid(absl::StrCat("invalid plan field: ", error.what()));
  }
  if (plan.group_size < 1) {
    return invalid(absl::StrCat("invalid group_size ", plan.group_size, ": expected >= 1"));
  }
  return plan;
}

nlohmann::json QuantizationReportToJson(const QuantizationReport& report) {
  nlohmann::json json;
  json["model"] = report.analysis.model;
  json["group_size"] = report.analysis.group_size;
  json["layers"] = nlohmann::json::array();
  for (const LayerAnalysis& layer : report.analysis.layers) {
    const LayerPlan* decision = report.plan.Find(layer.name);
    nlohmann::json entry;
    entry["name"] = layer.name;
    entry["scheme"] = std::string(WeightSchemeName(
        decision != nullptr ? decision->scheme : WeightScheme::kFp));
    entry["group_size"] = decision != nullptr ? decision->group_size : 0;
    entry["last_group_size"] = decision != nullptr ? decision->last_group_size : 0;
    entry["out_features"] = layer.out_features;
    entry["in_features"] = layer.in_features;
    entry["max_abs"] = JsonNumber(layer.max_abs);
    entry["stddev"] = JsonNumber(layer.stddev);
    entry["kurtosis"] = JsonNumber(layer.kurtosis);
    entry["worst_row"] = layer.worst_row;
    entry["worst_row_max_to_rms"] = JsonNumber(layer.worst_row_max_to_rms);
    auto errors = [](const SchemeError& error) {
      return nlohmann::json{{"relative_error", JsonNumber(error.relative_error)},
                            {"sqnr_db", JsonNumber(error.sqnr_db)}};
    };
    entry["per_tensor"] = errors(layer.per_tensor);
    entry["per_channel"] = errors(layer.per_channel);
    entry["per_group"] = errors(layer.per_group);
    entry["analysis_group_size"] = layer.group_size;
    entry["analysis_last_group_size"] = layer.last_group_size;
    if (decision != nullptr && decision->log_error_z.has_value()) {
      entry["log_error_z"] = JsonNumber(*decision->log_error_z);
    }
    entry["reason"] = decision != nullptr ? decision->reason : "not in the plan: kept in FP32";
    json["layers"].push_back(entry);
  }
  json["plan"] = PlanToJson(report.plan);
  return json;
}

std::string FormatQuantizationReport(const QuantizationReport& report) {
  std::string text = absl::StrFormat(
      "%-34s %11s %9s %9s %8s %8s %9s %9s %9s %8s %7s %s\n", "layer", "shape", "max|w|", "std",
      "kurtosis", "row m/r", "err tens", "err chan", "err grp", "SQNR ch", "z", "scheme");
  for (const LayerAnalysis& layer : report.analysis.layers) {
    const LayerPlan* decision = report.plan.Find(layer.name);
    std::string scheme = decision != nullptr ? std::string(WeightSchemeName(decision->scheme)) : "fp";
    if (decision != nullptr && decision->scheme == WeightScheme::kPerGroup) {
      absl::StrAppend(&scheme, " G=", decision->group_size);
    }
    const double z = decision != nullptr ? decision->log_error_z.value_or(0.0) : 0.0;
    absl::StrAppend(
        &text,
        absl::StrFormat("%-34s %11s %9.4f %9.4f %8.2f %8.2f %9s %9s %9s %8.2f %7.2f %s\n",
                        layer.name, absl::StrCat(layer.out_features, "x", layer.in_features),
                        layer.max_abs, layer.stddev, layer.kurtosis, layer.worst_row_max_to_rms,
                        Percent(layer.per_tensor.relative_error),
                        Percent(layer.per_channel.relative_error),
                        Percent(layer.per_group.relative_error), layer.per_channel.sqnr_db, z,
                        scheme));
  }
  const QuantPlan& plan = report.plan;
  absl::StrAppend(&text,
                  absl::StrFormat("\nplan: %d per-channel, %d per-group (G=%d), %d per-tensor, "
                                  "%d fp of %d layers; activations %s\n",
                                  plan.CountScheme(WeightScheme::kPerChannel),
                                  plan.CountScheme(WeightScheme::kPerGroup), plan.group_size,
                                  plan.CountScheme(WeightScheme::kPerTensor),
                                  plan.CountScheme(WeightScheme::kFp), plan.layers.size(),
                                  std::string(ActivationSchemeName(plan.activations))));
  for (const LayerPlan& layer : plan.layers) {
    if (layer.scheme != WeightScheme::kPerChannel) {
      absl::StrAppend(&text, "  ", layer.name, ": ", std::string(WeightSchemeName(layer.scheme)),
                      ": ", layer.reason, "\n");
    }
  }
  return text;
}

}  // namespace w8a8
