#include "core/spm_tokenizer.h"

#include <algorithm>
#include <fstream>
#include <queue>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "core/sentencepiece_model.pb.h"
#include "core/status_macros.h"

namespace w8a8 {
namespace {

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581, SentencePiece's space.

// Debian's Abseil has its own string_view type, so hash lookups convert.
absl::string_view AbslView(std::string_view text) { return {text.data(), text.size()}; }

// Returns the byte a piece spelled "<0xXX>" stands for.
std::optional<uint8_t> ParseBytePiece(std::string_view text) {
  if (text.size() != 6 || text.substr(0, 3) != "<0x" || text[5] != '>') return std::nullopt;
  int value = 0;
  for (char c : text.substr(3, 2)) {
    value *= 16;
    if (c >= '0' && c <= '9') {
      value += c - '0';
    } else if (c >= 'A' && c <= 'F') {
      value += c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      value += c - 'a' + 10;
    } else {
      return std::nullopt;
    }
  }
  return static_cast<uint8_t>(value);
}

// Sorts ids so that longer piece texts come first, for longest-match scanning.
void SortLongestFirst(const std::vector<SentencePiece>& pieces, std::vector<int32_t>& ids) {
  std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
    return pieces[a].text.size() > pieces[b].text.size();
  });
}

absl::Status CheckOptionalId(const std::optional<int32_t>& id, size_t vocab_size,
                             std::string_view name) {
  if (id.has_value() && (*id < 0 || static_cast<size_t>(*id) >= vocab_size)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "SentencePiece %s %d is outside the vocabulary of %d pieces; fix the tokenizer file",
        name, *id, vocab_size));
  }
  return absl::OkStatus();
}

}  // namespace

SentencePieceTokenizer::SentencePieceTokenizer(std::vector<SentencePiece> pieces,
                                               const Options& options)
    : pieces_(std::move(pieces)), options_(options) {
  byte_ids_.fill(-1);
  for (int32_t id = 0; id < static_cast<int32_t>(pieces_.size()); ++id) {
    const SentencePiece& piece = pieces_[id];
    piece_ids_.try_emplace(piece.text, id);
    switch (piece.type) {
      case PieceType::kNormal:
        mergeable_ids_.try_emplace(piece.text, id);
        break;
      case PieceType::kUserDefined:
        mergeable_ids_.try_emplace(piece.text, id);
        user_defined_ids_.push_back(id);
        break;
      case PieceType::kControl:
      case PieceType::kUnknown:
        special_ids_.push_back(id);
        break;
      case PieceType::kByte:
        if (std::optional<uint8_t> byte = ParseBytePiece(piece.text); byte.has_value()) {
          if (byte_ids_[*byte] < 0) byte_ids_[*byte] = id;
        }
        break;
      case PieceType::kUnused:
        break;
    }
  }
  SortLongestFirst(pieces_, user_defined_ids_);
  SortLongestFirst(pieces_, special_ids_);
}

absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> SentencePieceTokenizer::Create(
    std::vector<SentencePiece> pieces, const Options& options) {
  if (pieces.empty()) {
    return absl::InvalidArgumentError("SentencePiece vocabulary is empty; the tokenizer file "
                                      "must list at least one piece");
  }
  for (size_t id = 0; id < pieces.size(); ++id) {
    const SentencePiece& piece = pieces[id];
    const int32_t type = static_cast<int32_t>(piece.type);
    if (type < 1 || type > 6) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "SentencePiece piece %d (\"%s\") has invalid type %d; expected 1 to 6", id,
          absl::CEscape(piece.text), type));
    }
    if (piece.text.empty() && piece.type != PieceType::kUnused) {
      return absl::InvalidArgumentError(
          absl::StrFormat("SentencePiece piece %d is empty; only unused pieces may be empty", id));
    }
    if (piece.type == PieceType::kByte && !ParseBytePiece(piece.text).has_value()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "SentencePiece byte piece %d is spelled \"%s\"; byte pieces must read <0xXX>", id,
          absl::CEscape(piece.text)));
    }
  }
  RETURN_IF_ERROR(CheckOptionalId(options.unknown_id, pieces.size(), "unknown id"));
  RETURN_IF_ERROR(CheckOptionalId(options.bos_id, pieces.size(), "BOS id"));
  RETURN_IF_ERROR(CheckOptionalId(options.eos_id, pieces.size(), "EOS id"));
  return std::unique_ptr<SentencePieceTokenizer>(
      new SentencePieceTokenizer(std::move(pieces), options));
}

absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> SentencePieceTokenizer::FromModelFile(
    const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("cannot open SentencePiece model ", path.string(), "; check the path"));
  }
  sentencepiece::ModelProto model;
  if (!model.ParseFromIstream(&in)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid SentencePiece model ", path.string(),
        ": the file is not a ModelProto protobuf; pass a tokenizer.model file"));
  }
  const sentencepiece::TrainerSpec& trainer = model.trainer_spec();
  if (trainer.model_type() != sentencepiece::TrainerSpec::BPE) {
    return absl::UnimplementedError(absl::StrCat(
        "SentencePiece model ", path.string(), " has model_type ",
        sentencepiece::TrainerSpec::ModelType_Name(trainer.model_type()),
        "; only BPE models are supported"));
  }

  std::vector<SentencePiece> pieces;
  pieces.reserve(model.pieces_size());
  for (const auto& proto_piece : model.pieces()) {
    pieces.push_back({proto_piece.piece(), proto_piece.score(),
                      static_cast<PieceType>(proto_piece.type())});
  }
  const auto id_or_none = [&](int32_t id) -> std::optional<int32_t> {
    if (id < 0) return std::nullopt;
    return id;
  };
  Options options;
  options.add_dummy_prefix = model.normalizer_spec().add_dummy_prefix();
  options.byte_fallback = trainer.byte_fallback();
  options.unknown_id = id_or_none(trainer.unk_id());
  options.bos_id = id_or_none(trainer.bos_id());
  options.eos_id = id_or_none(trainer.eos_id());
  // SentencePiece leaves BOS to the caller. LLaMA models are trained with BOS, so it is on.
  options.add_bos = true;
  absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> tokenizer =
      Create(std::move(pieces), options);
  if (!tokenizer.ok()) {
    return absl::Status(tokenizer.status().code(),
                        absl::StrCat(path.string(), ": ", tokenizer.status().message()));
  }
  return tokenizer;
}

absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> SentencePieceTokenizer::FromGgufData(
    const GgufTokenizerData& data) {
  const size_t count = data.tokens.size();
  if (!data.scores.empty() && data.scores.size() != count) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "GGUF tokenizer.ggml.scores has %d entries but tokenizer.ggml.tokens has %d; the "
        "arrays must be the same length",
        data.scores.size(), count));
  }
  if (!data.token_types.empty() && data.token_types.size() != count) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "GGUF tokenizer.ggml.token_type has %d entries but tokenizer.ggml.tokens has %d; the "
        "arrays must be the same length",
        data.token_types.size(), count));
  }
  std::vector<SentencePiece> pieces(count);
  bool has_byte_pieces = false;
  for (size_t id = 0; id < count; ++id) {
    pieces[id].text = data.tokens[id];
    pieces[id].score = data.scores.empty() ? 0.0f : data.scores[id];
    if (!data.token_types.empty()) {
      pieces[id].type = static_cast<PieceType>(data.token_types[id]);
    } else if (ParseBytePiece(data.tokens[id]).has_value()) {
      pieces[id].type = PieceType::kByte;
    }
    has_byte_pieces = has_byte_pieces || pieces[id].type == PieceType::kByte;
  }
  Options options;
  options.add_dummy_prefix = data.add_space_prefix.value_or(true);
  options.byte_fallback = has_byte_pieces;
  options.add_bos = data.add_bos_token.value_or(true);
  // SentencePiece's default ids (unknown 0, BOS 1, EOS 2) stand in for ids the GGUF omits.
  options.unknown_id = data.unknown_token_id.value_or(0);
  options.bos_id = data.bos_token_id.value_or(1);
  options.eos_id = data.eos_token_id.value_or(2);
  return Create(std::move(pieces), options);
}

std::optional<size_t> SentencePieceTokenizer::MatchUserDefined(std::string_view text) const {
  for (int32_t id : user_defined_ids_) {
    if (text.starts_with(pieces_[id].text)) return pieces_[id].text.size();
  }
  return std::nullopt;
}

std::optional<int32_t> SentencePieceTokenizer::MatchSpecial(std::string_view text) const {
  for (int32_t id : special_ids_) {
    if (text.starts_with(pieces_[id].text)) return id;
  }
  return std::nullopt;
}

void SentencePieceTokenizer::AppendSymbol(std::string_view symbol,
                                          std::vector<int32_t>& ids) const {
  if (auto it = mergeable_ids_.find(AbslView(symbol)); it != mergeable_ids_.end()) {
    ids.push_back(it->second);
    return;
  }
  if (options_.byte_fallback) {
    bool all_bytes_known = true;
    for (char c : symbol) all_bytes_known = all_bytes_known && byte_ids_[uint8_t(c)] >= 0;
    if (all_bytes_known) {
      for (char c : symbol) ids.push_back(byte_ids_[static_cast<uint8_t>(c)]);
      return;
    }
  }
  if (options_.unknown_id.has_value()) ids.push_back(*options_.unknown_id);
}

