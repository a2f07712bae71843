// Writing and serving compressed-tensors W8A8 checkpoints.
#include "core/compressed_tensors.h"

#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/quant_analysis.h"
#include "core/quantized_linear.h"
#include "core/status_macros.h"
#include "core/tokenizer_files.h"
#include "spdlog/spdlog.h"

namespace w8a8 {
namespace {

std::string StrategyName(WeightScheme scheme) {
  switch (scheme) {
    case WeightScheme::kPerTensor:
      return "tensor";
    case WeightScheme::kPerGroup:
      return "group";
    case WeightScheme::kPerChannel:
    case WeightScheme::kFp:
      break;
  }
  return "channel";
}

nlohmann::json WeightArgs(WeightScheme scheme, int64_t group_size) {
  return {{"num_bits", 8},
          {"type", "int"},
          {"symmetric", true},
          {"strategy", StrategyName(scheme)},
          {"group_size", scheme == WeightScheme::kPerGroup ? nlohmann::json(group_size)
                                                           : nlohmann::json(nullptr)},
          {"block_structure", nullptr},
          {"dynamic", false},
          {"actorder", nullptr},
          {"observer", "minmax"},
          {"observer_kwargs", nlohmann::json::object()}};
}

nlohmann::json ActivationArgs(ActivationScheme activations) {
  return {{"num_bits", 8},
          {"type", "int"},
          {"symmetric", true},
          {"strategy", activations == ActivationScheme::kPerToken ? "token" : "tensor"},
          {"group_size", nullptr},
          {"block_structure", nullptr},
          {"dynamic", true},
          {"actorder", nullptr},
          {"observer", nullptr},
          {"observer_kwargs", nlohmann::json::object()}};
}

// The weight and activation schemes of one config group.
struct StoredScheme {
  WeightScheme scheme = WeightScheme::kPerChannel;
  int64_t group_size = 0;
  ActivationScheme activations = ActivationScheme::kPerToken;
};

// A parsed config group with its targets.
struct ConfigGroup {
  std::string name;
  std::vector<std::string> exact_targets;
  std::vector<std::regex> regex_targets;
  bool targets_linear = false;
  StoredScheme stored;
};

absl::StatusOr<StoredScheme> ParseGroupScheme(const nlohmann::json& group, const std::string& where) {
  auto invalid = [&where](const std::string& message) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", message));
  };
  StoredScheme stored;
  if (!group.contains("weights") || !group["weights"].is_object()) {
    return invalid("missing \"weights\" object");
  }
  const nlohmann::json& weights = group["weights"];

  if (weights.value("num_bits", 0) != 8 || weights.value("type", "") != "int" ||
      !weights.value("symmetric", false)) {
    return invalid(absl::StrCat("weights ", weights.dump(),
                                " are not 8-bit symmetric int, the only kind this server runs"));
  }
  const std::string strategy = weights.value("strategy", "");
  if (strategy == "channel") {
    stored.scheme = WeightScheme::kPerChannel;
  } else if (strategy == "tensor") {
    stored.scheme = WeightScheme::kPerTensor;
  } else if (strategy == "group") {
    stored.scheme = WeightScheme::kPerGroup;
    if (!weights.contains("group_size") || !weights["group_size"].is_number_integer() ||
        weights["group_size"].get<int64_t>() < 1) {
      return invalid("weights.strategy \"group\" needs a positive integer group_size");
    }
    stored.group_size = weights["group_size"].get<int64_t>();
  } else {
    return invalid(absl::StrCat("unsupported weights.strategy \"", strategy,
                                "\": expected channel, group or tensor"));
  }

