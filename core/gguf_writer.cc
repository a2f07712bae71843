#include "core/gguf_writer.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <numbers>
#include <optional>
#include <system_error>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/bpe_tokenizer.h"
#include "core/sentencepiece_model.pb.h"
#include "core/status_macros.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace w8a8 {
namespace {

constexpr uint32_t kAlignment = 32;  // GGUF_DEFAULT_ALIGNMENT; written as general.alignment.
constexpr int64_t kQ8_0BlockSize = 32;
constexpr size_t kQ8_0BlockBytes = 34;  // FP16 scale + 32 int8.
// GGML_QNT_VERSION of ggml.h, which llama.cpp's converter stores in every file.
constexpr uint32_t kQuantizationVersion = 2;
// Rows converted per step are chosen to keep about this many FP32 values in memory.
constexpr int64_t kChunkFloats = int64_t{4} << 20;
// llama.cpp's token types (enum llama_token_type); SentencePiece numbers its piece types alike.
constexpr int32_t kTokenNormal = 1;
constexpr int32_t kTokenControl = 3;
constexpr int32_t kTokenUserDefined = 4;

// llama_ftype of llama.h for general.file_type.
uint32_t FileTypeOf(GgufOutType type) {
  switch (type) {
    case GgufOutType::kF32:
      return 0;  // LLAMA_FTYPE_ALL_F32
    case GgufOutType::kF16:
      return 1;  // LLAMA_FTYPE_MOSTLY_F16
    case GgufOutType::kQ8_0:
      return 7;  // LLAMA_FTYPE_MOSTLY_Q8_0
    case GgufOutType::kBF16:
      return 32;  // LLAMA_FTYPE_MOSTLY_BF16
  }
  return 0;
}

DType DTypeOf(GgufOutType type) {
  switch (type) {
    case GgufOutType::kF32:
      return DType::kF32;
    case GgufOutType::kF16:
      return DType::kF16;
    case GgufOutType::kBF16:
      return DType::kBF16;
    case GgufOutType::kQ8_0:
      return DType::kQ8_0;
  }
  return DType::kF32;
}

GgmlType GgmlTypeOf(DType dtype) {
  switch (dtype) {
    case DType::kF16:
      return GgmlType::kF16;
    case DType::kBF16:
      return GgmlType::kBF16;
    case DType::kQ8_0:
      return GgmlType::kQ8_0;
    default:
      return GgmlType::kF32;
  }
}

// ---------------------------------------------------------------------------------------------
// Tokenizer metadata

absl::StatusOr<nlohmann::json> ReadJsonFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path.string(), ": check the path"));
  }
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& error) {
    return absl::InvalidArgumentError(
        absl::StrCat(path.string(), " is not valid JSON: ", error.what()));
  }
}

// tokenizer_config.json beside a Hugging Face checkpoint, or an empty object.
absl::StatusOr<nlohmann::json> ReadTokenizerConfig(const std::filesystem::path& dir) {
  const std::filesystem::path path = dir / "tokenizer_config.json";
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error)) return nlohmann::json::object();
  ASSIGN_OR_RETURN(nlohmann::json config, ReadJsonFile(path));
  if (!config.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), " must be a JSON object"));
  }
  return config;
}

// A special token of tokenizer_config.json: a string, or an object with "content".
std::optional<std::string> SpecialTokenText(const nlohmann::json& tokenizer_config,
                                            const char* key) {
  const auto it = tokenizer_config.find(key);
  if (it == tokenizer_config.end()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  return std::nullopt;
}

std::optional<int32_t> FindToken(const std::vector<std::string>& tokens, const std::string& text) {
  const auto it = std::find(tokens.begin(), tokens.end(), text);
  if (it == tokens.end()) return std::nullopt;
  return static_cast<int32_t>(it - tokens.begin());
}

// Fills the vocabulary up to the model's embedding rows with "[PAD<id>]" user-defined tokens,
// as llama.cpp's converter does, because llama.cpp requires one token per embedding row.
absl::Status PadVocabulary(GgufTokenizerData& data, int64_t vocab_size, const std::string& source) {
  if (static_cast<int64_t>(data.tokens.size()) > vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, " has ", data.tokens.size(), " tokens, but the model's vocab_size is ", vocab_size,
        "; llama.cpp needs one embedding row per token, so use the tokenizer that "
        "belongs to this model"));
  }
  for (int64_t id = static_cast<int64_t>(data.tokens.size()); id < vocab_size; ++id) {
    data.tokens.push_back(absl::StrCat("[PAD", id, "]"));
    data.token_types.push_back(kTokenUserDefined);
    if (!data.scores.empty()) data.scores.push_back(0.0f);
  }
  return absl::OkStatus();
}

