// QuantizedLinear and the factories that build linear layers from a plan.
#include "core/quantized_linear.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/compressed_tensors.h"
#include "core/quant_analysis.h"
#include "core/status_macros.h"
#include "kernels/gemm.h"
#include "spdlog/spdlog.h"

namespace w8a8 {
namespace {

class QuantizedLinear : public LinearLayer {
 public:
  QuantizedLinear(std::unique_ptr<kernels::Int8Matmul> matmul, WeightScheme scheme,
                  ActivationScheme activations, size_t weight_bytes)
      : matmul_(std::move(matmul)),
        scheme_(scheme),
        activations_(activations),
        weight_bytes_(weight_bytes) {}

  void Forward(const float* x, int64_t m, float* y) const override {
    const int64_t k = matmul_->k();
    std::vector<int8_t> xq(static_cast<size_t>(m * k));
    std::vector<float> x_scales(static_cast<size_t>(m));
    if (activations_ == ActivationScheme::kPerToken) {
      kernels::QuantizePerToken(x, m, k, xq.data(), x_scales.data());
    } else {
      float scale = 1.0f;
      kernels::QuantizePerTensor(x, m, k, xq.data(), &scale);
      std::fill(x_scales.begin(), x_scales.end(), scale);
    }
    matmul_->Run(xq.data(), x_scales.data(), m, y);
  }

  bool takes_int8_per_token() const override {
    return activations_ == ActivationScheme::kPerToken;
  }

  void ForwardQuantized(const int8_t* xq, const float* scales, int64_t m,
                        float* y) const override {
    if (activations_ != ActivationScheme::kPerToken) {
      LinearLayer::ForwardQuantized(xq, scales, m, y);
      return;
    }
    matmul_->Run(xq, scales, m, y);
  }

  int64_t in_features() const override { return matmul_->k(); }
  int64_t out_features() const override { return matmul_->n(); }
  std::string scheme() const override { return std::string(WeightSchemeName(scheme_)); }
  size_t weight_bytes() const override { return weight_bytes_; }

 private:
  std::unique_ptr<kernels::Int8Matmul> matmul_;
  WeightScheme scheme_;
  ActivationScheme activations_;
  size_t weight_bytes_;
};

absl::StatusOr<std::vector<float>> LoadWeight(const Checkpoint& checkpoint,
                                              const std::string& name, int64_t out_features,
                                              int64_t in_features) {
  ASSIGN_OR_RETURN(const std::string tensor_name, WeightTensorName(checkpoint, name));
  return checkpoint.LoadFloat32(tensor_name, {out_features, in_features});
}

// Rejects a plan file written for another model: every planned layer must exist here.
absl::Status CheckPlanLayers(const Checkpoint& checkpoint, const QuantPlan& plan,
                             const std::string& source) {
  const std::vector<std::string> names = LinearLayerNames(checkpoint, /*include_lm_head=*/true);
  for (const LayerPlan& layer : plan.layers) {
    if (std::find(names.begin(), names.end(), layer.name) == names.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": layer ", layer.name, " is not a linear layer of ",
          checkpoint.path().string(), "; was the plan written for another model?"));
    }
  }
  return absl::OkStatus();
}

bool IsFixedSchemeName(const std::string& plan) {
  return plan == "fp32" || plan == "per-channel" || plan == "per-group" ||
         plan == "per-tensor" || plan == "auto";
}

// A plan from shapes alone, for configs with a fixed scheme: no weights are read.
absl::StatusOr<QuantPlan> PlanWithoutStatistics(const Checkpoint& checkpoint,
                                                const QuantConfig& config) {
  ModelAnalysis shapes;
  shapes.model = checkpoint.path().string();
  shapes.group_size = config.group_size;
  shapes.has_figures = false;
  for (const std::string& name : LinearLayerNames(checkpoint, config.quantize_lm_head)) {
    ASSIGN_OR_RETURN(const std::string tensor_name, WeightTensorName(checkpoint, name));
    ASSIGN_OR_RETURN(const TensorView view, checkpoint.Tensor(tensor_name));
    if (view.shape.size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", tensor_name, " in ",
                                                     checkpoint.path().string(),
                                                     " is not a 2-D weight matrix"));
    }
    LayerAnalysis layer;
    layer.name = name;
    layer.out_features = view.shape[0];
    layer.in_features = view.shape[1];
    layer.group_size = config.group_size;
    layer.last_group_size = LastGroupSize(layer.in_features, config.group_size);
    shapes.layers.push_back(std::move(layer));
  }
  return SelectPlan(shapes, config);
}

absl::StatusOr<QuantPlan> PlanFromConfig(const Checkpoint& checkpoint, const QuantConfig& config) {
  if (config.scheme.has_value()) return PlanWithoutStatistics(checkpoint, config);
  ASSIGN_OR_RETURN(const QuantizationReport report, AnalyzeQuantization(checkpoint, config));
  return report.plan;
}

}  // namespace