  if (!group.contains("input_activations") || !group["input_activations"].is_object()) {
    return invalid("missing \"input_activations\": weight-only checkpoints are not W8A8");
  }
  const nlohmann::json& inputs = group["input_activations"];
  if (inputs.value("num_bits", 0) != 8 || inputs.value("type", "") != "int" ||
      !inputs.value("symmetric", false)) {
    return invalid(absl::StrCat("input_activations ", inputs.dump(),
                                " are not 8-bit symmetric int"));
  }
  if (!inputs.contains("dynamic") || inputs["dynamic"] != true) {
    return invalid("input_activations.dynamic must be true: static activation scales are not "
                   "supported");
  }
  const std::string input_strategy = inputs.value("strategy", "");
  if (input_strategy == "token") {
    stored.activations = ActivationScheme::kPerToken;
  } else if (input_strategy == "tensor") {
    stored.activations = ActivationScheme::kPerTensor;
  } else {
    return invalid(absl::StrCat("unsupported input_activations.strategy \"", input_strategy,
                                "\": expected token or tensor"));
  }
  return stored;
}

// Matches a compressed-tensors "re:" target. The expression must match from the start of the
// name, as Python's re.match does. Targets without "re:" are exact layer names.
bool MatchesPrefixRegex(const std::string& name, const std::regex& pattern) {
  return std::regex_search(name, pattern, std::regex_constants::match_continuous);
}

absl::StatusOr<std::regex> CompileTarget(const std::string& target, const std::string& where) {
  try {
    return std::regex(target.substr(3), std::regex::ECMAScript);
  } catch (const std::regex_error& error) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": invalid regular expression '", target, "': ", error.what()));
  }
}

// The parsed quantization_config of a checkpoint.
struct StoredConfig {
  std::vector<ConfigGroup> groups;
  std::vector<std::string> exact_ignore;
  std::vector<std::regex> regex_ignore;

  bool Ignored(const std::string& name) const {
    for (const std::string& ignored : exact_ignore) {
      if (ignored == name) return true;
    }
    for (const std::regex& pattern : regex_ignore) {
      if (MatchesPrefixRegex(name, pattern)) return true;
    }
    return false;
  }

  // Exact names win over regular expressions, which win over the "Linear" class target.
  const ConfigGroup* GroupFor(const std::string& name) const {
    for (const ConfigGroup& group : groups) {
      for (const std::string& target : group.exact_targets) {
        if (target == name) return &group;
      }
    }
    for (const ConfigGroup& group : groups) {
      for (const std::regex& pattern : group.regex_targets) {
        if (MatchesPrefixRegex(name, pattern)) return &group;
      }
    }
    for (const ConfigGroup& group : groups) {
      if (group.targets_linear) return &group;
    }
    return nullptr;
  }
};

absl::StatusOr<StoredConfig> ParseStoredConfig(const nlohmann::json& config,
                                               const std::string& source) {
  const std::string where = absl::StrCat(source, " quantization_config");
  auto invalid = [&where](const std::string& message) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", message));
  };
  StoredConfig stored;
  try {
    const std::string format = config.value("format", "");
    if (format != "int-quantized") {
      return invalid(absl::StrCat("unsupported format \"", format,
                                  "\": only \"int-quantized\" (int8 weights) is served"));
    }
    if (!config.contains("config_groups") || !config["config_groups"].is_object() ||
        config["config_groups"].empty()) {
      return invalid("missing or empty \"config_groups\"");
    }
    for (const auto& [name, group] : config["config_groups"].items()) {
      const std::string group_where = absl::StrCat(where, ".config_groups.", name);
      ConfigGroup parsed;
      parsed.name = name;
      ASSIGN_OR_RETURN(parsed.stored, ParseGroupScheme(group, group_where));
      if (!group.contains("targets") || !group["targets"].is_array()) {
        return invalid(absl::StrCat("config group ", name, " has no \"targets\" list"));
      }
      for (const nlohmann::json& target_json : group["targets"]) {
        const std::string target = target_json.get<std::string>();
        if (target == "Linear") {
          parsed.targets_linear = true;
        } else if (absl::StartsWith(target, "re:")) {
          ASSIGN_OR_RETURN(std::regex pattern, CompileTarget(target, group_where));
          parsed.regex_targets.push_back(std::move(pattern));
        } else {
          parsed.exact_targets.push_back(target);
        }
      }
      stored.groups.push_back(std::move(parsed));
    }
    if (config.contains("ignore") && config["ignore"].is_array()) {
      for (const nlohmann::json& entry : config["ignore"]) {
        const std::string ignored = entry.get<std::string>();
        if (absl::StartsWith(ignored, "re:")) {
          ASSIGN_OR_RETURN(std::regex pattern, CompileTarget(ignored, where + ".ignore"));
          stored.regex_ignore.push_back(std::move(pattern));
        } else {
          stored.exact_ignore.push_back(ignored);
        }
      }
    }
  } catch (const nlohmann::json::exception& error) {
    return invalid(absl::StrCat("invalid field: ", error.what()));
  }
  return stored;
}