// Applies tokenizer_config.json's BOS/EOS strings, add_bos_token, add_eos_token and
// chat_template, and falls back to the config.json ids for BOS and EOS.
void ApplyTokenizerConfig(const nlohmann::json& tokenizer_config, const ModelConfig& config,
                          GgufTokenizerData& data) {
  if (std::optional<std::string> bos = SpecialTokenText(tokenizer_config, "bos_token")) {
    data.bos_token_id = FindToken(data.tokens, *bos);
  }
  if (std::optional<std::string> eos = SpecialTokenText(tokenizer_config, "eos_token")) {
    data.eos_token_id = FindToken(data.tokens, *eos);
  }
  const auto vocab = static_cast<int32_t>(data.tokens.size());
  if (!data.bos_token_id.has_value() && config.bos_token_id >= 0 && config.bos_token_id < vocab) {
    data.bos_token_id = config.bos_token_id;
  }
  if (!data.eos_token_id.has_value() && !config.eos_token_ids.empty() &&
      config.eos_token_ids.front() >= 0 && config.eos_token_ids.front() < vocab) {
    data.eos_token_id = config.eos_token_ids.front();
  }
  for (const auto& [key, target] : {std::pair{"add_bos_token", &data.add_bos_token},
                                    std::pair{"add_eos_token", &data.add_eos_token}}) {
    const auto it = tokenizer_config.find(key);
    if (it != tokenizer_config.end() && it->is_boolean()) *target = it->get<bool>();
  }
  const auto chat_template = tokenizer_config.find("chat_template");
  if (chat_template != tokenizer_config.end() && chat_template->is_string()) {
    data.chat_template = chat_template->get<std::string>();
  }
}

bool IsByteLevel(const nlohmann::json& tokenizer_json) {
  for (const char* section : {"pre_tokenizer", "decoder"}) {
    const auto it = tokenizer_json.find(section);
    if (it != tokenizer_json.end() && absl::StrContains(it->dump(), "\"ByteLevel\"")) return true;
  }
  return false;
}

// The Split regex of a tokenizer.json pre-tokenizer (first one found), or "".
std::string SplitPattern(const nlohmann::json& node) {
  if (node.is_object()) {
    const auto type = node.find("type");
    const auto pattern = node.find("pattern");
    if (type != node.end() && *type == "Split" && pattern != node.end() && pattern->is_object() &&
        pattern->contains("Regex") && (*pattern)["Regex"].is_string()) {
      return (*pattern)["Regex"].get<std::string>();
    }
  }
  if (node.is_object() || node.is_array()) {
    for (const nlohmann::json& child : node) {
      std::string found = SplitPattern(child);
      if (!found.empty()) return found;
    }
  }
  return "";
}

// A byte-level BPE tokenizer.json (Llama 3) as GGUF "gpt2" metadata.
absl::StatusOr<GgufTokenizerData> ByteLevelBpeData(const std::filesystem::path& path,
                                                   const nlohmann::json& json) {
  const std::string source = path.string();
  GgufTokenizerData data;
  data.model = "gpt2";
  const auto pre_tokenizer = json.find("pre_tokenizer");
  const std::string pattern = pre_tokenizer == json.end() ? "" : SplitPattern(*pre_tokenizer);
  if (pattern == kLlama3SplitPattern) {
    data.pre = "llama-bpe";
  } else {
    // NOTE: llama.cpp identifies other pre-tokenizers by hashing their output on a test
    // text, which this exporter does not do. "default" is GPT-2's split, right only for GPT-2.
    spdlog::warn(
        "{}: the pre-tokenizer split pattern is not Llama 3's; writing "
        "tokenizer.ggml.pre \"default\" (GPT-2's), which may tokenize differently",
        source);
    data.pre = "default";
  }

  const auto model_entry = json.find("model");
  if (model_entry == json.end() || !model_entry->is_object() || !model_entry->contains("vocab") ||
      !(*model_entry)["vocab"].is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": model.vocab is missing or not an object"));
  }
  const nlohmann::json& model = *model_entry;
  std::map<int64_t, std::pair<std::string, int32_t>> by_id;  // id -> token, token type.
  for (const auto& [token, id] : model["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": model.vocab entry '", token,
                                                     "' has id ", id.dump(),
                                                     "; ids must be non-negative integers"));
    }
    by_id[id.get<int64_t>()] = {token, kTokenNormal};
  }
  if (json.contains("added_tokens") && json["added_tokens"].is_array()) {
    for (const nlohmann::json& added : json["added_tokens"]) {
      if (!added.is_object() || !added.contains("id") || !added["id"].is_number_integer() ||
          !added.contains("content") || !added["content"].is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(
            source, ": added_tokens entry ", added.dump(), " needs an integer id and a content"));
      }
      const bool special = added.contains("special") && added["special"].is_boolean() &&
                           added["special"].get<bool>();
      by_id[added["id"].get<int64_t>()] = {added["content"].get<std::string>(),
                                           special ? kTokenControl : kTokenUserDefined};
    }
  }
  for (const auto& [id, token] : by_id) {
    // Ids missing from the file become padding tokens, as PadVocabulary writes them.
    while (static_cast<int64_t>(data.tokens.size()) < id) {
      data.tokens.push_back(absl::StrCat("[PAD", data.tokens.size(), "]"));
      data.token_types.push_back(kTokenUserDefined);
    }
    data.tokens.push_back(token.first);
    data.token_types.push_back(token.second);
  }

  if (model.contains("merges") && model["merges"].is_array()) {
    data.merges.reserve(model["merges"].size());
    for (const nlohmann::json& merge : model["merges"]) {
      // Older files spell a merge "a b", newer ones ["a", "b"].
      if (merge.is_string()) {
        data.merges.push_back(merge.get<std::string>());
      } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
                 merge[1].is_string()) {
        data.merges.push_back(
            absl::StrCat(merge[0].get<std::string>(), " ", merge[1].get<std::string>()));
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": model.merges entry ", merge.dump(),
                         " must be a string \"a b\" or an array of two strings"));
      }
    }
  }
  return data;
}

