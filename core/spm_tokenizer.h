// SentencePiece BPE with byte fallback, as LLaMA 2 and the llama2.c models use it.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "core/checkpoint.h"
#include "core/tokenizer.h"

namespace w8a8 {

// Piece types, numbered as in SentencePiece's ModelProto and GGUF's tokenizer.ggml.token_type.
enum class PieceType : int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

struct SentencePiece {
  std::string text;  // Spaces appear as U+2581; byte pieces are spelled "<0xXX>".
  float score = 0.0f;
  PieceType type = PieceType::kNormal;
};

// Encodes like SentencePiece's BPE model. Spaces become U+2581, and one U+2581 is prepended
// when `add_dummy_prefix`. The text is split into characters, with user-defined pieces kept
// whole. Then the adjacent pair whose concatenation is a normal piece with the highest score
// is merged, the leftmost on ties, until no pair qualifies. A leftover character that is not a
// piece becomes one <0xXX> piece per UTF-8 byte with byte fallback, else the unknown piece.
//
// NOTE: runs of spaces are kept. SentencePiece itself collapses them when a model leaves
// normalizer_spec.remove_extra_whitespaces at its default (true), so its ids can differ.
//
// Immutable after construction, so every method is thread-safe and none blocks.
class SentencePieceTokenizer final : public Tokenizer {
 public:
  struct Options {
    bool add_dummy_prefix = true;
    bool byte_fallback = true;
    bool add_bos = true;
    std::optional<int32_t> unknown_id;
    std::optional<int32_t> bos_id;
    std::optional<int32_t> eos_id;
  };

  // Validates ids and piece types; the message names the piece or id at fault.
  static absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> Create(
      std::vector<SentencePiece> pieces, const Options& options);
  // Reads a tokenizer.model protobuf. Only model_type BPE is supported.
  static absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> FromModelFile(
      const std::filesystem::path& path);
  // Builds from GGUF metadata of tokenizer model "llama".
  static absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> FromGgufData(
      const GgufTokenizerData& data);

  std::vector<int32_t> Encode(std::string_view text, bool add_bos,
                              bool parse_special) const override;
  std::string Decode(const std::vector<int32_t>& ids, bool skip_special = false) const override;
  std::string TokenBytes(int32_t id) const override;
  std::string TokenString(int32_t id) const override;
  std::optional<int32_t> TokenId(std::string_view token_string) const override;
  bool IsSpecial(int32_t id) const override;

  int32_t vocab_size() const override { return static_cast<int32_t>(pieces_.size()); }
  std::optional<int32_t> bos_id() const override { return options_.bos_id; }
  std::vector<int32_t> eos_ids() const override;
  std::string type() const override { return "sentencepiece"; }
  bool adds_bos() const override { return options_.add_bos && options_.bos_id.has_value(); }
  bool strips_leading_space() const override { return options_.add_dummy_prefix; }

 private:
  SentencePieceTokenizer(std::vector<SentencePiece> pieces, const Options& options);

  // Encodes text without special-token parsing; `at_start` allows the dummy prefix.
  void EncodeText(std::string_view text, bool at_start, std::vector<int32_t>& ids) const;
  // Appends the id of `symbol`, or its byte pieces, or the unknown id.
  void AppendSymbol(std::string_view symbol, std::vector<int32_t>& ids) const;
  // The user-defined piece that starts `text`, longest first.
  std::optional<size_t> MatchUserDefined(std::string_view text) const;
  // The control or unknown piece that starts `text`, longest first.
  std::optional<int32_t> MatchSpecial(std::string_view text) const;

  std::vector<SentencePiece> pieces_;
  Options options_;
  absl::flat_hash_map<std::string, int32_t> piece_ids_;     // Every piece.
  absl::flat_hash_map<std::string, int32_t> mergeable_ids_;  // Normal and user-defined pieces.
  std::array<int32_t, 256> byte_ids_;                        // -1 where a byte piece is missing.
  std::vector<int32_t> user_defined_ids_;                    // Longest text first.
  std::vector<int32_t> special_ids_;                         // Longest text first.
};

}  // namespace w8a8
