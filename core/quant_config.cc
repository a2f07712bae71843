// Parsing and validation of quantization config files (JSON or YAML).
#include <cmath>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/quantization.h"
#include "core/status_macros.h"
#include "yaml-cpp/yaml.h"

namespace w8a8 {
namespace {

// Rejects keys of `node` (a map) outside `allowed`; `where` names the map in the message.
absl::Status CheckKeys(const YAML::Node& node, const std::set<std::string>& allowed,
                       const std::string& source, const std::string& where) {
  for (const auto& entry : node) {
    const std::string key = entry.first.as<std::string>();
    if (!allowed.contains(key)) {
      std::string expected;
      for (const std::string& name : allowed) {
        absl::StrAppend(&expected, expected.empty() ? "" : ", ", name);
      }
      return absl::InvalidArgumentError(absl::StrCat(source, ": unknown key '", where, key,
                                                     "'; expected one of: ", expected));
    }
  }
  return absl::OkStatus();
}

std::string Describe(const YAML::Node& node) {
  if (node.IsScalar()) return absl::StrCat("'", node.Scalar(), "'");
  if (node.IsSequence()) return "a list";
  if (node.IsMap()) return "a map";
  return "null";
}

absl::StatusOr<std::string> ReadString(const YAML::Node& node, const std::string& source,
                                       const std::string& key) {
  if (!node.IsScalar()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": key '", key, "' is ", Describe(node), ", expected a string"));
  }
  return node.Scalar();
}

absl::StatusOr<int64_t> ReadInt(const YAML::Node& node, const std::string& source,
                                const std::string& key) {
  int64_t value = 0;
  if (!node.IsScalar() || !YAML::convert<int64_t>::decode(node, value)) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": key '", key, "' is ", Describe(node), ", expected an integer"));
  }
  return value;
}

absl::StatusOr<double> ReadDouble(const YAML::Node& node, const std::string& source,
                                  const std::string& key) {
  double value = 0;
  if (!node.IsScalar() || !YAML::convert<double>::decode(node, value)) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": key '", key, "' is ", Describe(node), ", expected a number"));
  }
  return value;
}

absl::StatusOr<bool> ReadBool(const YAML::Node& node, const std::string& source,
                              const std::string& key) {
  bool value = false;
  if (!node.IsScalar() || !YAML::convert<bool>::decode(node, value)) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": key '", key, "' is ",
                                                   Describe(node), ", expected true or false"));
  }
  return value;
}

absl::StatusOr<WeightScheme> ReadScheme(const YAML::Node& node, const std::string& source,
                                        const std::string& key) {
  ASSIGN_OR_RETURN(const std::string name, ReadString(node, source, key));
  absl::StatusOr<WeightScheme> scheme = ParseWeightScheme(name);
  if (!scheme.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": key '", key, "': ",
                                                   scheme.status().message()));
  }
  return *scheme;
}

absl::Status ParseThresholds(const YAML::Node& node, const std::string& source,
                             PlanThresholds& thresholds) {
  if (!node.IsMap()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": key 'thresholds' is ", Describe(node), ", expected a map"));
  }
  RETURN_IF_ERROR(CheckKeys(node, {"outlier_z", "min_error_ratio", "max_per_group_fraction"},
                            source, "thresholds."));
  if (node["outlier_z"]) {
    ASSIGN_OR_RETURN(thresholds.outlier_z,
                     ReadDouble(node["outlier_z"], source, "thresholds.outlier_z"));
  }
  if (node["min_error_ratio"]) {
    ASSIGN_OR_RETURN(thresholds.min_error_ratio,
                     ReadDouble(node["min_error_ratio"], source, "thresholds.min_error_ratio"));
  }
  if (node["max_per_group_fraction"]) {
    ASSIGN_OR_RETURN(thresholds.max_per_group_fraction,
                     ReadDouble(node["max_per_group_fraction"], source,
                                "thresholds.max_per_group_fraction"));
  }
  return absl::OkStatus();
}

absl::Status ParseOverrides(const YAML::Node& node, const std::string& source,
                            std::vector<LayerOverride>& overrides) {
  if (!node.IsSequence()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": key 'overrides' is ", Describe(node), ", expected a list"));
  }
  for (size_t i = 0; i < node.size(); ++i) {
    const YAML::Node& entry = node[i];
    const std::string where = absl::StrCat("overrides[", i, "]");
    if (!entry.IsMap()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": ", where, " is ", Describe(entry), ", expected a map"));
    }
    RETURN_IF_ERROR(CheckKeys(entry, {"pattern", "scheme", "group_size"}, source, where + "."));
    if (!entry["pattern"] || !entry["scheme"]) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": ", where, " needs both 'pattern' and 'scheme'"));
    }
    LayerOverride layer_override;
    ASSIGN_OR_RETURN(layer_override.pattern,
                     ReadString(entry["pattern"], source, where + ".pattern"));
    ASSIGN_OR_RETURN(layer_override.scheme,
                     ReadScheme(entry["scheme"], source, where + ".scheme"));
    if (entry["group_size"]) {
      ASSIGN_OR_RETURN(layer_override.group_size,
                       ReadInt(entry["group_size"], source, where + ".group_size"));
    }
    overrides.push_back(std::move(layer_override));
  }
  return absl::OkStatus();
}