// A SentencePiece tokenizer.model as GGUF "llama" metadata.
absl::StatusOr<GgufTokenizerData> SentencePieceData(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path.string(), ": check the path"));
  }
  sentencepiece::ModelProto proto;
  if (!proto.ParseFromIstream(&in)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path.string(),
                     " is not a SentencePiece model protobuf; export needs the "
                     "tokenizer.model that belongs to the checkpoint"));
  }
  GgufTokenizerData data;
  data.model = "llama";
  data.tokens.reserve(proto.pieces_size());
  for (const sentencepiece::ModelProto::SentencePiece& piece : proto.pieces()) {
    data.tokens.push_back(piece.piece());
    data.scores.push_back(piece.score());
    data.token_types.push_back(static_cast<int32_t>(piece.type()));
  }
  const auto vocab = static_cast<int32_t>(data.tokens.size());
  const auto in_vocab = [vocab](int32_t id) { return id >= 0 && id < vocab; };
  const sentencepiece::TrainerSpec& trainer = proto.trainer_spec();
  if (in_vocab(trainer.unk_id())) data.unknown_token_id = trainer.unk_id();
  if (in_vocab(trainer.bos_id())) data.bos_token_id = trainer.bos_id();
  if (in_vocab(trainer.eos_id())) data.eos_token_id = trainer.eos_id();
  if (in_vocab(trainer.pad_id())) data.padding_token_id = trainer.pad_id();
  data.add_space_prefix = proto.normalizer_spec().add_dummy_prefix();
  return data;
}

absl::StatusOr<GgufTokenizerData> TokenizerDataOf(const Checkpoint& source) {
  const TokenizerSource& tokenizer = source.tokenizer_source();
  const ModelConfig& config = source.config();
  if (tokenizer.gguf.has_value()) {
    GgufTokenizerData data = *tokenizer.gguf;
    RETURN_IF_ERROR(PadVocabulary(data, config.vocab_size, source.path().string()));
    return data;
  }

  std::optional<std::filesystem::path> sentencepiece = tokenizer.sentencepiece_model;
  GgufTokenizerData data;
  bool have_data = false;
  if (tokenizer.tokenizer_json.has_value()) {
    ASSIGN_OR_RETURN(const nlohmann::json json, ReadJsonFile(*tokenizer.tokenizer_json));
    if (IsByteLevel(json)) {
      ASSIGN_OR_RETURN(data, ByteLevelBpeData(*tokenizer.tokenizer_json, json));
      have_data = true;
    } else {
      // LLaMA 2 ships a SentencePiece-style tokenizer.json that only the tokenizer.model
      // beside it describes completely.
      const std::filesystem::path model =
          tokenizer.tokenizer_json->parent_path() / "tokenizer.model";
      std::error_code error;
      if (!std::filesystem::is_regular_file(model, error)) {
        return absl::UnimplementedError(absl::StrCat(
            tokenizer.tokenizer_json->string(),
            " is not a byte-level BPE tokenizer, and no tokenizer.model is beside it; GGUF "
            "export supports byte-level BPE tokenizer.json files and SentencePiece models"));
      }
      sentencepiece = model;
    }
  }
  if (!have_data && sentencepiece.has_value()) {
    ASSIGN_OR_RETURN(data, SentencePieceData(*sentencepiece));
    have_data = true;
  }
  if (!have_data) {
    return absl::FailedPreconditionError(
        absl::StrCat(source.path().string(),
                     " has no tokenizer, and llama.cpp needs one in the GGUF file: "
                     "add tokenizer.json or tokenizer.model beside config.json"));
  }

  RETURN_IF_ERROR(PadVocabulary(data, config.vocab_size, source.path().string()));
  const std::filesystem::path dir =
      std::filesystem::is_directory(source.path()) ? source.path() : source.path().parent_path();
  ASSIGN_OR_RETURN(const nlohmann::json tokenizer_config, ReadTokenizerConfig(dir));
  ApplyTokenizerConfig(tokenizer_config, config, data);
  return data;
}

