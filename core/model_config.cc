#include "core/model_config.h"

#include <fstream>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status_macros.h"
#include "nlohmann/json.hpp"

namespace w8a8 {
namespace {

using nlohmann::json;

constexpr absl::string_view kLlamaArchitecture = "LlamaForCausalLM";

absl::Status KeyError(const std::string& source, const std::string& key, absl::string_view problem,
                      const json& value) {
  return absl::InvalidArgumentError(
      absl::StrCat(source, ": key '", key, "' ", problem, ", got ", value.dump()));
}

// Reads an optional integer key; absent or null leaves `out` unchanged.
absl::Status ReadInt(const json& object, const std::string& key, const std::string& source,
                     int64_t& out) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number_integer()) return KeyError(source, key, "must be an integer", *it);
  out = it->get<int64_t>();
  return absl::OkStatus();
}

absl::Status ReadRequiredInt(const json& object, const std::string& key, const std::string& source,
                             int64_t& out) {
  if (!object.contains(key) || object.at(key).is_null()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": required key '", key, "' is missing"));
  }
  return ReadInt(object, key, source, out);
}

absl::Status ReadDouble(const json& object, const std::string& key, const std::string& source,
                        double& out) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number()) return KeyError(source, key, "must be a number", *it);
  out = it->get<double>();
  return absl::OkStatus();
}

absl::Status ReadBool(const json& object, const std::string& key, const std::string& source,
                      bool& out) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_boolean()) return KeyError(source, key, "must be true or false", *it);
  out = it->get<bool>();
  return absl::OkStatus();
}

// Token ids come as a single integer or a list of integers (Llama 3.1 lists several eos ids).
absl::StatusOr<std::vector<int32_t>> ReadTokenIds(const json& value, const std::string& key,
                                                  const std::string& source) {
  const auto to_id = [&](const json& item) -> absl::StatusOr<int32_t> {
    if (!item.is_number_integer() || item.get<int64_t>() < 0 ||
        item.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
      return KeyError(source, key, "must be a non-negative token id or a list of them", value);
    }
    return static_cast<int32_t>(item.get<int64_t>());
  };
  std::vector<int32_t> ids;
  if (value.is_array()) {
    for (const json& item : value) {
      ASSIGN_OR_RETURN(const int32_t id, to_id(item));
      ids.push_back(id);
    }
  } else {
    ASSIGN_OR_RETURN(const int32_t id, to_id(value));
    ids.push_back(id);
  }
  return ids;
}

absl::StatusOr<json> ReadJsonFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("failed to open ", path.string()));
  }
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  json parsed = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path.string(), " is not valid JSON; check the file for truncation"));
  }
  if (!parsed.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path.string(), " must contain a JSON object at the top level"));
  }
  return parsed;
}

absl::StatusOr<std::optional<Llama3RopeScaling>> ParseRopeScaling(const json& object,
                                                                 const std::string& source) {
  const auto it = object.find("rope_scaling");
  if (it == object.end() || it->is_null()) return std::optional<Llama3RopeScaling>();
  const json& scaling = *it;
  if (!scaling.is_object()) {
    return KeyError(source, "rope_scaling", "must be an object or null", scaling);
  }
  // Newer Transformers versions write "rope_type" and older files "type".
  std::string type;
  for (const char* key : {"rope_type", "type"}) {
    if (scaling.contains(key) && scaling.at(key).is_string()) {
      type = scaling.at(key).get<std::string>();
      break;
    }
  }
  if (type != "llama3") {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": rope_scaling of type '", type,
        "' is not supported; only rope_type \"llama3\" (or rope_scaling null) is"));
  }
  Llama3RopeScaling result;
  RETURN_IF_ERROR(ReadDouble(scaling, "factor", source, result.factor));
  RETURN_IF_ERROR(ReadDouble(scaling, "low_freq_factor", source, result.low_freq_factor));
  RETURN_IF_ERROR(ReadDouble(scaling, "high_freq_factor", source, result.high_freq_factor));
  RETURN_IF_ERROR(ReadInt(scaling, "original_max_position_embeddings", source,
                          result.original_max_position_embeddings));
  return std::optional<Llama3RopeScaling>(result);
}

