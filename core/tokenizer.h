// Text to token ids and back: byte-level BPE (tokenizer.json, LLaMA 3) and SentencePiece BPE
// with byte fallback (LLaMA 2, the stories models).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/checkpoint.h"

namespace w8a8 {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromTokenizerJson(
      const std::filesystem::path& path);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromSentencePieceModel(
      const std::filesystem::path& path);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const GgufTokenizerData& data);
  // Picks the constructor that matches the checkpoint's tokenizer source.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromSource(const TokenizerSource& source);
  // Loads from a checkpoint path, a bare tokenizer.json or a tokenizer.model file.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromPath(const std::filesystem::path& path);

  // Encodes `text`. With `parse_special`, special-token strings in the text ("<|eot_id|>")
  // become their ids; otherwise they are encoded as plain text. `add_bos` prepends BOS when
  // the tokenizer has one.
  virtual std::vector<int32_t> Encode(std::string_view text, bool add_bos,
                                      bool parse_special) const = 0;
  // Decodes ids to UTF-8. Special tokens are kept as their text unless `skip_special`.
  virtual std::string Decode(const std::vector<int32_t>& ids, bool skip_special = false) const = 0;
  // Raw bytes a token stands for (after byte-level or byte-fallback mapping); the text of a
  // special token for special tokens. SentencePiece's "▁" becomes a space.
  virtual std::string TokenBytes(int32_t id) const = 0;
  // The token's string as the vocabulary spells it.
  virtual std::string TokenString(int32_t id) const = 0;
  virtual std::optional<int32_t> TokenId(std::string_view token_string) const = 0;
  virtual bool IsSpecial(int32_t id) const = 0;

  virtual int32_t vocab_size() const = 0;
  virtual std::optional<int32_t> bos_id() const = 0;
  virtual std::vector<int32_t> eos_ids() const = 0;  // Every end-of-sequence or end-of-turn id.
  // Whether the tokenizer's own configuration prepends BOS to an encoded text (tokenizer.json
  // post_processor, tokenizer_config.json add_bos_token, GGUF add_bos_token). Callers that
  // follow the model's convention pass this as `add_bos`.
  virtual bool adds_bos() const { return bos_id().has_value(); }
  virtual std::string type() const = 0;             // "bpe" or "sentencepiece".
  // Whether the first decoded piece loses the leading space SentencePiece adds to the text.
  virtual bool strips_leading_space() const { return false; }
};

// Scans the UTF-8 sequence that starts at `bytes[0]`. A well-formed character gives its
// length. A sequence cut short by the end of `bytes` sets `incomplete` with the available
// length. An ill-formed one sets `invalid` with the length of its maximal subpart (at least
// 1), which decoders replace with one U+FFFD.
struct Utf8Scan {
  size_t length = 0;
  bool incomplete = false;
  bool invalid = false;
};
Utf8Scan ScanUtf8Sequence(std::string_view bytes);
// Copies `bytes`, replacing each maximal invalid UTF-8 subsequence with U+FFFD.
std::string ReplaceInvalidUtf8(std::string_view bytes);

// Turns a stream of token ids into text pieces, holding back bytes until they form complete
// UTF-8 characters, so a character split over several tokens is never emitted broken.
class StreamingDetokenizer {
 public:
  explicit StreamingDetokenizer(const Tokenizer& tokenizer, bool skip_special = true);
  // Returns the text that became complete with `id`; possibly empty.
  std::string Push(int32_t id);
  // Returns what is left, with invalid byte sequences replaced by U+FFFD.
  std::string Flush();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  bool first_piece_ = true;
  std::string pending_;
};

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" or "ipython".
  std::string content;
};

// Builds the Llama 3 chat prompt: BOS, then per message a header
// "<|start_header_id|>role<|end_header_id|>\n\n" with the content and "<|eot_id|>", then an open
// assistant header when `add_generation_prompt`. Content is trimmed of surrounding whitespace,
// as Meta's chat template does. Rejects an unknown role or an empty list.
absl::StatusOr<std::string> FormatLlama3Chat(const std::vector<ChatMessage>& messages,
                                             bool add_generation_prompt = true);

}  // namespace w8a8