void AddTokenizerMetadata(const GgufTokenizerData& data, GgufWriter& writer) {
  writer.SetMetadata("tokenizer.ggml.model", GgufValue::String(data.model));
  if (!data.pre.empty()) writer.SetMetadata("tokenizer.ggml.pre", GgufValue::String(data.pre));
  writer.SetMetadata("tokenizer.ggml.tokens", GgufValue::StringArray(data.tokens));
  if (!data.scores.empty()) {
    writer.SetMetadata("tokenizer.ggml.scores", GgufValue::Float32Array(data.scores));
  }
  if (!data.token_types.empty()) {
    writer.SetMetadata("tokenizer.ggml.token_type", GgufValue::Int32Array(data.token_types));
  }
  if (!data.merges.empty()) {
    writer.SetMetadata("tokenizer.ggml.merges", GgufValue::StringArray(data.merges));
  }
  const std::pair<const char*, const std::optional<int32_t>*> ids[] = {
      {"tokenizer.ggml.bos_token_id", &data.bos_token_id},
      {"tokenizer.ggml.eos_token_id", &data.eos_token_id},
      {"tokenizer.ggml.unknown_token_id", &data.unknown_token_id},
      {"tokenizer.ggml.padding_token_id", &data.padding_token_id},
  };
  for (const auto& [key, id] : ids) {
    if (id->has_value()) writer.SetMetadata(key, GgufValue::Uint32(static_cast<uint32_t>(**id)));
  }
  const std::pair<const char*, const std::optional<bool>*> flags[] = {
      {"tokenizer.ggml.add_bos_token", &data.add_bos_token},
      {"tokenizer.ggml.add_eos_token", &data.add_eos_token},
      {"tokenizer.ggml.add_space_prefix", &data.add_space_prefix},
  };
  for (const auto& [key, flag] : flags) {
    if (flag->has_value()) writer.SetMetadata(key, GgufValue::Bool(**flag));
  }
  if (data.chat_template.has_value()) {
    writer.SetMetadata("tokenizer.chat_template", GgufValue::String(*data.chat_template));
  }
}

// ---------------------------------------------------------------------------------------------
// Tensors

// One tensor of the output file.
struct PlannedTensor {
  std::string gguf_name;
  std::string source_name;  // Hugging Face name, or "rope_freqs.weight".
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // Row-major.
  int64_t rotary_heads = 0;    // Heads to permute into llama.cpp's rotary layout; 0: none.
  uint64_t bytes = 0;
  uint64_t offset = 0;  // From the start of the data section.
};

uint64_t AlignUp(uint64_t value) { return (value + kAlignment - 1) / kAlignment * kAlignment; }