absl::StatusOr<ModelConfig> ParseHfConfigUnchecked(const json& object, const std::string& source) {
  if (!object.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, " must contain a JSON object at the top level"));
  }
  ModelConfig config;

  // Architecture: "architectures": ["LlamaForCausalLM"], or model_type "llama" alone.
  if (const auto it = object.find("architectures"); it != object.end() && !it->is_null()) {
    if (!it->is_array() || it->size() != 1 || !(*it)[0].is_string()) {
      return KeyError(source, "architectures", "must be a list of one architecture name", *it);
    }
    config.architecture = (*it)[0].get<std::string>();
  } else if (const auto type = object.find("model_type");
             type != object.end() && type->is_string() && *type != "llama") {
    config.architecture = absl::StrCat("model_type ", type->get<std::string>());
  }

  RETURN_IF_ERROR(ReadRequiredInt(object, "hidden_size", source, config.hidden_size));
  RETURN_IF_ERROR(ReadRequiredInt(object, "intermediate_size", source, config.intermediate_size));
  RETURN_IF_ERROR(ReadRequiredInt(object, "num_hidden_layers", source, config.num_hidden_layers));
  RETURN_IF_ERROR(
      ReadRequiredInt(object, "num_attention_heads", source, config.num_attention_heads));
  config.num_key_value_heads = config.num_attention_heads;
  RETURN_IF_ERROR(ReadInt(object, "num_key_value_heads", source, config.num_key_value_heads));
  RETURN_IF_ERROR(ReadInt(object, "head_dim", source, config.head_dim));
  if (config.head_dim == 0 && config.num_attention_heads > 0) {
    config.head_dim = config.hidden_size / config.num_attention_heads;
    if (config.hidden_size % config.num_attention_heads != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": hidden_size ", config.hidden_size,
          " is not divisible by num_attention_heads ", config.num_attention_heads,
          "; set head_dim explicitly if the model uses another head size"));
    }
  }
  RETURN_IF_ERROR(ReadRequiredInt(object, "vocab_size", source, config.vocab_size));
  RETURN_IF_ERROR(
      ReadInt(object, "max_position_embeddings", source, config.max_position_embeddings));
  RETURN_IF_ERROR(ReadDouble(object, "rms_norm_eps", source, config.rms_norm_eps));
  RETURN_IF_ERROR(ReadDouble(object, "rope_theta", source, config.rope_theta));
  ASSIGN_OR_RETURN(config.rope_scaling, ParseRopeScaling(object, source));
  RETURN_IF_ERROR(ReadBool(object, "tie_word_embeddings", source, config.tie_word_embeddings));

  if (const auto it = object.find("bos_token_id"); it != object.end() && !it->is_null()) {
    ASSIGN_OR_RETURN(const std::vector<int32_t> ids, ReadTokenIds(*it, "bos_token_id", source));
    if (ids.size() != 1) {
      return KeyError(source, "bos_token_id", "must be a single token id", *it);
    }
    config.bos_token_id = ids[0];
  }
  if (const auto it = object.find("eos_token_id"); it != object.end() && !it->is_null()) {
    ASSIGN_OR_RETURN(config.eos_token_ids, ReadTokenIds(*it, "eos_token_id", source));
  }
  if (const auto it = object.find("torch_dtype"); it != object.end() && it->is_string()) {
    config.torch_dtype = it->get<std::string>();
  }
  // Keys that change the architecture in ways this runtime does not implement.
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    bool enabled = false;
    RETURN_IF_ERROR(ReadBool(object, key, source, enabled));
    if (enabled) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": '", key, "' is true, but this runtime implements LLaMA without biases"));
    }
  }
  if (const auto it = object.find("hidden_act");
      it != object.end() && it->is_string() && *it != "silu") {
    return KeyError(source, "hidden_act", "must be \"silu\" for LLaMA", *it);
  }
  return config;
}

}  // namespace

absl::Status ModelConfig::Validate() const {
  if (architecture != kLlamaArchitecture) {
    return absl::InvalidArgumentError(
        absl::StrCat("architecture '", architecture, "' is not supported; only ",
                     kLlamaArchitecture, " (LLaMA 2, 3, 3.1 and 3.2) is"));
  }

  const std::pair<const char*, int64_t> sizes[] = {
      {"hidden_size", hidden_size},
      {"intermediate_size", intermediate_size},
      {"num_hidden_layers", num_hidden_layers},
      {"num_attention_heads", num_attention_heads},
      {"num_key_value_heads", num_key_value_heads},
      {"vocab_size", vocab_size},
      {"max_position_embeddings", max_position_embeddings},
  };
  for (const auto& [key, value] : sizes) {
    if (value <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("config key '", key, "' must be positive, got ", value));
    }
  }

  // Head geometry.
  if (head_dim == 0 && hidden_size % num_attention_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("hidden_size ", hidden_size, " is not divisible by num_attention_heads ",
                     num_attention_heads, "; set head_dim when the heads have another size"));
  }
  const int64_t head_size = head_dim != 0 ? head_dim : hidden_size / num_attention_heads;
  if (head_size <= 0 || head_size % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "head_dim ", head_size, " must be positive and even, because rotary embeddings rotate "
        "pairs of dimensions"));
  }
  if (num_attention_heads % num_key_value_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_key_value_heads ", num_key_value_heads, " must divide num_attention_heads ",
        num_attention_heads, " (grouped-query attention shares each key/value head)"));
  }

  // Norm and rotary parameters.
  if (!(rms_norm_eps > 0.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("config key 'rms_norm_eps' must be positive, got ", rms_norm_eps));
  }
  if (!(rope_theta > 0.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("config key 'rope_theta' must be positive, got ", rope_theta));
  }
  if (rope_scaling.has_value()) {
    const Llama3RopeScaling& s = *rope_scaling;
    if (!(s.factor > 0.0) || !(s.low_freq_factor > 0.0) ||
        !(s.high_freq_factor > s.low_freq_factor) || s.original_max_position_embeddings <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "rope_scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor and a positive "
          "original_max_position_embeddings; got factor ", s.factor, ", low_freq_factor ",
          s.low_freq_factor, ", high_freq_factor ", s.high_freq_factor,
          ", original_max_position_embeddings ", s.original_max_position_embeddings));
    }
  }

  // Special token ids.
  if (bos_token_id < 0 || bos_token_id >= vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("bos_token_id ", bos_token_id,
                                                   " is outside the vocabulary of ", vocab_size));
  }
  for (int32_t id : eos_token_ids) {
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("eos_token_id ", id, " is outside the vocabulary of ", vocab_size));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ParseHfConfig(const nlohmann::json& json, const std::string& source) {
  absl::StatusOr<ModelConfig> config;
  try {
    config = ParseHfConfigUnchecked(json, source);
  } catch (const nlohmann::json::exception& error) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", error.what()));
  }
  if (!config.ok()) return config.status();
  if (absl::Status status = config->Validate(); !status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", status.message()));
  }
  return config;
}

