#include "server/served_model.h"

#include <set>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/status_macros.h"
#include "core/weight_quantizer.h"
#include "nlohmann/json.hpp"

namespace w8a8::server {
namespace {

// Per-layer SQNR of the scheme each layer was planned with.
void CollectSqnr(const ModelAnalysis& analysis, const QuantPlan& plan, ServedModel& served) {
  for (const LayerAnalysis& layer : analysis.layers) {
    const LayerPlan* decision = plan.Find(layer.name);
    if (decision == nullptr) continue;
    switch (decision->scheme) {
      case WeightScheme::kPerTensor:
        served.weight_sqnr_db[layer.name] = layer.per_tensor.sqnr_db;
        break;
      case WeightScheme::kPerChannel:
        served.weight_sqnr_db[layer.name] = layer.per_channel.sqnr_db;
        break;
      case WeightScheme::kPerGroup:
        // The analysis figures hold for the analysis group size only.
        if (decision->group_size == layer.group_size) {
          served.weight_sqnr_db[layer.name] = layer.per_group.sqnr_db;
        }
        break;
      case WeightScheme::kFp:
        break;
    }
  }
}

}  // namespace

absl::StatusOr<ResolvedQuantization> ResolveQuantization(const Checkpoint& checkpoint,
                                                         const QuantizationRequest& request) {
  ResolvedQuantization resolved;
  resolved.plan_name = request.plan;
  if (checkpoint.quantization_config().has_value()) {
    if (request.config_text.has_value() || (!request.plan.empty() && request.plan != "stored")) {
      return absl::InvalidArgumentError(absl::StrCat(
          "plan '", request.plan, "' cannot apply to ", checkpoint.path().string(),
          ": the checkpoint stores quantized weights (compressed-tensors) and no FP32 source "
          "weights; use plan 'stored'"));
    }
    resolved.plan_name = "stored";
    resolved.stored = true;
    return resolved;
  }

  if (request.config_text.has_value()) {
    const std::string& text = *request.config_text;
    if (text.empty()) return absl::InvalidArgumentError("plan_json is empty");
    nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!json.is_discarded() && json.is_object() && json.contains("format")) {
      ASSIGN_OR_RETURN(QuantPlan plan, PlanFromJson(json, "plan_json"));
      resolved.plan = std::move(plan);
    } else {
      ASSIGN_OR_RETURN(QuantConfig config, ParseQuantConfig(text, "plan_json"));
      RETURN_IF_ERROR(config.Validate());
      resolved.config = std::move(config);
    }
    resolved.plan_name = request.plan.empty() ? "custom" : request.plan;
  } else if (request.plan == "auto") {
    resolved.config = QuantConfig{};
  } else if (request.plan == "fp32" || request.plan == "fp" || request.plan == "per-channel" ||
             request.plan == "per-group" || request.plan == "per-tensor") {
    ASSIGN_OR_RETURN(WeightScheme scheme, ParseWeightScheme(request.plan));
    QuantConfig config;
    config.scheme = scheme;
    resolved.config = std::move(config);
  } else if (request.plan.empty()) {
    return absl::InvalidArgumentError(
        "plan is empty: use fp32, per-channel, per-group, per-tensor, auto or a plan file");
  } else {
    // A plan or config file on the server's disk.
    ASSIGN_OR_RETURN(QuantPlan plan, ResolvePlan(checkpoint, request.plan));
    resolved.plan = std::move(plan);
  }

  if (resolved.plan.has_value()) {
    const std::vector<std::string> names = LinearLayerNames(checkpoint, /*include_lm_head=*/true);
    const std::set<std::string> known(names.begin(), names.end());
    for (const LayerPlan& layer : resolved.plan->layers) {
      if (!known.contains(layer.name)) {
        return absl::InvalidArgumentError(
            absl::StrCat("plan lists layer '", layer.name, "', which ",
                         checkpoint.path().string(), " does not have"));
      }
    }
  }
  return resolved;
}

absl::StatusOr<ServedModel> BuildServedModel(const Checkpoint& checkpoint,
                                             const ResolvedQuantization& quantization,
                                             const ModelOptions& model_options) {
  ServedModel served;
  served.plan_name = quantization.plan_name;
  LinearFactory factory;
  if (quantization.stored) {
    ASSIGN_OR_RETURN(factory, LinearFactoryForPlan(checkpoint, ""));
  } else {
    const absl::Time analysis_start = absl::Now();
    QuantConfig analysis_config;
    if (quantization.config.has_value()) analysis_config = *quantization.config;
    if (quantization.plan.has_value()) analysis_config.group_size = quantization.plan->group_size;
    ASSIGN_OR_RETURN(ModelAnalysis analysis, AnalyzeCheckpoint(checkpoint, analysis_config));
    if (quantization.plan.has_value()) {
      served.plan = *quantization.plan;
    } else {
      ASSIGN_OR_RETURN(QuantPlan plan, SelectPlan(analysis, *quantization.config));
      served.plan = std::move(plan);
    }
    served.analysis_seconds = absl::ToDoubleSeconds(absl::Now() - analysis_start);
    CollectSqnr(analysis, *served.plan, served);
    factory = LinearFactoryForQuantPlan(*served.plan);
  }

  const absl::Time build_start = absl::Now();
  ASSIGN_OR_RETURN(std::unique_ptr<Model> model,
                   Model::Create(checkpoint, factory, model_options));
  served.build_seconds = absl::ToDoubleSeconds(absl::Now() - build_start);
  for (const LinearLayerInfo& layer : model->LinearLayers()) {
    ++served.layers_per_scheme[layer.scheme];
  }
  served.model = std::move(model);
  return served;
}

}  // namespace w8a8::server