absl::StatusOr<std::vector<PlannedTensor>> PlanTensors(const Checkpoint& source,
                                                       GgufOutType out_type,
                                                       GgufExportSummary& summary) {
  const ModelConfig& config = source.config();
  std::vector<std::string> names = {"model.embed_tokens.weight"};
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    const std::string prefix = absl::StrCat("model.layers.", layer, ".");
    for (const char* suffix :
         {"input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
          "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
          "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"}) {
      names.push_back(prefix + suffix);
    }
  }
  names.push_back("model.norm.weight");
  if (!config.tie_word_embeddings && source.HasTensor("lm_head.weight")) {
    names.push_back("lm_head.weight");
  }

  std::vector<PlannedTensor> plan;
  const bool has_rope_factors =
      config.rope_scaling.has_value() || source.rope_frequency_factors().has_value();
  if (has_rope_factors) {
    plan.push_back(
        {"rope_freqs.weight", "rope_freqs.weight", DType::kF32, {config.head_dim / 2}, 0, 0, 0});
  }
  for (const std::string& name : names) {
    ASSIGN_OR_RETURN(const TensorView view, source.Tensor(name));
    const std::optional<std::string> gguf_name = HfToGgufTensorName(name);
    if (!gguf_name.has_value()) {
      return absl::InternalError(absl::StrCat("no GGUF name for tensor '", name, "'"));
    }
    PlannedTensor tensor;
    tensor.gguf_name = *gguf_name;
    tensor.source_name = name;
    tensor.shape = view.shape;
    if (tensor.shape.size() == 1) {
      tensor.dtype = DType::kF32;
    } else if (tensor.shape.size() == 2) {
      tensor.dtype = DTypeOf(out_type);
      if (out_type == GgufOutType::kQ8_0 && tensor.shape[1] % kQ8_0BlockSize != 0) {
        spdlog::info(
            "{}: rows of {} values are not a multiple of {}, so this tensor is "
            "written as F16 instead of Q8_0",
            tensor.gguf_name, tensor.shape[1], kQ8_0BlockSize);
        tensor.dtype = DType::kF16;
        summary.q8_0_fallbacks.push_back(tensor.gguf_name);
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat(source.path().string(), ": tensor '", name,
                                                     "' has rank ", tensor.shape.size(),
                                                     "; LLaMA weights are 1-D or 2-D"));
    }
    if (absl::EndsWith(name, ".self_attn.q_proj.weight")) {
      tensor.rotary_heads = config.num_attention_heads;
    } else if (absl::EndsWith(name, ".self_attn.k_proj.weight")) {
      tensor.rotary_heads = config.num_key_value_heads;
    }
    plan.push_back(std::move(tensor));
  }

  uint64_t offset = 0;
  for (PlannedTensor& tensor : plan) {
    ASSIGN_OR_RETURN(tensor.bytes, TensorBytes(tensor.dtype, tensor.shape));
    tensor.offset = offset;
    offset = AlignUp(offset + tensor.bytes);
  }
  return plan;
}

template <typename T>
void AppendLittleEndian(std::string& out, T value) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));
  out.append(bytes, sizeof(T));
}

// Everything before the tensor data: header, metadata, tensor table and padding.
absl::StatusOr<std::string> SerializeHeader(const GgufWriter& metadata,
                                            const std::vector<PlannedTensor>& plan) {
  std::string out("GGUF");
  AppendLittleEndian<uint32_t>(out, 3);
  AppendLittleEndian<uint64_t>(out, plan.size());
  AppendLittleEndian<uint64_t>(out, metadata.metadata_count());
  ASSIGN_OR_RETURN(const std::string entries, metadata.SerializeMetadata());
  out += entries;
  for (const PlannedTensor& tensor : plan) {
    AppendLittleEndian<uint64_t>(out, tensor.gguf_name.size());
    out += tensor.gguf_name;
    AppendLittleEndian<uint32_t>(out, static_cast<uint32_t>(tensor.shape.size()));
    // GGUF lists dimensions fastest-varying first.
    for (auto dim = tensor.shape.rbegin(); dim != tensor.shape.rend(); ++dim) {
      AppendLittleEndian<uint64_t>(out, static_cast<uint64_t>(*dim));
    }
    AppendLittleEndian<uint32_t>(out, static_cast<uint32_t>(GgmlTypeOf(tensor.dtype)));
    AppendLittleEndian<uint64_t>(out, tensor.offset);
  }
  out.resize(AlignUp(out.size()), '\0');
  return out;
}