absl::StatusOr<ModelConfig> ReadHfConfig(const std::filesystem::path& config_json) {
  ASSIGN_OR_RETURN(const json object, ReadJsonFile(config_json));
  return ParseHfConfig(object, config_json.string());
}

absl::StatusOr<GenerationDefaults> ReadGenerationConfig(const std::filesystem::path& path) {
  ASSIGN_OR_RETURN(const json object, ReadJsonFile(path));
  const std::string source = path.string();
  GenerationDefaults defaults;
  try {
    const auto read_double = [&](const char* key,
                                 std::optional<double>& out) -> absl::Status {
      double value = 0;
      if (!object.contains(key) || object.at(key).is_null()) return absl::OkStatus();
      RETURN_IF_ERROR(ReadDouble(object, key, source, value));
      out = value;
      return absl::OkStatus();
    };
    const auto read_int = [&](const char* key, std::optional<int64_t>& out) -> absl::Status {
      int64_t value = 0;
      if (!object.contains(key) || object.at(key).is_null()) return absl::OkStatus();
      RETURN_IF_ERROR(ReadInt(object, key, source, value));
      out = value;
      return absl::OkStatus();
    };
    RETURN_IF_ERROR(read_double("temperature", defaults.temperature));
    RETURN_IF_ERROR(read_double("top_p", defaults.top_p));
    RETURN_IF_ERROR(read_int("top_k", defaults.top_k));
    RETURN_IF_ERROR(read_int("max_new_tokens", defaults.max_new_tokens));
    RETURN_IF_ERROR(read_double("repetition_penalty", defaults.repetition_penalty));
    if (const auto it = object.find("eos_token_id"); it != object.end() && !it->is_null()) {
      ASSIGN_OR_RETURN(defaults.eos_token_ids, ReadTokenIds(*it, "eos_token_id", source));
    }
  } catch (const nlohmann::json::exception& error) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", error.what()));
  }
  return defaults;
}

nlohmann::json ToHfConfigJson(const ModelConfig& config) {
  json out = json::object();
  out["architectures"] = json::array({config.architecture});
  out["model_type"] = "llama";

  out["hidden_size"] = config.hidden_size;
  out["intermediate_size"] = config.intermediate_size;
  out["num_hidden_layers"] = config.num_hidden_layers;
  out["num_attention_heads"] = config.num_attention_heads;
  out["num_key_value_heads"] = config.num_key_value_heads;
  out["head_dim"] = config.head_dim != 0 ? config.head_dim
                                         : (config.num_attention_heads > 0
                                                ? config.hidden_size / config.num_attention_heads
                                                : 0);
  out["vocab_size"] = config.vocab_size;
  out["max_position_embeddings"] = config.max_position_embeddings;
  out["rms_norm_eps"] = config.rms_norm_eps;

  out["rope_theta"] = config.rope_theta;
  if (config.rope_scaling.has_value()) {
    out["rope_scaling"] = {
        {"rope_type", "llama3"},
        {"factor", config.rope_scaling->factor},
        {"low_freq_factor", config.rope_scaling->low_freq_factor},
        {"high_freq_factor", config.rope_scaling->high_freq_factor},
        {"original_max_position_embeddings",
         config.rope_scaling->original_max_position_embeddings},
    };
  } else {
    out["rope_scaling"] = nullptr;
  }

  out["tie_word_embeddings"] = config.tie_word_embeddings;
  out["bos_token_id"] = config.bos_token_id;
  if (config.eos_token_ids.size() == 1) {
    out["eos_token_id"] = config.eos_token_ids[0];
  } else if (config.eos_token_ids.empty()) {
    out["eos_token_id"] = nullptr;
  } else {
    out["eos_token_id"] = config.eos_token_ids;
  }

  // Fixed properties of the LLaMA architecture that Transformers expects in the file.
  out["hidden_act"] = "silu";
  out["attention_bias"] = false;
  out["attention_dropout"] = 0.0;
  out["mlp_bias"] = false;
  out["initializer_range"] = 0.02;
  out["pretraining_tp"] = 1;
  out["use_cache"] = true;
  out["torch_dtype"] = config.torch_dtype;
  return out;
}

}  // namespace w8a8
