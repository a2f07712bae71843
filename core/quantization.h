// W8A8 post-training quantization: configuration, per-layer analysis of the weights, the
// calibration-free choice between per-channel and per-group weight scales, and the entry point
// that turns a checkpoint and a plan into linear layers for the model.
//
// Weights are symmetric int8 in [-127, 127] with one scale per tensor, per output channel (row)
// or per group of G consecutive inputs of a row. Activations are symmetric int8, quantized on
// the fly with one scale per token (row) or one per matrix. Embeddings and norms always stay
// FP32 (the model loads them itself); lm_head stays FP32 unless the configuration requests it.
//
// Why per-group for a few layers only: a single weight of outsized magnitude forces a large
// per-channel scale on its whole row, and in LLaMA 3-70B a few layers have such weights.
// Giving those layers (fewer than 3% of them) per-group scales restores accuracy without
// calibration data (M. Qin, "The Uniqueness of LLaMA3-70B with Per-Channel Quantization",
// arXiv 2408.15301, 2024). The layers are found from their weights alone: their per-channel
// error is an outlier against the model's own distribution of per-channel errors.
//
// All functions here are thread-compatible: distinct objects may be used from distinct threads.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/checkpoint.h"
#include "core/linear.h"
#include "core/weight_quantizer.h"
#include "nlohmann/json.hpp"

namespace w8a8 {

enum class ActivationScheme {
  kPerToken,   // One dynamic scale per row of the input.
  kPerTensor,  // One dynamic scale for the whole input matrix.
};

// "per-token" or "per-tensor".
std::string_view ActivationSchemeName(ActivationScheme scheme);
absl::StatusOr<ActivationScheme> ParseActivationScheme(std::string_view name);

// Thresholds of the automatic plan. Let z = (log e - median) / (1.4826 * MAD) be the robust
// z-score of the natural log of a layer's per-channel error e over all analysed layers. A layer
// is an outlier when z exceeds `outlier_z` and e is at least `min_error_ratio` times the median
// error. The second test keeps a model whose errors are all nearly equal (tiny MAD) from
// getting per-group layers for noise.
struct PlanThresholds {
  double outlier_z = 3.5;
  double min_error_ratio = 2.0;
  // Upper bound on the fraction of analysed layers that get per-group scales, worst first. At
  // least one layer gets per-group when any layer is an outlier.
  double max_per_group_fraction = 0.03;
};

// A per-layer override: the first override whose regular expression matches the whole layer
// name ("model.layers.0.self_attn.q_proj", ECMAScript syntax) sets that layer's scheme.
struct LayerOverride {
  std::string pattern;
  WeightScheme scheme = WeightScheme::kPerChannel;
  std::optional<int64_t> group_size;  // Per-group only; the config's group size when unset.
};

// The contents of a quantization config file (JSON or YAML). Keys, all optional:
//   scheme: auto | per-channel | per-group | per-tensor | fp   (default auto)
//   group_size: positive integer                               (default 128)
//   activations: per-token | per-tensor                        (default per-token)
//   quantize_lm_head: bool                                     (default false)
//   thresholds: {outlier_z, min_error_ratio, max_per_group_fraction}
//   overrides: [{pattern, scheme, group_size}]
// Unknown keys are rejected.
struct QuantConfig {
  // Unset selects per layer from the weights (the automatic plan).
  std::optional<WeightScheme> scheme;
  int64_t group_size = 128;
  ActivationScheme activations = ActivationScheme::kPerToken;
  bool quantize_lm_head = false;
  PlanThresholds thresholds;
  std::vector<LayerOverride> overrides;