// Encodes `rows` rows of FP32 values as `dtype`, appending to `out`. Fails on a value that
// is not finite or that F16 cannot hold.
absl::Status EncodeRows(std::span<const float> values, int64_t columns, DType dtype,
                        const std::string& name, std::string& out) {
  const auto rows = static_cast<int64_t>(values.size()) / columns;
  for (float value : values) {
    if (!std::isfinite(value)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' contains the value ", value,
                       "; GGUF export needs finite weights, so check the source checkpoint"));
    }
  }
  if (dtype == DType::kQ8_0) {
    // The largest FP16 scale, 65504, times 127.
    constexpr float kQ8_0Max = 65504.0f * 127.0f;
    for (float value : values) {
      if (std::fabs(value) > kQ8_0Max) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has the value ", value,
                                                       ", beyond Q8_0's range of +-", kQ8_0Max,
                                                       "; export with --outtype bf16 or f32"));
      }
    }
  }
  const size_t start = out.size();
  switch (dtype) {
    case DType::kF32:
      out.append(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
      return absl::OkStatus();
    case DType::kBF16:
    case DType::kF16: {
      out.resize(start + values.size() * sizeof(uint16_t));
      auto* bits = reinterpret_cast<char*>(out.data() + start);
      std::atomic<bool> overflow = false;
#pragma omp parallel for schedule(static)
      for (int64_t row = 0; row < rows; ++row) {
        for (int64_t column = 0; column < columns; ++column) {
          const float value = values[static_cast<size_t>(row * columns + column)];
          const uint16_t encoded =
              dtype == DType::kF16 ? FloatToHalf(value) : FloatToBFloat16(value);
          if (dtype == DType::kF16 && (encoded & 0x7FFF) == 0x7C00) overflow = true;
          std::memcpy(bits + (row * columns + column) * 2, &encoded, sizeof(encoded));
        }
      }
      if (overflow) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor '", name,
                         "' has values beyond F16's range of +-65504; export with "
                         "--outtype bf16 or f32"));
      }
      return absl::OkStatus();
    }
    case DType::kQ8_0: {
      const auto row_bytes = static_cast<size_t>(columns / kQ8_0BlockSize) * kQ8_0BlockBytes;
      out.resize(start + static_cast<size_t>(rows) * row_bytes);
      auto* blocks = reinterpret_cast<std::byte*>(out.data() + start);
#pragma omp parallel for schedule(static)
      for (int64_t row = 0; row < rows; ++row) {
        QuantizeQ8_0(
            values.subspan(static_cast<size_t>(row * columns), static_cast<size_t>(columns)),
            std::span<std::byte>(blocks + static_cast<size_t>(row) * row_bytes, row_bytes));
      }
      return absl::OkStatus();
    }
    default:
      return absl::InternalError(
          absl::StrCat("tensor '", name, "': cannot encode as ", std::string(DTypeName(dtype))));
  }
}

// Converts one source tensor to its output encoding and writes it, a chunk of rows at a time.
absl::Status WriteTensor(const Checkpoint& source, const PlannedTensor& tensor,
                         std::ofstream& out) {
  const ModelConfig& config = source.config();
  std::string encoded;
  if (tensor.source_name == "rope_freqs.weight") {
    std::vector<float> factors;
    if (std::optional<TensorView> stored = source.rope_frequency_factors()) {
      ASSIGN_OR_RETURN(factors, ToFloat32(*stored));
    } else {
      factors = Llama3RopeFrequencyFactors(config);
    }
    RETURN_IF_ERROR(EncodeRows(factors, static_cast<int64_t>(factors.size()), DType::kF32,
                               tensor.gguf_name, encoded));
    out.write(encoded.data(), static_cast<std::streamsize>(encoded.size()));
    return absl::OkStatus();
  }

  ASSIGN_OR_RETURN(const TensorView view, source.Tensor(tensor.source_name));
  const int64_t rows = tensor.shape.size() == 1 ? 1 : tensor.shape[0];
  const int64_t columns = tensor.shape.back();
  if (tensor.rotary_heads > 0) {
    // q_proj and k_proj are small enough to permute whole.
    ASSIGN_OR_RETURN(const std::vector<float> values, ToFloat32(view));
    ASSIGN_OR_RETURN(const std::vector<float> permuted,
                     HfRotaryRowsToGguf(values, tensor.rotary_heads, config.head_dim));
    RETURN_IF_ERROR(EncodeRows(permuted, columns, tensor.dtype, tensor.gguf_name, encoded));
    out.write(encoded.data(), static_cast<std::streamsize>(encoded.size()));
    return absl::OkStatus();
  }

  const size_t source_row_bytes = view.size_bytes / static_cast<size_t>(rows);
  const int64_t chunk_rows = std::max<int64_t>(1, kChunkFloats / columns);
  std::vector<float> values;
  for (int64_t first = 0; first < rows; first += chunk_rows) {
    const int64_t count = std::min(chunk_rows, rows - first);
    TensorView chunk = view;
    chunk.shape = tensor.shape.size() == 1 ? tensor.shape : std::vector<int64_t>{count, columns};
    chunk.data = view.data + static_cast<size_t>(first) * source_row_bytes;
    chunk.size_bytes = static_cast<size_t>(count) * source_row_bytes;
    values.resize(static_cast<size_t>(count * columns));
    RETURN_IF_ERROR(ToFloat32(chunk, values));
    encoded.clear();
    RETURN_IF_ERROR(EncodeRows(values, columns, tensor.dtype, tensor.gguf_name, encoded));
    out.write(encoded.data(), static_cast<std::streamsize>(encoded.size()));
  }
  return absl::OkStatus();
}