absl::StatusOr<QuantizedWeight> LoadStoredWeight(const Checkpoint& checkpoint,
                                                 const std::string& name, int64_t out_features,
                                                 int64_t in_features, const StoredScheme& stored) {
  const std::string source = checkpoint.path().string();
  const std::string weight_name = name + ".weight";
  ASSIGN_OR_RETURN(const TensorView weight, checkpoint.Tensor(weight_name));
  if (weight.dtype != DType::kI8 || weight.shape != std::vector<int64_t>{out_features, in_features}) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", weight_name, " in ", source, " is ", std::string(DTypeName(weight.dtype)),
        " of ", weight.shape.size(), " dimensions; expected I8 [", out_features, ", ",
        in_features, "] as the quantization_config says"));
  }
  QuantizedWeight result;
  result.scheme = stored.scheme;
  result.out_features = out_features;
  result.in_features = in_features;
  result.group_size = stored.group_size;
  result.values.resize(static_cast<size_t>(out_features * in_features));
  std::memcpy(result.values.data(), weight.data, result.values.size());

  const std::string scale_name = name + ".weight_scale";
  ASSIGN_OR_RETURN(const TensorView scale, checkpoint.Tensor(scale_name));
  std::vector<int64_t> expected_shape;
  switch (stored.scheme) {
    case WeightScheme::kPerTensor:
      expected_shape = {1};
      break;
    case WeightScheme::kPerGroup:
      expected_shape = {out_features, NumGroups(in_features, stored.group_size)};
      break;
    case WeightScheme::kPerChannel:
    case WeightScheme::kFp:
      expected_shape = {out_features, 1};
      break;
  }
  int64_t expected_count = 1;
  for (int64_t size : expected_shape) expected_count *= size;
  if (scale.num_elements() != expected_count) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", scale_name, " in ", source, " has ", scale.num_elements(),
        " elements, expected ", expected_count, " for strategy ", StrategyName(stored.scheme)));
  }
  ASSIGN_OR_RETURN(result.scales, ToFloat32(scale));

  const std::string zero_point_name = name + ".weight_zero_point";
  if (checkpoint.HasTensor(zero_point_name)) {
    ASSIGN_OR_RETURN(const TensorView zero_point, checkpoint.Tensor(zero_point_name));
    for (size_t i = 0; i < zero_point.size_bytes; ++i) {
      if (zero_point.data[i] != std::byte{0}) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor ", zero_point_name, " in ", source,
            " has non-zero entries: asymmetric weights are not supported"));
      }
    }
  }
  absl::Status valid = result.Validate();
  if (!valid.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", name, " in ", source, ": ", valid.message()));
  }
  return result;
}

}  // namespace

bool IsCompressedTensorsCheckpoint(const Checkpoint& checkpoint) {
  const std::optional<nlohmann::json>& config = checkpoint.quantization_config();
  return config.has_value() && config->is_object() &&
         config->value("quant_method", "") == "compressed-tensors";
}

