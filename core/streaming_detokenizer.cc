#include "core/tokenizer.h"

namespace w8a8 {

StreamingDetokenizer::StreamingDetokenizer(const Tokenizer& tokenizer, bool skip_special)
    : tokenizer_(tokenizer), skip_special_(skip_special) {}

std::string StreamingDetokenizer::Push(int32_t id) {
  if (tokenizer_.IsSpecial(id)) {
    if (skip_special_) return "";
    pending_ += tokenizer_.TokenBytes(id);
  } else {
    std::string piece = tokenizer_.TokenBytes(id);
    // Only a piece spelled with SentencePiece's U+2581 carries the dummy-prefix space; a byte
    // piece <0x20> is a real space, as in SentencePieceTokenizer::Decode.
    if (first_piece_ && tokenizer_.strips_leading_space() && piece.starts_with(' ') &&
        tokenizer_.TokenString(id).starts_with("\xE2\x96\x81")) {
      piece.erase(0, 1);
    }
    first_piece_ = false;
    pending_ += piece;
  }

  // Emit everything up to a character that is still incomplete at the end. An ill-formed
  // sequence can never become valid, so it is replaced right away.
  std::string text;
  size_t pos = 0;
  while (pos < pending_.size()) {
    const Utf8Scan scan = ScanUtf8Sequence(std::string_view(pending_).substr(pos));
    if (scan.incomplete) break;
    if (scan.invalid) {
      text += "\xEF\xBF\xBD";  // U+FFFD
    } else {
      text.append(pending_, pos, scan.length);
    }
    pos += scan.length;
  }
  pending_.erase(0, pos);
  return text;
}

std::string StreamingDetokenizer::Flush() {
  std::string text = ReplaceInvalidUtf8(pending_);
  pending_.clear();
  return text;
}

}  // namespace w8a8