absl::StatusOr<std::unique_ptr<LinearLayer>> MakeQuantizedLinear(const QuantizedWeight& weight,
                                                                 ActivationScheme activations) {
  RETURN_IF_ERROR(weight.Validate());
  std::vector<float> scales = weight.scales;
  if (weight.scheme == WeightScheme::kPerTensor) {
    // Int8Matmul takes one scale per row for group size 0.
    scales.assign(static_cast<size_t>(weight.out_features), weight.scales[0]);
  }
  const int64_t group_size = weight.scheme == WeightScheme::kPerGroup ? weight.group_size : 0;
  ASSIGN_OR_RETURN(std::unique_ptr<kernels::Int8Matmul> matmul,
                   kernels::Int8Matmul::Create(weight.values, weight.out_features,
                                               weight.in_features, scales, group_size));
  const size_t weight_bytes = weight.values.size() + weight.scales.size() * sizeof(float);
  return std::make_unique<QuantizedLinear>(std::move(matmul), weight.scheme, activations,
                                           weight_bytes);
}

absl::StatusOr<QuantPlan> ResolvePlan(const Checkpoint& checkpoint, const std::string& plan) {
  if (IsFixedSchemeName(plan)) {
    QuantConfig config;
    if (plan != "auto") {
      ASSIGN_OR_RETURN(config.scheme, ParseWeightScheme(plan));
    }
    return PlanFromConfig(checkpoint, config);
  }
  const std::filesystem::path path(plan);
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid plan '", plan,
        "': expected fp32, per-channel, per-group, per-tensor, auto, or the path of a plan or "
        "config file"));
  }
  std::ifstream in(path, std::ios::binary);
  std::stringstream contents;
  contents << in.rdbuf();
  // A plan file is JSON with "format": "w8a8-plan", or the output of `w8a8 analyze --json`
  // with the plan under "plan". Anything else is a config file.
  const nlohmann::json json = nlohmann::json::parse(contents.str(), nullptr, false);
  const bool is_plan = !json.is_discarded() && json.is_object() && json.contains("format");
  const bool is_report = !json.is_discarded() && json.is_object() && json.contains("plan") &&
                         json["plan"].is_object();
  if (is_plan || is_report) {
    ASSIGN_OR_RETURN(QuantPlan parsed,
                     PlanFromJson(is_plan ? json : json["plan"], path.string()));
    RETURN_IF_ERROR(CheckPlanLayers(checkpoint, parsed, path.string()));
    return parsed;
  }
  ASSIGN_OR_RETURN(const QuantConfig config, ParseQuantConfig(contents.str(), path.string()));
  return PlanFromConfig(checkpoint, config);
}

LinearFactory LinearFactoryForQuantPlan(const QuantPlan& plan) {
  return [plan](const Checkpoint& checkpoint, const std::string& name, int64_t out_features,
                int64_t in_features) -> absl::StatusOr<std::unique_ptr<LinearLayer>> {
    const LayerPlan* layer = plan.Find(name);
    const bool full_precision = layer == nullptr || layer->scheme == WeightScheme::kFp;
    if (full_precision && IsSharedLmHead(checkpoint, name)) {
      return std::unique_ptr<LinearLayer>();
    }
    if (full_precision) {
      ASSIGN_OR_RETURN(const std::string tensor_name, WeightTensorName(checkpoint, name));
      return LoadUnquantizedLinear(checkpoint, name, tensor_name, out_features, in_features);
    }
    ASSIGN_OR_RETURN(std::vector<float> weight,
                     LoadWeight(checkpoint, name, out_features, in_features));
    absl::StatusOr<QuantizedWeight> quantized =
        QuantizeWeight(weight, out_features, in_features, layer->scheme, layer->group_size);
    if (!quantized.ok()) {
      return absl::Status(quantized.status().code(),
                          absl::StrCat("layer ", name, ": ", quantized.status().message()));
    }
    return MakeQuantizedLinear(*quantized, plan.activations);
  };
}

absl::StatusOr<LinearFactory> LinearFactoryForPlan(const Checkpoint& checkpoint,
                                                   const std::string& plan) {
  const bool compressed = IsCompressedTensorsCheckpoint(checkpoint);
  if (plan.empty()) {
    if (compressed) return CompressedTensorsLinearFactory(checkpoint);
    return Fp32LinearFactory();
  }
  if (compressed) {
    return absl::InvalidArgumentError(absl::StrCat(
        checkpoint.path().string(), " is already quantized (compressed-tensors), so plan '",
        plan, "' cannot be applied: pass an empty plan to serve it as stored"));
  }
  ASSIGN_OR_RETURN(const QuantPlan resolved, ResolvePlan(checkpoint, plan));
  spdlog::info("quantization plan for {}: {} per-channel, {} per-group, {} per-tensor, {} fp",
               checkpoint.path().string(), resolved.CountScheme(WeightScheme::kPerChannel),
               resolved.CountScheme(WeightScheme::kPerGroup),
               resolved.CountScheme(WeightScheme::kPerTensor),
               resolved.CountScheme(WeightScheme::kFp));
  return LinearFactoryForQuantPlan(resolved);
}

}  // namespace w8a8