absl::StatusOr<QuantConfig> ParseRoot(const YAML::Node& root, const std::string& source) {
  QuantConfig config;
  if (!root || root.IsNull()) return config;
  if (!root.IsMap()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": the quantization config is ", Describe(root), ", expected a map of keys"));
  }
  RETURN_IF_ERROR(CheckKeys(root,
                            {"scheme", "group_size", "activations", "quantize_lm_head",
                             "thresholds", "overrides"},
                            source, ""));

  if (root["scheme"]) {
    ASSIGN_OR_RETURN(const std::string scheme, ReadString(root["scheme"], source, "scheme"));
    if (scheme != "auto") {
      ASSIGN_OR_RETURN(config.scheme, ReadScheme(root["scheme"], source, "scheme"));
    }
  }
  if (root["group_size"]) {
    ASSIGN_OR_RETURN(config.group_size, ReadInt(root["group_size"], source, "group_size"));
  }
  if (root["activations"]) {
    ASSIGN_OR_RETURN(const std::string name,
                     ReadString(root["activations"], source, "activations"));
    absl::StatusOr<ActivationScheme> activations = ParseActivationScheme(name);
    if (!activations.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": key 'activations': ", activations.status().message()));
    }
    config.activations = *activations;
  }
  if (root["quantize_lm_head"]) {
    ASSIGN_OR_RETURN(config.quantize_lm_head,
                     ReadBool(root["quantize_lm_head"], source, "quantize_lm_head"));
  }

  if (root["thresholds"]) {
    RETURN_IF_ERROR(ParseThresholds(root["thresholds"], source, config.thresholds));
  }
  if (root["overrides"]) {
    RETURN_IF_ERROR(ParseOverrides(root["overrides"], source, config.overrides));
  }
  absl::Status valid = config.Validate();
  if (!valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", valid.message()));
  }
  return config;
}

}  // namespace

std::string_view ActivationSchemeName(ActivationScheme scheme) {
  return scheme == ActivationScheme::kPerTensor ? "per-tensor" : "per-token";
}

absl::StatusOr<ActivationScheme> ParseActivationScheme(std::string_view name) {
  if (name == "per-token") return ActivationScheme::kPerToken;
  if (name == "per-tensor") return ActivationScheme::kPerTensor;
  return absl::InvalidArgumentError(absl::StrCat("invalid activation scheme '", std::string(name),
                                                 "': expected per-token or per-tensor"));
}

absl::Status QuantConfig::Validate() const {
  constexpr int64_t kMaxGroupSize = int64_t{1} << 24;
  if (group_size < 1 || group_size > kMaxGroupSize) {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid group_size ", group_size, ": expected an integer in [1, ", kMaxGroupSize, "]"));
  }
  if (!std::isfinite(thresholds.outlier_z) || thresholds.outlier_z <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("invalid thresholds.outlier_z ",
                                                   thresholds.outlier_z,
                                                   ": expected a positive number such as 3.5"));
  }
  if (!std::isfinite(thresholds.min_error_ratio) || thresholds.min_error_ratio < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid thresholds.min_error_ratio ", thresholds.min_error_ratio,
        ": expected a number >= 1 (the error must be this many times the median)"));
  }
  if (!(thresholds.max_per_group_fraction >= 0 && thresholds.max_per_group_fraction <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("invalid thresholds.max_per_group_fraction ",
                                                   thresholds.max_per_group_fraction,
                                                   ": expected a number in [0, 1]"));
  }
  for (size_t i = 0; i < overrides.size(); ++i) {
    const LayerOverride& layer_override = overrides[i];
    try {
      std::regex compiled(layer_override.pattern, std::regex::ECMAScript);
    } catch (const std::regex_error& error) {
      return absl::InvalidArgumentError(absl::StrCat("invalid overrides[", i, "].pattern '",
                                                     layer_override.pattern,
                                                     "': ", error.what()));
    }
    if (layer_override.group_size.has_value() &&
        (*layer_override.group_size < 1 || *layer_override.group_size > kMaxGroupSize)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "invalid overrides[", i, "].group_size ", *layer_override.group_size,
          ": expected an integer in [1, ", kMaxGroupSize, "]"));
    }
    if (layer_override.group_size.has_value() && layer_override.scheme != WeightScheme::kPerGroup) {
      return absl::InvalidArgumentError(absl::StrCat(
          "overrides[", i, "] sets group_size with scheme ",
          std::string(WeightSchemeName(layer_override.scheme)),
          ": group_size applies to per-group only"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<QuantConfig> ParseQuantConfig(std::string_view text, const std::string& source) {
  try {
    const YAML::Node root = YAML::Load(std::string(text));
    return ParseRoot(root, source);
  } catch (const YAML::Exception& error) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": invalid JSON or YAML: ", error.what()));
  }
}

absl::StatusOr<QuantConfig> ReadQuantConfig(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("cannot open quantization config ", path.string(), ": check the path"));
  }
  std::stringstream contents;
  contents << in.rdbuf();
  return ParseQuantConfig(contents.str(), path.string());
}

nlohmann::json QuantConfigToJson(const QuantConfig& config) {
  nlohmann::json json;
  json["scheme"] = config.scheme.has_value() ? std::string(WeightSchemeName(*config.scheme)) : "auto";
  json["group_size"] = config.group_size;
  json["activations"] = std::string(ActivationSchemeName(config.activations));
  json["quantize_lm_head"] = config.quantize_lm_head;
  json["thresholds"] = {{"outlier_z", config.thresholds.outlier_z},
                        {"min_error_ratio", config.thresholds.min_error_ratio},
                        {"max_per_group_fraction", config.thresholds.max_per_group_fraction}};
  json["overrides"] = nlohmann::json::array();
  for (const LayerOverride& layer_override : config.overrides) {
    nlohmann::json entry = {{"pattern", layer_override.pattern},
                            {"scheme", std::string(WeightSchemeName(layer_override.scheme))}};
    if (layer_override.group_size.has_value()) entry["group_size"] = *layer_override.group_size;
    json["overrides"].push_back(entry);
  }
  return json;
}

}  // namespace w8a8
