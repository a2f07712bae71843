// Building a servable model from a checkpoint and a quantization request, with the facts the
// API and the metrics report about it.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "core/checkpoint.h"
#include "core/model.h"
#include "core/quantization.h"

namespace w8a8::server {

// The quantization of a served model: a policy name, or the text of a plan file or a
// quantization config.
struct QuantizationRequest {
  // "fp32", "per-channel", "per-group", "per-tensor", "auto", a path to a plan or config file,
  // or "custom" when `config_text` is set.
  std::string plan = "auto";
  // JSON of a plan ("format": "w8a8-plan") or a quantization config in JSON or YAML.
  std::optional<std::string> config_text;
};

// A request resolved against a checkpoint: either a finished plan or a config to plan with
// after analysing the weights. Cheap to build, so invalid requests fail before any
// re-quantization starts.
struct ResolvedQuantization {
  std::string plan_name;
  std::optional<QuantPlan> plan;      // Set for plan files.
  std::optional<QuantConfig> config;  // Set otherwise.
  // The checkpoint stores int8 weights already (compressed-tensors) and is served as stored.
  bool stored = false;
};

// Checks `request` against `checkpoint` without touching the weights: policy names, config
// ranges and override patterns, and that every layer a plan lists exists. INVALID_ARGUMENT
// names the field or layer at fault.
absl::StatusOr<ResolvedQuantization> ResolveQuantization(const Checkpoint& checkpoint,
                                                         const QuantizationRequest& request);

// A model built by BuildServedModel. Immutable, so shared freely between threads.
struct ServedModel {
  std::shared_ptr<const Model> model;
  std::string plan_name;
  std::optional<QuantPlan> plan;  // Unset for a checkpoint served as stored.
  std::map<std::string, int32_t> layers_per_scheme;
  // Signal-to-quantization-noise ratio of each quantized layer's weights under its scheme, in
  // decibels; FP32 layers are not listed.
  std::map<std::string, double> weight_sqnr_db;
  double analysis_seconds = 0;
  double build_seconds = 0;
};

// Analyses the weights when needed, plans, quantizes every linear layer and builds the model.
// Blocks for the whole build, which takes minutes for large checkpoints.
absl::StatusOr<ServedModel> BuildServedModel(const Checkpoint& checkpoint,
                                             const ResolvedQuantization& quantization,
                                             const ModelOptions& model_options);

}  // namespace w8a8::server
