#include "core/tokenizer_files.h"

#include <fstream>

#include "absl/strings/str_cat.h"
#include "core/sentencepiece_model.pb.h"
#include "core/status_macros.h"

namespace w8a8 {
namespace {

// Files of a Hugging Face directory that describe the tokenizer and generation defaults.
constexpr const char* kTokenizerFiles[] = {"tokenizer.json", "tokenizer_config.json",
                                           "tokenizer.model", "special_tokens_map.json",
                                           "generation_config.json"};

}  // namespace

absl::Status WriteSentencePieceModel(const GgufTokenizerData& data,
                                     const std::filesystem::path& path) {
  if (data.model != "llama") {
    return absl::FailedPreconditionError(absl::StrCat(
        "the GGUF tokenizer is of type \"", data.model,
        "\"; only SentencePiece (\"llama\") tokenizers can be written as tokenizer.model"));
  }
  if (!data.scores.empty() && data.scores.size() != data.tokens.size()) {
    return absl::InvalidArgumentError(absl::StrCat("the GGUF tokenizer has ", data.tokens.size(),
                                                   " tokens but ", data.scores.size(),
                                                   " scores"));
  }
  if (!data.token_types.empty() && data.token_types.size() != data.tokens.size()) {
    return absl::InvalidArgumentError(absl::StrCat("the GGUF tokenizer has ", data.tokens.size(),
                                                   " tokens but ", data.token_types.size(),
                                                   " token types"));
  }
  sentencepiece::ModelProto model;
  bool has_byte_pieces = false;
  for (size_t i = 0; i < data.tokens.size(); ++i) {
    sentencepiece::ModelProto::SentencePiece* piece = model.add_pieces();
    piece->set_piece(data.tokens[i]);
    piece->set_score(data.scores.empty() ? 0.0f : data.scores[i]);
    const int32_t type = data.token_types.empty() ? 1 : data.token_types[i];
    // GGUF token types use SentencePiece's numbering (1 normal ... 6 byte).
    if (type >= 1 && type <= 6) {
      piece->set_type(static_cast<sentencepiece::ModelProto::SentencePiece::Type>(type));
    }
    has_byte_pieces = has_byte_pieces || type == 6;
  }
  sentencepiece::TrainerSpec* trainer = model.mutable_trainer_spec();
  trainer->set_model_type(sentencepiece::TrainerSpec::BPE);
  trainer->set_vocab_size(static_cast<int32_t>(data.tokens.size()));
  trainer->set_byte_fallback(has_byte_pieces);
  trainer->set_unk_id(data.unknown_token_id.value_or(0));
  trainer->set_bos_id(data.bos_token_id.value_or(1));
  trainer->set_eos_id(data.eos_token_id.value_or(2));
  trainer->set_pad_id(data.padding_token_id.value_or(-1));
  model.mutable_normalizer_spec()->set_name("identity");
  model.mutable_normalizer_spec()->set_add_dummy_prefix(data.add_space_prefix.value_or(true));

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out || !model.SerializeToOstream(&out)) {
    return absl::InternalError(absl::StrCat("failed to write ", path.string()));
  }
  return absl::OkStatus();
}

absl::Status WriteTokenizerFiles(const Checkpoint& source, const std::filesystem::path& out_dir) {
  const TokenizerSource& tokenizer = source.tokenizer_source();
  if (tokenizer.gguf.has_value()) {
    return WriteSentencePieceModel(*tokenizer.gguf, out_dir / "tokenizer.model");
  }
  if (!std::filesystem::is_directory(source.path())) return absl::OkStatus();
  for (const char* file : kTokenizerFiles) {
    const std::filesystem::path from = source.path() / file;
    if (!std::filesystem::exists(from)) continue;
    std::error_code error;
    std::filesystem::copy_file(from, out_dir / file,
                               std::filesystem::copy_options::overwrite_existing, error);
    if (error) {
      return absl::InternalError(absl::StrCat("failed to copy ", from.string(), " to ",
                                              out_dir.string(), ": ", error.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace w8a8