  // Checks ranges and compiles every override pattern; the message names the key and value.
  absl::Status Validate() const;
};

// Parses a config from JSON or YAML text (JSON is a subset of YAML, so both go through
// yaml-cpp). `source` names the file in error messages.
absl::StatusOr<QuantConfig> ParseQuantConfig(std::string_view text, const std::string& source);
absl::StatusOr<QuantConfig> ReadQuantConfig(const std::filesystem::path& path);
nlohmann::json QuantConfigToJson(const QuantConfig& config);

// Weight statistics of one linear layer and the error of each weight scheme on it.
struct SchemeError {
  double relative_error = 0.0;  // ||W - Q(W)||_F / ||W||_F; 0 for an all-zero weight.
  double sqnr_db = 0.0;         // 20 log10(||W|| / ||W - Q(W)||); +inf when exact.
};

struct LayerAnalysis {
  std::string name;  // Layer name without ".weight".
  int64_t out_features = 0;
  int64_t in_features = 0;
  double max_abs = 0.0;
  double stddev = 0.0;
  double kurtosis = 0.0;          // Fourth standardized moment (3 for a Gaussian).
  double worst_row_max_to_rms = 0.0;  // max over rows of max|w| / RMS(w) within the row.
  int64_t worst_row = 0;
  int64_t group_size = 0;        // The group size the per-group figures were computed with.
  int64_t last_group_size = 0;   // Shorter than group_size when group_size does not divide a row.
  SchemeError per_tensor;
  SchemeError per_channel;
  SchemeError per_group;
};

struct ModelAnalysis {
  std::string model;  // Checkpoint path.
  int64_t group_size = 0;
  // False when only names and shapes were read (fixed-scheme plans skip the weight statistics).
  bool has_figures = true;
  std::vector<LayerAnalysis> layers;  // In checkpoint order: layer by layer, q/k/v/o, gate/up/down.
};

// The decision for one linear layer and the figures behind it.
struct LayerPlan {
  std::string name;  // Layer name without ".weight".
  WeightScheme scheme = WeightScheme::kPerChannel;
  int64_t group_size = 0;       // Per-group only, else 0.
  int64_t last_group_size = 0;  // Per-group only: size of each row's last group.
  // Figures from the analysis (absent for plans from a fixed scheme without analysis).
  std::optional<double> per_channel_error;
  std::optional<double> per_group_error;
  std::optional<double> log_error_z;  // Robust z-score of log(per-channel error).
  std::optional<double> worst_row_max_to_rms;
  std::string reason;  // One line.
};

struct QuantPlan {
  ActivationScheme activations = ActivationScheme::kPerToken;
  int64_t group_size = 128;
  PlanThresholds thresholds;
  // Median and MAD of log(per-channel error) over the analysed layers (automatic plans).
  std::optional<double> median_log_error;
  std::optional<double> mad_log_error;
  // Every quantized or explicitly full-precision linear layer. A layer that is not listed is
  // served in FP32 (this covers lm_head unless quantize_lm_head is set).
  std::vector<LayerPlan> layers;

  const LayerPlan* Find(std::string_view name) const;
  int64_t CountScheme(WeightScheme scheme) const;
};

// The names of the linear layers of `checkpoint` ("model.layers.0.self_attn.q_proj", ...) in
// model order, plus "lm_head" when `include_lm_head`. A tied lm_head is quantized from the
// embedding matrix; without it in the plan, the model serves it from its FP32 embedding.
std::vector<std::string> LinearLayerNames(const Checkpoint& checkpoint, bool include_lm_head);

// Returns the weight tensor name of layer `name`: "<name>.weight", or the embedding for a tied
// lm_head.
absl::StatusOr<std::string> WeightTensorName(const Checkpoint& checkpoint,
                                             const std::string& name);

// Analyses every linear layer of `checkpoint` named by LinearLayerNames (OpenMP over rows of
// each layer). Reads the weights from the memory map one layer at a time.
absl::StatusOr<ModelAnalysis> AnalyzeCheckpoint(const Checkpoint& checkpoint,
                                                const QuantConfig& config);

// Builds the plan: overrides first, then the fixed scheme, or for the automatic plan
// per-group for the outlier layers and per-channel for the rest (see PlanThresholds).
absl::StatusOr<QuantPlan> SelectPlan(const ModelAnalysis& analysis, const QuantConfig& config);

// Analyses and plans in one call, for the `analyze` command and the AnalyzeQuantization RPC.
struct QuantizationReport {
  ModelAnalysis analysis;
  QuantPlan plan;
};
absl::StatusOr<QuantizationReport> AnalyzeQuantization(const Checkpoint& checkpoint,
                                                       const QuantConfig& config);
// {"model", "group_size", "layers": [{"name", "scheme", "group_size", figures..., "reason"}],
//  "plan": PlanToJson(plan)}.
nlohmann::json QuantizationReportToJson(const QuantizationReport& report);
// The per-layer table and a summary, for terminals.
std::string FormatQuantizationReport(const QuantizationReport& report);

// A plan file: {"format": "w8a8-plan", "version": 1, "activations", "group_size",
// "thresholds", "layers": [...]}. PlanFromJson rejects unknown schemes and missing fields.
nlohmann::json PlanToJson(const QuantPlan& plan);
absl::StatusOr<QuantPlan> PlanFromJson(const nlohmann::json& json, const std::string& source);

// Resolves a plan argument against `checkpoint`: "fp32", "per-channel", "per-group",
// "per-tensor", "auto", or a path to a plan file (JSON with "format": "w8a8-plan", or the
// output of `w8a8 analyze --json`) or a config file (JSON or YAML). A fixed scheme uses default settings (group size 128, per-token
// activations).
absl::StatusOr<QuantPlan> ResolvePlan(const Checkpoint& checkpoint, const std::string& plan);

// Returns a factory that builds each linear layer with the scheme `plan` lists, quantizing the FP32 weights
// of the checkpoint it is called with. Layers that the plan does not list are FP32.
LinearFactory LinearFactoryForQuantPlan(const QuantPlan& plan);

// The entry point the model, the server and the tools use. `plan` is one of the values
// ResolvePlan accepts, or empty: an empty plan serves a compressed-tensors checkpoint as
// stored (int8 weights and their scales) and any other checkpoint in FP32. A non-empty plan
// on a compressed-tensors checkpoint is rejected, since the FP32 weights are gone.
absl::StatusOr<LinearFactory> LinearFactoryForPlan(const Checkpoint& checkpoint,
                                                   const std::string& plan);

}  // namespace w8a8
