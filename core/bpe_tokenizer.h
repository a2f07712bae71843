// Byte-level BPE as GPT-2 and LLaMA 3 use it: a regex pre-tokenizer, the GPT-2 byte-to-unicode
// mapping and merges applied by rank. Loaded from a Hugging Face tokenizer.json or from the
// metadata of a GGUF file whose tokenizer.ggml.model is "gpt2".
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "core/checkpoint.h"
#include "core/tokenizer.h"

namespace w8a8 {

// The pre-tokenizer split pattern of LLaMA 3 (tokenizer.json Split pattern, GGUF pre
// "llama-bpe").
inline constexpr std::string_view kLlama3SplitPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// The pattern of GPT-2's ByteLevel pre-tokenizer with use_regex.
inline constexpr std::string_view kGpt2SplitPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// A token matched in the text before pre-tokenization, as tokenizer.json's added_tokens
// describes it.
struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;  // Matched only when encoding with parse_special.
  bool lstrip = false;   // Whitespace before the token is absorbed into it.
  bool rstrip = false;   // Whitespace after the token is absorbed into it.
};

// Opaque compiled PCRE2 pattern; defined in bpe_tokenizer.cc.
struct CompiledPattern;

// Immutable after construction, so every method is thread-safe and none blocks.
class ByteLevelBpeTokenizer final : public Tokenizer {
 public:
  struct Config {
    // Tokens spelled in the GPT-2 byte-to-unicode alphabet, with their ids.
    std::vector<std::pair<std::string, int32_t>> vocab;
    // Merge pairs in the same spelling; the index is the rank, lowest merges first.
    std::vector<std::pair<std::string, std::string>> merges;
    std::vector<AddedToken> added_tokens;
    // PCRE2 pattern (run in UTF and UCP mode) whose matches and the text between them are
    // the pre-tokens; empty keeps each text segment whole.
    std::string split_pattern;
    bool add_prefix_space = false;  // Prepend a space to a segment that lacks one.
    bool ignore_merges = false;     // A pre-token that is a whole vocab entry skips merging.
    std::optional<int32_t> bos_id;
    bool add_bos = false;
    std::vector<int32_t> eos_ids;
  };

  ~ByteLevelBpeTokenizer() override;

  // Validates the vocabulary, merges and pattern; the message names the entry at fault.
  static absl::StatusOr<std::unique_ptr<ByteLevelBpeTokenizer>> Create(Config config);
  // Reads a Hugging Face tokenizer.json with a BPE model and a ByteLevel pre-tokenizer. BOS
  // comes from a TemplateProcessing post_processor or else from a tokenizer_config.json in
  // the same directory.
  static absl::StatusOr<std::unique_ptr<ByteLevelBpeTokenizer>> FromTokenizerJson(
      const std::filesystem::path& path);
  // Builds from GGUF metadata of tokenizer model "gpt2".
  static absl::StatusOr<std::unique_ptr<ByteLevelBpeTokenizer>> FromGgufData(
      const GgufTokenizerData& data);

  std::vector<int32_t> Encode(std::string_view text, bool add_bos,
                              bool parse_special) const override;
  std::string Decode(const std::vector<int32_t>& ids, bool skip_special = false) const override;
  std::string TokenBytes(int32_t id) const override;
  std::string TokenString(int32_t id) const override;
  std::optional<int32_t> TokenId(std::string_view token_string) const override;
  bool IsSpecial(int32_t id) const override;

  int32_t vocab_size() const override { return static_cast<int32_t>(token_strings_.size()); }
  std::optional<int32_t> bos_id() const override { return bos_id_; }
  std::vector<int32_t> eos_ids() const override { return eos_ids_; }
  std::string type() const override { return "bpe"; }
  bool adds_bos() const override { return add_bos_ && bos_id_.has_value(); }

 private:
  ByteLevelBpeTokenizer() = default;

  // Encodes text that contains no added token.
  void EncodeSegment(std::string_view segment, std::vector<int32_t>& ids) const;
  // Splits valid UTF-8 with the pattern and encodes each pre-token.
  void EncodeValidUtf8(std::string_view text, std::vector<int32_t>& ids) const;
  // Applies the merges to one pre-token.
  void EncodeWord(std::string_view word, std::vector<int32_t>& ids) const;
  // The added token that starts `text`, longest first.
  const AddedToken* MatchAddedToken(std::string_view text, bool parse_special) const;

  std::vector<std::string> token_strings_;  // By id, as the vocabulary spells them.
  std::vector<std::string> token_bytes_;    // By id, the raw bytes.
  std::vector<int8_t> added_kind_;          // By id: 0 model token, 1 added, 2 special added.
  absl::flat_hash_map<std::string, int32_t> string_ids_;
  absl::flat_hash_map<std::string, int32_t> bytes_ids_;  // Model tokens by raw bytes.
  std::array<int32_t, 256> byte_ids_{};                  // -1 where a byte has no token.
  // (left id << 32 | right id) to (rank, merged id).
  absl::flat_hash_map<uint64_t, std::pair<int32_t, int32_t>> merges_;
  std::vector<AddedToken> added_tokens_;
  std::array<std::vector<int32_t>, 256> added_by_first_byte_;  // Indices, longest first.
  std::unique_ptr<CompiledPattern> pattern_;
  bool add_prefix_space_ = false;
  bool ignore_merges_ = false;
  std::optional<int32_t> bos_id_;
  bool add_bos_ = false;
  std::vector<int32_t> eos_ids_;
};

}  // namespace w8a8