absl::Status AddModelMetadata(const Checkpoint& source, const GgufExportOptions& options,
                              GgufWriter& writer) {
  const ModelConfig& config = source.config();
  std::string name = options.model_name;
  if (name.empty()) {
    name = std::filesystem::is_directory(source.path()) ? source.path().filename().string()
                                                        : source.path().stem().string();
    if (name.empty()) name = source.path().parent_path().filename().string();
  }
  const auto u32 = [](int64_t value) { return GgufValue::Uint32(static_cast<uint32_t>(value)); };
  writer.SetMetadata("general.architecture", GgufValue::String("llama"));
  writer.SetMetadata("general.name", GgufValue::String(name));
  writer.SetMetadata("llama.block_count", u32(config.num_hidden_layers));
  writer.SetMetadata("llama.context_length", u32(config.max_position_embeddings));
  writer.SetMetadata("llama.embedding_length", u32(config.hidden_size));
  writer.SetMetadata("llama.feed_forward_length", u32(config.intermediate_size));
  writer.SetMetadata("llama.attention.head_count", u32(config.num_attention_heads));
  writer.SetMetadata("llama.attention.head_count_kv", u32(config.num_key_value_heads));
  writer.SetMetadata("llama.rope.freq_base",
                     GgufValue::Float32(static_cast<float>(config.rope_theta)));
  writer.SetMetadata("llama.attention.layer_norm_rms_epsilon",
                     GgufValue::Float32(static_cast<float>(config.rms_norm_eps)));
  if (config.head_dim * config.num_attention_heads != config.hidden_size) {
    // llama.cpp derives the head size from the embedding length unless these keys are set.
    writer.SetMetadata("llama.attention.key_length", u32(config.head_dim));
    writer.SetMetadata("llama.attention.value_length", u32(config.head_dim));
  }
  writer.SetMetadata("llama.rope.dimension_count", u32(config.head_dim));
  writer.SetMetadata("llama.vocab_size", u32(config.vocab_size));
  writer.SetMetadata("general.file_type", GgufValue::Uint32(FileTypeOf(options.out_type)));
  writer.SetMetadata("general.alignment", GgufValue::Uint32(kAlignment));
  writer.SetMetadata("general.quantization_version", GgufValue::Uint32(kQuantizationVersion));
  return absl::OkStatus();
}

// Removes the temporary file unless Release() was called.
class TemporaryFile {
 public:
  explicit TemporaryFile(std::filesystem::path path) : path_(std::move(path)) {}
  ~TemporaryFile() {
    if (path_.empty()) return;
    std::error_code ignored;
    std::filesystem::remove(path_, ignored);
  }
  TemporaryFile(const TemporaryFile&) = delete;
  TemporaryFile& operator=(const TemporaryFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  void Release() { path_.clear(); }

 private:
  std::filesystem::path path_;
};

}  // namespace

std::string_view GgufOutTypeName(GgufOutType type) {
  switch (type) {
    case GgufOutType::kF32:
      return "f32";
    case GgufOutType::kF16:
      return "f16";
    case GgufOutType::kBF16:
      return "bf16";
    case GgufOutType::kQ8_0:
      return "q8_0";
  }
  return "unknown";
}

absl::StatusOr<GgufOutType> ParseGgufOutType(std::string_view name) {
  for (GgufOutType type :
       {GgufOutType::kF32, GgufOutType::kF16, GgufOutType::kBF16, GgufOutType::kQ8_0}) {
    if (name == GgufOutTypeName(type)) return type;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("output type '", std::string(name),
                   "' is not supported; valid types are f32, f16, bf16 and q8_0"));
}

void QuantizeQ8_0(std::span<const float> values, std::span<std::byte> out) {
  const size_t blocks = values.size() / kQ8_0BlockSize;
  for (size_t block = 0; block < blocks; ++block) {
    const float* x = values.data() + block * kQ8_0BlockSize;
    std::byte* y = out.data() + block * kQ8_0BlockBytes;
    float max_abs = 0.0f;
    for (int64_t i = 0; i < kQ8_0BlockSize; ++i) max_abs = std::max(max_abs, std::fabs(x[i]));
    // Rounding the scale up keeps every max_abs / scale <= 127, so no value is clipped,
    // even where the scale is an FP16 subnormal with few significant bits.
    const float exact_scale = max_abs / 127.0f;
    uint16_t scale_bits = FloatToHalf(exact_scale);
    if (HalfToFloat(scale_bits) < exact_scale) ++scale_bits;
    const float scale = HalfToFloat(scale_bits);
    const float inverse = scale > 0.0f ? 1.0f / scale : 0.0f;
    std::memcpy(y, &scale_bits, sizeof(scale_bits));
    for (int64_t i = 0; i < kQ8_0BlockSize; ++i) {
      const float q = std::clamp(std::nearbyint(x[i] * inverse), -127.0f, 127.0f);
      const auto q8 = static_cast<int8_t>(q);
      std::memcpy(y + 2 + i, &q8, 1);
    }
  }
}