absl::StatusOr<nlohmann::json> CompressedTensorsConfig(
    const QuantPlan& plan, const std::map<std::string, int64_t>& in_features) {
  // Quantized layers by (scheme, group size), in plan order.
  std::map<std::pair<WeightScheme, int64_t>, std::vector<std::string>> by_scheme;
  nlohmann::json ignore = nlohmann::json::array();
  bool lm_head_quantized = false;
  for (const LayerPlan& layer : plan.layers) {
    if (layer.scheme == WeightScheme::kFp) {
      ignore.push_back(layer.name);
      continue;
    }
    if (layer.name == "lm_head") lm_head_quantized = true;
    if (layer.scheme == WeightScheme::kPerGroup) {
      const auto found = in_features.find(layer.name);
      if (found == in_features.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("layer ", layer.name, " of the plan is not in the model"));
      }
      if (found->second % layer.group_size != 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "layer ", layer.name, " has ", found->second, " inputs, which group size ",
            layer.group_size,
            " does not divide: the compressed-tensors group strategy cannot store a shorter "
            "last group. Choose a group size that divides ", found->second,
            " (the in-memory plan supports it, the export does not)"));
      }
    }
    by_scheme[{layer.scheme, layer.group_size}].push_back(layer.name);
  }
  if (by_scheme.empty()) {
    return absl::InvalidArgumentError(
        "the plan quantizes no layer, so there is nothing to write as compressed-tensors");
  }
  if (!lm_head_quantized) ignore.push_back("lm_head");

  nlohmann::json groups = nlohmann::json::object();
  int index = 0;
  for (const auto& [key, names] : by_scheme) {
    nlohmann::json targets = nlohmann::json::array();
    if (by_scheme.size() == 1) {
      targets.push_back("Linear");
    } else {
      for (const std::string& name : names) targets.push_back(name);
    }
    groups[absl::StrCat("group_", index++)] = {
        {"targets", targets},
        {"weights", WeightArgs(key.first, key.second)},
        {"input_activations", ActivationArgs(plan.activations)},
        {"output_activations", nullptr}};
  }
  return nlohmann::json{{"quant_method", "compressed-tensors"},
                        {"format", "int-quantized"},
                        {"quantization_status", "compressed"},
                        {"config_groups", groups},
                        {"ignore", ignore},
                        {"kv_cache_scheme", nullptr},
                        {"global_compression_ratio", nullptr}};
}

absl::Status WriteCompressedTensors(const Checkpoint& source, const QuantPlan& plan,
                                    const std::filesystem::path& out_dir) {
  const std::string source_path = source.path().string();
  // Shapes of the planned layers, checked before anything is written.
  std::map<std::string, int64_t> in_features;
  std::map<std::string, const LayerPlan*> quantized_weights;  // Tensor name -> plan entry.
  for (const LayerPlan& layer : plan.layers) {
    ASSIGN_OR_RETURN(const std::string tensor_name, WeightTensorName(source, layer.name));
    ASSIGN_OR_RETURN(const TensorView view, source.Tensor(tensor_name));
    if (view.shape.size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", tensor_name, " in ", source_path,
                                                     " is not a 2-D weight matrix"));
    }
    in_features[layer.name] = view.shape[1];
    if (layer.scheme == WeightScheme::kFp) continue;
    if (tensor_name != layer.name + ".weight") {
      return absl::InvalidArgumentError(absl::StrCat(
          "layer ", layer.name, " shares its weight with ", tensor_name,
          ": a tied lm_head cannot be quantized for export; keep it full precision"));
    }
    quantized_weights[tensor_name] = &layer;
  }
  ASSIGN_OR_RETURN(nlohmann::json quantization_config, CompressedTensorsConfig(plan, in_features));

  std::error_code error;
  std::filesystem::create_directories(out_dir, error);
  if (error) {
    return absl::InternalError(absl::StrCat("cannot create output directory ", out_dir.string(),
                                            ": ", error.message()));
  }

  // Quantized data and converted tensors live here until the file is written; other tensors
  // are written straight from the memory map.
  std::vector<std::unique_ptr<QuantizedWeight>> quantized;
  std::vector<std::unique_ptr<std::vector<float>>> converted;
  std::vector<TensorToWrite> tensors;
  std::vector<float> buffer;
  for (const std::string& name : source.TensorNames()) {
    ASSIGN_OR_RETURN(const TensorView view, source.Tensor(name));
    const auto planned = quantized_weights.find(name);
    if (planned != quantized_weights.end()) {
      const LayerPlan& layer = *planned->second;
      buffer.resize(view.num_elements());
      RETURN_IF_ERROR(ToFloat32(view, buffer));
      absl::StatusOr<QuantizedWeight> weight = QuantizeWeight(
          buffer, view.shape[0], view.shape[1], layer.scheme, layer.group_size);
      if (!weight.ok()) {
        return absl::Status(weight.status().code(),
                            absl::StrCat("layer ", layer.name, ": ", weight.status().message()));
      }
      quantized.push_back(std::make_unique<QuantizedWeight>(std::move(*weight)));
      const QuantizedWeight& stored = *quantized.back();
      std::vector<int64_t> scale_shape;
      switch (stored.scheme) {
        case WeightScheme::kPerTensor:
          scale_shape = {1};
          break;
        case WeightScheme::kPerGroup:
          scale_shape = {stored.out_features, NumGroups(stored.in_features, stored.group_size)};
          break;
        case WeightScheme::kPerChannel:
        case WeightScheme::kFp:
          scale_shape = {stored.out_features, 1};
          break;
      }
      tensors.push_back({name, DType::kI8, view.shape,
                         std::as_bytes(std::span<const int8_t>(stored.values))});
      tensors.push_back({layer.name + ".weight_scale", DType::kF32, scale_shape,
                         std::as_bytes(std::span<const float>(stored.scales))});
      continue;
    }
    if (view.dtype == DType::kF32 || view.dtype == DType::kF16 || view.dtype == DType::kBF16 ||
        view.dtype == DType::kI8 || view.dtype == DType::kI32) {
      tensors.push_back({name, view.dtype, view.shape,
                         std::span<const std::byte>(view.data, view.size_bytes)});
      continue;
    }
    // Block-quantized GGUF tensors (Q8_0) have no safetensors dtype, so they become FP32.
    ASSIGN_OR_RETURN(std::vector<float> values, ToFloat32(view));
    converted.push_back(std::make_unique<std::vector<float>>(std::move(values)));
    tensors.push_back({name, DType::kF32, view.shape,
                       std::as_bytes(std::span<const float>(*converted.back()))});
  }
  RETURN_IF_ERROR(WriteSafetensors(out_dir / "model.safetensors", tensors, {{"format", "pt"}}));

  nlohmann::json config = source.format() == "safetensors" ? source.raw_config()
                                                           : ToHfConfigJson(source.config());
  config["quantization_config"] = quantization_config;
  std::ofstream config_file(out_dir / "config.json", std::ios::binary | std::ios::trunc);
  config_file << config.dump(2) << "\n";
  if (!config_file) {
    return absl::InternalError(
        absl::StrCat("failed to write ", (out_dir / "config.json").string()));
  }

  if (absl::Status status = WriteTokenizerFiles(source, out_dir); !status.ok()) {
    if (!absl::IsFailedPrecondition(status)) return status;
    spdlog::warn("{}, so {} has no tokenizer files", status.ToString(), out_dir.string());
  }
  spdlog::info("wrote compressed-tensors checkpoint {}: {} quantized layers", out_dir.string(),
               quantized.size());
  return absl::OkStatus();
}

