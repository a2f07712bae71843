#include "core/tokenizer.h"

#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/bpe_tokenizer.h"
#include "core/spm_tokenizer.h"
#include "core/status_macros.h"
#include "spdlog/spdlog.h"

namespace w8a8 {
namespace {

bool InRange(uint8_t byte, uint8_t low, uint8_t high) { return byte >= low && byte <= high; }

}  // namespace

Utf8Scan ScanUtf8Sequence(std::string_view bytes) {
  Utf8Scan scan;
  if (bytes.empty()) return scan;
  const uint8_t lead = static_cast<uint8_t>(bytes[0]);
  if (lead < 0x80) {
    scan.length = 1;
    return scan;
  }

  // The lead byte fixes the length and the allowed range of the second byte, which rules out
  // overlong forms, surrogates and code points above U+10FFFF. Later bytes are 80..BF.
  size_t needed = 0;
  uint8_t second_low = 0x80;
  uint8_t second_high = 0xBF;
  if (InRange(lead, 0xC2, 0xDF)) {
    needed = 2;
  } else if (lead == 0xE0) {
    needed = 3;
    second_low = 0xA0;
  } else if (InRange(lead, 0xE1, 0xEC) || InRange(lead, 0xEE, 0xEF)) {
    needed = 3;
  } else if (lead == 0xED) {
    needed = 3;
    second_high = 0x9F;
  } else if (lead == 0xF0) {
    needed = 4;
    second_low = 0x90;
  } else if (InRange(lead, 0xF1, 0xF3)) {
    needed = 4;
  } else if (lead == 0xF4) {
    needed = 4;
    second_high = 0x8F;
  } else {
    scan.length = 1;
    scan.invalid = true;
    return scan;
  }

  for (size_t i = 1; i < needed; ++i) {
    if (i >= bytes.size()) {
      scan.length = i;
      scan.incomplete = true;
      return scan;
    }
    const uint8_t byte = static_cast<uint8_t>(bytes[i]);
    const bool valid = i == 1 ? InRange(byte, second_low, second_high) : InRange(byte, 0x80, 0xBF);
    if (!valid) {
      scan.length = i;
      scan.invalid = true;
      return scan;
    }
  }
  scan.length = needed;
  return scan;
}

std::string ReplaceInvalidUtf8(std::string_view bytes) {
  std::string text;
  text.reserve(bytes.size());
  for (size_t pos = 0; pos < bytes.size();) {
    const Utf8Scan scan = ScanUtf8Sequence(bytes.substr(pos));
    if (scan.invalid || scan.incomplete) {
      text += "\xEF\xBF\xBD";  // U+FFFD
    } else {
      text.append(bytes.substr(pos, scan.length));
    }
    pos += scan.length;
  }
  return text;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromTokenizerJson(
    const std::filesystem::path& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<ByteLevelBpeTokenizer> tokenizer,
                   ByteLevelBpeTokenizer::FromTokenizerJson(path));
  return std::unique_ptr<Tokenizer>(std::move(tokenizer));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromSentencePieceModel(
    const std::filesystem::path& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<SentencePieceTokenizer> tokenizer,
                   SentencePieceTokenizer::FromModelFile(path));
  return std::unique_ptr<Tokenizer>(std::move(tokenizer));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(const GgufTokenizerData& data) {
  if (data.model == "llama") {
    ASSIGN_OR_RETURN(std::unique_ptr<SentencePieceTokenizer> tokenizer,
                     SentencePieceTokenizer::FromGgufData(data));
    return std::unique_ptr<Tokenizer>(std::move(tokenizer));
  }
  if (data.model == "gpt2") {
    ASSIGN_OR_RETURN(std::unique_ptr<ByteLevelBpeTokenizer> tokenizer,
                     ByteLevelBpeTokenizer::FromGgufData(data));
    return std::unique_ptr<Tokenizer>(std::move(tokenizer));
  }
  return absl::UnimplementedError(absl::StrCat(
      "GGUF tokenizer.ggml.model is \"", data.model,
      "\"; only \"llama\" (SentencePiece) and \"gpt2\" (byte-level BPE) are supported"));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromSource(const TokenizerSource& source) {
  if (source.tokenizer_json.has_value()) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
        FromTokenizerJson(*source.tokenizer_json);
    // LLaMA 2 checkpoints ship a SentencePiece-style tokenizer.json, which only the
    // tokenizer.model beside it describes in a supported form.
    const std::filesystem::path model = source.tokenizer_json->parent_path() / "tokenizer.model";
    if (!tokenizer.ok() && tokenizer.status().code() == absl::StatusCode::kUnimplemented &&
        std::filesystem::exists(model)) {
      spdlog::info("using {} because {} is not supported: {}", model.string(),
                   source.tokenizer_json->string(), std::string(tokenizer.status().message()));
      return FromSentencePieceModel(model);
    }
    return tokenizer;
  }
  if (source.sentencepiece_model.has_value()) {
    return FromSentencePieceModel(*source.sentencepiece_model);
  }
  if (source.gguf.has_value()) return FromGguf(*source.gguf);
  return absl::NotFoundError(
      "the checkpoint has no tokenizer: add tokenizer.json or tokenizer.model beside "
      "config.json, or use a GGUF file with tokenizer.ggml metadata");
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromPath(const std::filesystem::path& path) {
  std::error_code error;
  const std::filesystem::file_status status = std::filesystem::status(path, error);
  if (error || !std::filesystem::exists(status)) {
    return absl::NotFoundError(absl::StrCat(
        "tokenizer path ", path.string(), " not found; pass a checkpoint directory, a .gguf "
        "file, a tokenizer.json or a tokenizer.model"));
  }
  if (std::filesystem::is_directory(status) || path.extension() == ".gguf") {
    ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(path));
    return FromSource(checkpoint->tokenizer_source());
  }
  if (path.extension() == ".json") return FromTokenizerJson(path);
  return FromSentencePieceModel(path);
}

}  // namespace w8a8