std::vector<float> Llama3RopeFrequencyFactors(const ModelConfig& config) {
  const int64_t half = config.head_dim / 2;
  std::vector<float> factors(static_cast<size_t>(half), 1.0f);
  if (!config.rope_scaling.has_value()) return factors;
  const Llama3RopeScaling& scaling = *config.rope_scaling;
  const double original_max = static_cast<double>(scaling.original_max_position_embeddings);
  const double low_freq_wavelen = original_max / scaling.low_freq_factor;
  const double high_freq_wavelen = original_max / scaling.high_freq_factor;
  for (int64_t i = 0; i < half; ++i) {
    const double freq = 1.0 / std::pow(config.rope_theta, static_cast<double>(2 * i) /
                                                              static_cast<double>(config.head_dim));
    const double wavelen = 2.0 * std::numbers::pi / freq;
    double factor = 1.0;
    if (wavelen > low_freq_wavelen) {
      factor = scaling.factor;
    } else if (wavelen >= high_freq_wavelen) {
      const double smooth = (original_max / wavelen - scaling.low_freq_factor) /
                            (scaling.high_freq_factor - scaling.low_freq_factor);
      factor = 1.0 / ((1.0 - smooth) / scaling.factor + smooth);
    }
    factors[static_cast<size_t>(i)] = static_cast<float>(factor);
  }
  return factors;
}

absl::StatusOr<GgufExportSummary> ExportGguf(const Checkpoint& source,
                                             const std::filesystem::path& out,
                                             const GgufExportOptions& options) {
  if (source.quantization_config().has_value()) {
    return absl::FailedPreconditionError(
        absl::StrCat(source.path().string(),
                     " is a quantized (compressed-tensors) checkpoint; export the "
                     "unquantized checkpoint it was made from"));
  }
  const ModelConfig& config = source.config();
  if (absl::Status status = config.Validate(); !status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source.path().string(), ": ", status.message()));
  }
  std::error_code error;
  if (std::filesystem::is_directory(out, error)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "output path ", out.string(), " is a directory; give a file name such as model.gguf"));
  }

  GgufExportSummary summary;
  GgufWriter metadata(kAlignment);
  RETURN_IF_ERROR(AddModelMetadata(source, options, metadata));
  ASSIGN_OR_RETURN(const GgufTokenizerData tokenizer, TokenizerDataOf(source));
  AddTokenizerMetadata(tokenizer, metadata);
  ASSIGN_OR_RETURN(const std::vector<PlannedTensor> plan,
                   PlanTensors(source, options.out_type, summary));
  ASSIGN_OR_RETURN(const std::string header, SerializeHeader(metadata, plan));

  const std::filesystem::path parent = out.parent_path().empty() ? "." : out.parent_path();
  TemporaryFile temporary(parent /
                          absl::StrCat(".", out.filename().string(), ".partial-", ::getpid()));
  std::ofstream file(temporary.path(), std::ios::binary | std::ios::trunc);
  if (!file) {
    return absl::PermissionDeniedError(absl::StrCat(
        "cannot create ", temporary.path().string(), " next to the output ", out.string(), ": ",
        std::strerror(errno), "; check that the directory exists and is writable"));
  }
  file.write(header.data(), static_cast<std::streamsize>(header.size()));
  uint64_t written = header.size();
  static constexpr char kZeros[kAlignment] = {};
  for (const PlannedTensor& tensor : plan) {
    RETURN_IF_ERROR(WriteTensor(source, tensor, file));
    file.write(kZeros, static_cast<std::streamsize>(AlignUp(tensor.bytes) - tensor.bytes));
    written += AlignUp(tensor.bytes);
    if (!file) break;
  }
  file.close();
  if (!file) {
    return absl::ResourceExhaustedError(absl::StrCat("failed to write ", temporary.path().string(),
                                                     " after ", written,
                                                     " bytes; check free disk space"));
  }
  std::filesystem::rename(temporary.path(), out, error);
  if (error) {
    return absl::PermissionDeniedError(absl::StrCat("cannot rename ", temporary.path().string(),
                                                    " to ", out.string(), ": ", error.message()));
  }
  temporary.Release();
  summary.tensor_count = static_cast<int64_t>(plan.size());
  summary.file_bytes = written;
  return summary;
}

}  // namespace w8a8
