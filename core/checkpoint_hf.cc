// Checkpoint over a Hugging Face model directory.
#include <fstream>
#include <map>
#include <memory>

#include "absl/strings/str_cat.h"
#include "core/checkpoint.h"
#include "core/checkpoint_formats.h"
#include "core/safetensors.h"
#include "core/status_macros.h"
#include "nlohmann/json.hpp"

namespace w8a8::checkpoint_internal {
namespace {

using nlohmann::json;

absl::StatusOr<json> ReadJsonObject(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("failed to open ", path.string()));
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  json parsed = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded() || !parsed.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path.string(), " is not a valid JSON object; check the file for truncation"));
  }
  return parsed;
}

// Reads model.safetensors.index.json: the shard file of every tensor. Shard names must be
// plain file names inside the directory.
absl::StatusOr<std::map<std::string, std::string>> ReadShardIndex(
    const std::filesystem::path& index_path) {
  ASSIGN_OR_RETURN(const json index, ReadJsonObject(index_path));
  const auto weight_map = index.find("weight_map");
  if (weight_map == index.end() || !weight_map->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        index_path.string(), ": key 'weight_map' (tensor name to shard file) is missing or "
        "not an object"));
  }
  std::map<std::string, std::string> shards;
  for (const auto& [tensor, shard] : weight_map->items()) {
    if (!shard.is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": weight_map entry '",
                                                     tensor, "' must be a file name, got ",
                                                     shard.dump()));
    }
    const std::string file = shard.get<std::string>();
    const std::filesystem::path file_path(file);
    if (file.empty() || file_path.has_parent_path() || file == "." || file == "..") {
      return absl::InvalidArgumentError(absl::StrCat(
          index_path.string(), ": weight_map entry '", tensor, "' names shard '", file,
          "', which is not a file name inside the checkpoint directory"));
    }
    shards[tensor] = file;
  }
  return shards;
}

class HfCheckpoint : public Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::filesystem::path& dir) {
    std::unique_ptr<HfCheckpoint> checkpoint(new HfCheckpoint());
    checkpoint->path_ = dir;
    const std::filesystem::path config_path = dir / "config.json";
    if (!std::filesystem::exists(config_path)) {
      return absl::NotFoundError(absl::StrCat(
          dir.string(), " has no config.json; pass a Hugging Face model directory or a .gguf "
          "file"));
    }
    ASSIGN_OR_RETURN(checkpoint->raw_config_, ReadJsonObject(config_path));
    ASSIGN_OR_RETURN(checkpoint->config_, ParseHfConfig(checkpoint->raw_config_,
                                                        config_path.string()));
    if (const auto it = checkpoint->raw_config_.find("quantization_config");
        it != checkpoint->raw_config_.end() && !it->is_null()) {
      checkpoint->quantization_config_ = *it;
    }

    const std::filesystem::path generation_path = dir / "generation_config.json";
    if (std::filesystem::exists(generation_path)) {
      ASSIGN_OR_RETURN(checkpoint->generation_defaults_, ReadGenerationConfig(generation_path));
    }
    if (checkpoint->generation_defaults_.eos_token_ids.empty()) {
      checkpoint->generation_defaults_.eos_token_ids = checkpoint->config_.eos_token_ids;
    }

    if (std::filesystem::exists(dir / "tokenizer.json")) {
      checkpoint->tokenizer_source_.tokenizer_json = dir / "tokenizer.json";
    } else if (std::filesystem::exists(dir / "tokenizer.model")) {
      checkpoint->tokenizer_source_.sentencepiece_model = dir / "tokenizer.model";
    }

    RETURN_IF_ERROR(checkpoint->OpenTensors());
    std::map<std::string, const TensorView*> by_name;
    for (const auto& [name, view] : checkpoint->tensors_) by_name[name] = view;
    RETURN_IF_ERROR(CheckLlamaTensorSet(checkpoint->config_, by_name,
                                        checkpoint->quantization_config_.has_value(),
                                        dir.string()));
    return std::unique_ptr<Checkpoint>(std::move(checkpoint));
  }

  const std::filesystem::path& path() const override { return path_; }
  std::string format() const override { return "safetensors"; }
  const ModelConfig& config() const override { return config_; }
  const GenerationDefaults& generation_defaults() const override { return generation_defaults_; }
  const TokenizerSource& tokenizer_source() const override { return tokenizer_source_; }

  std::vector<std::string> TensorNames() const override {
    std::vector<std::string> names;
    names.reserve(tensors_.size());
    for (const auto& [name, view] : tensors_) names.push_back(name);
    return names;
  }

  bool HasTensor(const std::string& name) const override { return tensors_.contains(name); }

  absl::StatusOr<TensorView> Tensor(const std::string& name) const override {
    const auto it = tensors_.find(name);
    if (it == tensors_.end()) {
      return absl::NotFoundError(absl::StrCat(path_.string(), ": no tensor named '", name, "'"));
    }
    return *it->second;
  }

  const std::optional<nlohmann::json>& quantization_config() const override {
    return quantization_config_;
  }
  const nlohmann::json& raw_config() const override { return raw_config_; }

 private:
  HfCheckpoint() = default;

  // Maps model.safetensors, or every shard that model.safetensors.index.json lists, and
  // checks that the index and the shards agree tensor by tensor.
  absl::Status OpenTensors() {
    const std::filesystem::path index_path = path_ / "model.safetensors.index.json";
    const std::filesystem::path single_path = path_ / "model.safetensors";
    if (!std::filesystem::exists(index_path)) {
      if (!std::filesystem::exists(single_path)) {
        return absl::NotFoundError(absl::StrCat(
            path_.string(), " has neither model.safetensors nor model.safetensors.index.json"));
      }
      ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                       SafetensorsFile::Open(single_path));
      for (const TensorView& tensor : file->tensors()) tensors_[tensor.name] = &tensor;
      files_.push_back(std::move(file));
      return absl::OkStatus();
    }

    ASSIGN_OR_RETURN(const auto shard_of, ReadShardIndex(index_path));
    std::map<std::string, const SafetensorsFile*> shards;
    for (const auto& [tensor, shard] : shard_of) {
      if (shards.contains(shard)) continue;
      ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                       SafetensorsFile::Open(path_ / shard));
      shards[shard] = file.get();
      files_.push_back(std::move(file));
    }
    for (const auto& [shard, file] : shards) {
      for (const TensorView& tensor : file->tensors()) {
        const auto listed = shard_of.find(tensor.name);
        if (listed == shard_of.end() || listed->second != shard) {
          return absl::InvalidArgumentError(absl::StrCat(
              (path_ / shard).string(), ": tensor '", tensor.name,
              "' is not listed for this shard in model.safetensors.index.json; regenerate the "
              "index"));
        }
        tensors_[tensor.name] = &tensor;
      }
    }
    for (const auto& [tensor, shard] : shard_of) {
      if (!tensors_.contains(tensor)) {
        return absl::InvalidArgumentError(absl::StrCat(
            index_path.string(), " lists tensor '", tensor, "' in ", shard,
            ", but that shard does not contain it"));
      }
    }
    return absl::OkStatus();
  }

  std::filesystem::path path_;
  ModelConfig config_;
  GenerationDefaults generation_defaults_;
  TokenizerSource tokenizer_source_;
  nlohmann::json raw_config_;
  std::optional<nlohmann::json> quantization_config_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> tensors_;  // Views into files_.
};

}  // namespace

absl::StatusOr<std::unique_ptr<Checkpoint>> OpenHfDirectory(const std::filesystem::path& dir) {
  return HfCheckpoint::Open(dir);
}

}  // namespace w8a8::checkpoint_internal