void SentencePieceTokenizer::EncodeText(std::string_view text, bool at_start,
                                        std::vector<int32_t>& ids) const {
  if (text.empty()) return;
  std::string normalized;
  if (at_start && options_.add_dummy_prefix) normalized = std::string(kSpaceMark);
  normalized += absl::StrReplaceAll(AbslView(text), {{" ", AbslView(kSpaceMark)}});

  // Symbols form a doubly linked list over `normalized`; a merge grows the left symbol and
  // unlinks the right one, so indices keep their text order.
  struct Symbol {
    size_t begin;
    size_t length;
    int prev;
    int next;
    bool frozen;  // User-defined pieces never merge with neighbors.
  };
  std::vector<Symbol> symbols;
  const std::string_view view = normalized;
  for (size_t pos = 0; pos < view.size();) {
    size_t length = 0;
    bool frozen = false;
    if (std::optional<size_t> user_defined = MatchUserDefined(view.substr(pos));
        user_defined.has_value()) {
      length = *user_defined;
      frozen = true;
    } else {
      length = ScanUtf8Sequence(view.substr(pos)).length;
    }
    const int index = static_cast<int>(symbols.size());
    symbols.push_back({pos, length, index - 1, -1, frozen});
    if (index > 0) symbols[index - 1].next = index;
    pos += length;
  }

  struct Candidate {
    float score;
    int left;
    size_t length;  // Byte length of the merged piece, to detect stale candidates.
  };
  // Highest score first; among equal scores the leftmost pair.
  const auto lower_priority = [](const Candidate& a, const Candidate& b) {
    if (a.score != b.score) return a.score < b.score;
    return a.left > b.left;
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(lower_priority)> queue(
      lower_priority);
  const auto push_candidate = [&](int left) {
    if (left < 0) return;
    const int right = symbols[left].next;
    if (right < 0 || symbols[left].frozen || symbols[right].frozen) return;
    const size_t length = symbols[left].length + symbols[right].length;
    auto it = mergeable_ids_.find(AbslView(view.substr(symbols[left].begin, length)));
    if (it == mergeable_ids_.end()) return;
    queue.push({pieces_[it->second].score, left, length});
  };
  for (int i = 0; i + 1 < static_cast<int>(symbols.size()); ++i) push_candidate(i);

  while (!queue.empty()) {
    const Candidate candidate = queue.top();
    queue.pop();
    Symbol& left = symbols[candidate.left];
    if (left.length == 0 || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    if (left.length + right.length != candidate.length) continue;
    left.length = candidate.length;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = candidate.left;
    right.length = 0;
    push_candidate(left.prev);
    push_candidate(candidate.left);
  }

  for (int i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[i].next) {
    AppendSymbol(view.substr(symbols[i].begin, symbols[i].length), ids);
  }
}

std::vector<int32_t> SentencePieceTokenizer::Encode(std::string_view text, bool add_bos,
                                                    bool parse_special) const {
  std::vector<int32_t> ids;
  if (add_bos && options_.bos_id.has_value()) ids.push_back(*options_.bos_id);
  if (!parse_special) {
    EncodeText(text, /*at_start=*/true, ids);
    return ids;
  }
  // Special-token strings split the text; only the first text segment gets the dummy prefix,
  // so "<s>Hello" encodes like BOS followed by "Hello".
  bool first_segment = true;
  size_t segment_begin = 0;
  for (size_t pos = 0; pos < text.size();) {
    std::optional<int32_t> special = MatchSpecial(text.substr(pos));
    if (!special.has_value()) {
      ++pos;
      continue;
    }
    if (pos > segment_begin) {
      EncodeText(text.substr(segment_begin, pos - segment_begin), first_segment, ids);
      first_segment = false;
    }
    ids.push_back(*special);
    pos += pieces_[*special].text.size();
    segment_begin = pos;
  }
  EncodeText(text.substr(segment_begin), first_segment, ids);
  return ids;
}

std::string SentencePieceTokenizer::Decode(const std::vector<int32_t>& ids,
                                           bool skip_special) const {
  std::string bytes;
  bool first_text_piece = true;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) continue;
    if (IsSpecial(id)) {
      if (!skip_special) bytes += pieces_[id].text;
      continue;
    }
    std::string piece = TokenBytes(id);
    if (first_text_piece && options_.add_dummy_prefix && pieces_[id].type != PieceType::kByte &&
        piece.starts_with(' ')) {
      piece.erase(0, 1);
    }
    first_text_piece = false;
    bytes += piece;
  }
  return ReplaceInvalidUtf8(bytes);
}

std::string SentencePieceTokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return "";
  const SentencePiece& piece = pieces_[id];
  if (piece.type == PieceType::kByte) {
    return std::string(1, static_cast<char>(*ParseBytePiece(piece.text)));
  }
  if (IsSpecial(id)) return piece.text;
  return absl::StrReplaceAll(piece.text, {{AbslView(kSpaceMark), " "}});
}

std::string SentencePieceTokenizer::TokenString(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return "";
  return pieces_[id].text;
}

std::optional<int32_t> SentencePieceTokenizer::TokenId(std::string_view token_string) const {
  auto it = piece_ids_.find(AbslView(token_string));
  if (it == piece_ids_.end()) return std::nullopt;
  return it->second;
}

bool SentencePieceTokenizer::IsSpecial(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return false;
  return pieces_[id].type == PieceType::kControl || pieces_[id].type == PieceType::kUnknown;
}

std::vector<int32_t> SentencePieceTokenizer::eos_ids() const {
  if (!options_.eos_id.has_value()) return {};
  return {*options_.eos_id};
}

}  // namespace w8a8