absl::StatusOr<LinearFactory> CompressedTensorsLinearFactory(const Checkpoint& checkpoint) {
  if (!IsCompressedTensorsCheckpoint(checkpoint)) {
    return absl::InvalidArgumentError(absl::StrCat(
        checkpoint.path().string(),
        " has no quantization_config with quant_method \"compressed-tensors\""));
  }
  ASSIGN_OR_RETURN(StoredConfig parsed, ParseStoredConfig(*checkpoint.quantization_config(),
                                                          checkpoint.path().string()));
  auto stored = std::make_shared<const StoredConfig>(std::move(parsed));
  return LinearFactory(
      [stored](const Checkpoint& checkpoint, const std::string& name, int64_t out_features,
               int64_t in_features) -> absl::StatusOr<std::unique_ptr<LinearLayer>> {
        const ConfigGroup* group = stored->Ignored(name) ? nullptr : stored->GroupFor(name);
        if (group == nullptr) {
          if (IsSharedLmHead(checkpoint, name)) return std::unique_ptr<LinearLayer>();
          ASSIGN_OR_RETURN(const std::string tensor_name, WeightTensorName(checkpoint, name));
          return LoadUnquantizedLinear(checkpoint, name, tensor_name, out_features,
                                       in_features);
        }
        ASSIGN_OR_RETURN(
            const QuantizedWeight weight,
            LoadStoredWeight(checkpoint, name, out_features, in_features, group->stored));
        return MakeQuantizedLinear(weight, group->stored.activations);
      });
}

}  // namespace w8a8
