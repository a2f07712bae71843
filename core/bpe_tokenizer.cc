#include "core/bpe_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <queue>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"
#include "core/status_macros.h"

namespace w8a8 {

// ---------------------------------------------------------------------------------------------
// PCRE2 pattern

struct CompiledPattern {
  pcre2_code* code = nullptr;
  ~CompiledPattern() { pcre2_code_free(code); }
};

namespace {

// Match data and a JIT stack per thread, because PCRE2 forbids sharing them between
// concurrent matches while the compiled pattern itself may be shared.
struct MatchScratch {
  pcre2_match_data* match_data = pcre2_match_data_create(16, nullptr);
  pcre2_jit_stack* jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  MatchScratch() { pcre2_jit_stack_assign(context, nullptr, jit_stack); }
  ~MatchScratch() {
    pcre2_match_context_free(context);
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_data_free(match_data);
  }
};

absl::StatusOr<std::unique_ptr<CompiledPattern>> CompilePattern(const std::string& pattern) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                    PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof(message));
    return absl::InvalidArgumentError(absl::StrFormat(
        "invalid pre-tokenizer pattern \"%s\" at offset %d: %s", absl::CEscape(pattern),
        error_offset, reinterpret_cast<const char*>(message)));
  }
  // Without JIT support PCRE2 falls back to its interpreter, which gives the same matches.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  auto compiled = std::make_unique<CompiledPattern>();
  compiled->code = code;
  return compiled;
}

// ---------------------------------------------------------------------------------------------
// GPT-2 byte-to-unicode mapping: printable Latin-1 bytes map to themselves, the other 68 bytes
// to U+0100 onwards in byte order, so every token is printable text.

std::string EncodeCodePoint(uint32_t code_point) {
  std::string out;
  if (code_point < 0x80) {
    out += static_cast<char>(code_point);
  } else if (code_point < 0x800) {
    out += static_cast<char>(0xC0 | (code_point >> 6));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  } else {
    out += static_cast<char>(0xE0 | (code_point >> 12));
    out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  }
  return out;
}

struct ByteAlphabet {
  std::array<std::string, 256> byte_to_text;
  // Byte of each code point of the alphabet, which ends at U+0143; -1 elsewhere.
  std::array<int16_t, 0x144> code_point_to_byte;

  ByteAlphabet() {
    code_point_to_byte.fill(-1);
    uint32_t next_extra = 256;
    for (uint32_t byte = 0; byte < 256; ++byte) {
      const bool printable = (byte >= 0x21 && byte <= 0x7E) || (byte >= 0xA1 && byte <= 0xAC) ||
                             (byte >= 0xAE && byte <= 0xFF);
      const uint32_t code_point = printable ? byte : next_extra++;
      byte_to_text[byte] = EncodeCodePoint(code_point);
      code_point_to_byte[code_point] = static_cast<int16_t>(byte);
    }
  }
};

const ByteAlphabet& Alphabet() {
  static const ByteAlphabet* alphabet = new ByteAlphabet();
  return *alphabet;
}

// Decodes the code point that starts `text`; `length` receives its byte length.
uint32_t DecodeCodePoint(std::string_view text, size_t& length) {
  const Utf8Scan scan = ScanUtf8Sequence(text);
  length = std::max<size_t>(scan.length, 1);
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(text[i]); };
  if (scan.invalid || scan.incomplete || length == 1) return byte(0);
  if (length == 2) return ((byte(0) & 0x1F) << 6) | (byte(1) & 0x3F);
  if (length == 3) return ((byte(0) & 0x0F) << 12) | ((byte(1) & 0x3F) << 6) | (byte(2) & 0x3F);
  return ((byte(0) & 0x07) << 18) | ((byte(1) & 0x3F) << 12) | ((byte(2) & 0x3F) << 6) |
         (byte(3) & 0x3F);
}

// Maps a token spelled in the byte alphabet back to raw bytes. Characters outside the alphabet
// are kept as their UTF-8 bytes.
std::string TokenTextToBytes(std::string_view text) {
  const ByteAlphabet& alphabet = Alphabet();
  std::string bytes;
  for (size_t pos = 0; pos < text.size();) {
    size_t length = 0;
    const uint32_t code_point = DecodeCodePoint(text.substr(pos), length);
    if (code_point < alphabet.code_point_to_byte.size() &&
        alphabet.code_point_to_byte[code_point] >= 0) {
      bytes += static_cast<char>(alphabet.code_point_to_byte[code_point]);
    } else {
      bytes.append(text.substr(pos, length));
    }
    pos += length;
  }
  return bytes;
}

// Debian's Abseil has its own string_view type, so hash lookups convert.
absl::string_view AbslView(std::string_view text) { return {text.data(), text.size()}; }

bool IsWhitespaceByte(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

// End-of-text and end-of-turn tokens of LLaMA 3; <|eom_id|> exists from LLaMA 3.1 on.
constexpr std::array<std::string_view, 3> kEndTokenNames = {"<|end_of_text|>", "<|eot_id|>",
                                                            "<|eom_id|>"};

}  // namespace

ByteLevelBpeTokenizer::~ByteLevelBpeTokenizer() = default;

// ---------------------------------------------------------------------------------------------
// Construction

absl::StatusOr<std::unique_ptr<ByteLevelBpeTokenizer>> ByteLevelBpeTokenizer::Create(
    Config config) {
  std::unique_ptr<ByteLevelBpeTokenizer> tokenizer(new ByteLevelBpeTokenizer());
  ByteLevelBpeTokenizer& t = *tokenizer;

  int32_t size = 0;
  for (const auto& [text, id] : config.vocab) {
    if (id < 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "BPE vocab entry \"%s\" has negative id %d", absl::CEscape(text), id));
    }
    size = std::max(size, id + 1);
  }
  for (const AddedToken& added : config.added_tokens) {
    if (added.id < 0 || added.content.empty()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "added token \"%s\" with id %d is invalid: ids must be non-negative and the content "
          "non-empty",
          absl::CEscape(added.content), added.id));
    }
    size = std::max(size, added.id + 1);
  }
  if (size == 0) return absl::InvalidArgumentError("BPE vocabulary is empty");
  // Ids may leave gaps, but an id far beyond the entry count means a corrupt file and would
  // make the id tables huge.
  const size_t entries = config.vocab.size() + config.added_tokens.size();
  if (static_cast<size_t>(size) > 2 * entries + 256) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "BPE token id %d is far beyond the %d vocabulary and added entries; the largest id "
        "accepted is %d",
        size - 1, entries, 2 * entries + 255));
  }

  t.token_strings_.assign(size, "");
  t.token_bytes_.assign(size, "");
  t.added_kind_.assign(size, 0);
  for (auto& [text, id] : config.vocab) {
    t.token_bytes_[id] = TokenTextToBytes(text);
    t.bytes_ids_.try_emplace(t.token_bytes_[id], id);
    t.string_ids_.try_emplace(text, id);
    t.token_strings_[id] = std::move(text);
  }
  t.byte_ids_.fill(-1);
  for (int byte = 0; byte < 256; ++byte) {
    if (auto it = t.bytes_ids_.find(std::string(1, static_cast<char>(byte)));
        it != t.bytes_ids_.end()) {
      t.byte_ids_[byte] = it->second;
    }
  }

  for (size_t rank = 0; rank < config.merges.size(); ++rank) {
    const auto& [left, right] = config.merges[rank];
    const auto left_it = t.string_ids_.find(left);
    const auto right_it = t.string_ids_.find(right);
    const auto merged_it = t.string_ids_.find(left + right);
    if (left_it == t.string_ids_.end() || right_it == t.string_ids_.end() ||
        merged_it == t.string_ids_.end()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "BPE merge %d (\"%s %s\") uses a token that is not in the vocabulary", rank,
          absl::CEscape(left), absl::CEscape(right)));
    }
    const uint64_t key =
        (static_cast<uint64_t>(left_it->second) << 32) | static_cast<uint32_t>(right_it->second);
    t.merges_.try_emplace(key, static_cast<int32_t>(rank), merged_it->second);
  }

  t.added_tokens_ = std::move(config.added_tokens);
  for (size_t index = 0; index < t.added_tokens_.size(); ++index) {
    const AddedToken& added = t.added_tokens_[index];
    t.token_strings_[added.id] = added.content;
    t.token_bytes_[added.id] = added.content;
    t.added_kind_[added.id] = added.special ? 2 : 1;
    t.string_ids_.insert_or_assign(added.content, added.id);
    t.added_by_first_byte_[static_cast<uint8_t>(added.content[0])].push_back(
        static_cast<int32_t>(index));
  }
  for (std::vector<int32_t>& candidates : t.added_by_first_byte_) {
    std::stable_sort(candidates.begin(), candidates.end(), [&](int32_t a, int32_t b) {
      return t.added_tokens_[a].content.size() > t.added_tokens_[b].content.size();
    });
  }

  if (!config.split_pattern.empty()) {
    ASSIGN_OR_RETURN(t.pattern_, CompilePattern(config.split_pattern));
  }
  t.add_prefix_space_ = config.add_prefix_space;
  t.ignore_merges_ = config.ignore_merges;
  if (config.bos_id.has_value() && (*config.bos_id < 0 || *config.bos_id >= size)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("BOS id %d is outside the vocabulary of %d tokens", *config.bos_id, size));
  }
  t.bos_id_ = config.bos_id;
  t.add_bos_ = config.add_bos;
  for (int32_t id : config.eos_ids) {
    if (id < 0 || id >= size) {
      return absl::InvalidArgumentError(
          absl::StrFormat("EOS id %d is outside the vocabulary of %d tokens", id, size));
    }
    if (std::find(t.eos_ids_.begin(), t.eos_ids_.end(), id) == t.eos_ids_.end()) {
      t.eos_ids_.push_back(id);
    }
  }
  return tokenizer;
}

namespace {

using nlohmann::json;

// Reads the "content" of an AddedToken object or a plain string, as tokenizer_config.json
// spells bos_token and eos_token.
std::optional<std::string> TokenContent(const json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string()) {
    return value["content"].get<std::string>();
  }
  return std::nullopt;
}

// Fills the pattern and prefix-space settings from a tokenizer.json pre_tokenizer.
absl::Status ReadPreTokenizer(const json& pre_tokenizer, const std::string& file,
                              ByteLevelBpeTokenizer::Config& config) {
  std::vector<json> steps;
  if (pre_tokenizer.is_object() && pre_tokenizer.value("type", "") == "Sequence") {
    for (const json& step : pre_tokenizer.at("pretokenizers")) steps.push_back(step);
  } else if (pre_tokenizer.is_object()) {
    steps.push_back(pre_tokenizer);
  }
  bool byte_level = false;
  for (const json& step : steps) {
    const std::string type = step.value("type", "");
    if (type == "Split") {
      const json& pattern = step.at("pattern");
      if (!pattern.contains("Regex") || step.value("behavior", "") != "Isolated" ||
          step.value("invert", false) || !config.split_pattern.empty()) {
        return absl::UnimplementedError(absl::StrCat(
            file, ": pre_tokenizer Split must have one Regex pattern with behavior \"Isolated\" "
                  "and invert false; other Split forms are not supported"));
      }
      config.split_pattern = pattern.at("Regex").get<std::string>();
    } else if (type == "ByteLevel") {
      byte_level = true;
      config.add_prefix_space = step.value("add_prefix_space", false);
      if (step.value("use_regex", true)) {
        if (!config.split_pattern.empty()) {
          return absl::UnimplementedError(absl::StrCat(
              file, ": pre_tokenizer applies both a Split regex and ByteLevel use_regex; "
                    "only one split pattern is supported"));
        }
        config.split_pattern = std::string(kGpt2SplitPattern);
      }
    } else {
      return absl::UnimplementedError(absl::StrCat(
          file, ": pre_tokenizer step \"", type,
          "\" is not supported, only Split and ByteLevel are; for a SentencePiece model pass "
          "its tokenizer.model instead"));
    }
  }
  if (!byte_level) {
    return absl::UnimplementedError(absl::StrCat(
        file, " is not a byte-level BPE tokenizer (its pre_tokenizer has no ByteLevel step); "
              "for a SentencePiece model pass its tokenizer.model instead"));
  }
  return absl::OkStatus();
}

// The first special token of a TemplateProcessing "single" template, when it precedes the
// sequence: that is the BOS the post-processor adds.
std::optional<std::string> TemplateBosToken(const json& post_processor) {
  if (!post_processor.is_object()) return std::nullopt;
  const std::string type = post_processor.value("type", "");
  if (type == "Sequence" && post_processor.contains("processors")) {
    for (const json& processor : post_processor["processors"]) {
      if (std::optional<std::string> bos = TemplateBosToken(processor); bos.has_value()) {
        return bos;
      }
    }
    return std::nullopt;
  }
  if (type != "TemplateProcessing" || !post_processor.contains("single")) return std::nullopt;
  // NOTE: special tokens after the sequence (an EOS in the template) are not added.
  const json& single = post_processor["single"];
  if (!single.is_array() || single.empty() || !single[0].contains("SpecialToken")) {
    return std::nullopt;
  }
  return single[0]["SpecialToken"].at("id").get<std::string>();
}

absl::StatusOr<ByteLevelBpeTokenizer::Config> ReadTokenizerJson(const json& root,
                                                                 const std::string& file) {
  ByteLevelBpeTokenizer::Config config;
  const json& model = root.at("model");
  if (model.value("type", "") != "BPE") {
    return absl::UnimplementedError(absl::StrCat(file, ": model type \"",
                                                 model.value("type", ""),
                                                 "\" is not supported; only BPE is"));
  }
  if (root.contains("normalizer") && !root["normalizer"].is_null()) {
    return absl::UnimplementedError(absl::StrCat(
        file, ": a normalizer is set; byte-level BPE tokenizers with a normalizer are not "
              "supported"));
  }
  RETURN_IF_ERROR(ReadPreTokenizer(root.at("pre_tokenizer"), file, config));

  for (const auto& [text, id] : model.at("vocab").items()) {
    config.vocab.emplace_back(text, id.get<int32_t>());
  }
  for (const json& merge : model.at("merges")) {
    if (merge.is_string()) {
      const std::string text = merge.get<std::string>();
      const size_t space = text.find(' ');
      if (space == std::string::npos || text.find(' ', space + 1) != std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat(
            file, ": merge \"", absl::CEscape(text), "\" must be two tokens split by a space"));
      }
      config.merges.emplace_back(text.substr(0, space), text.substr(space + 1));
    } else if (merge.is_array() && merge.size() == 2) {
      config.merges.emplace_back(merge[0].get<std::string>(), merge[1].get<std::string>());
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          file, ": merge ", merge.dump(), " must be \"a b\" or a pair [\"a\", \"b\"]"));
    }
  }
  config.ignore_merges = model.value("ignore_merges", false);

  if (root.contains("added_tokens")) {
    for (const json& entry : root["added_tokens"]) {
      AddedToken added;
      added.id = entry.at("id").get<int32_t>();
      added.content = entry.at("content").get<std::string>();
      added.special = entry.value("special", false);
      added.lstrip = entry.value("lstrip", false);
      added.rstrip = entry.value("rstrip", false);
      config.added_tokens.push_back(std::move(added));
    }
  }
  return config;
}

// Looks up a token by its text among added tokens first, then the vocab.
std::optional<int32_t> FindToken(const ByteLevelBpeTokenizer::Config& config,
                                 std::string_view text) {
  for (const AddedToken& added : config.added_tokens) {
    if (added.content == text) return added.id;
  }
  for (const auto& [token, id] : config.vocab) {
    if (token == text) return id;
  }
  return std::nullopt;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ByteLevelBpeTokenizer>> ByteLevelBpeTokenizer::FromTokenizerJson(
    const std::filesystem::path& path) {
  const std::string file = path.string();
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", file, "; check the path"));

  Config config;
  std::optional<json> tokenizer_config;
  std::optional<std::string> template_bos;
  try {
    const json root = json::parse(in);
    ASSIGN_OR_RETURN(config, ReadTokenizerJson(root, file));
    if (root.contains("post_processor")) template_bos = TemplateBosToken(root["post_processor"]);

    const std::filesystem::path config_path = path.parent_path() / "tokenizer_config.json";
    if (std::ifstream config_in(config_path, std::ios::binary); config_in) {
      tokenizer_config = json::parse(config_in);
    }
  } catch (const json::exception& error) {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid tokenizer file ", file, " or its tokenizer_config.json: ", error.what()));
  }

  // BOS: the post-processor's template decides. Without one, tokenizer_config.json names BOS,
  // and add_bos_token defaults to true because LLaMA models are trained with BOS.
  std::optional<std::string> bos_text = template_bos;
  config.add_bos = template_bos.has_value();
  std::vector<std::string> eos_texts(kEndTokenNames.begin(), kEndTokenNames.end());
  if (tokenizer_config.has_value() && tokenizer_config->is_object()) {
    if (!bos_text.has_value() && tokenizer_config->contains("bos_token")) {
      bos_text = TokenContent((*tokenizer_config)["bos_token"]);
      config.add_bos = tokenizer_config->value("add_bos_token", true);
    }
    if (tokenizer_config->contains("eos_token")) {
      if (auto eos = TokenContent((*tokenizer_config)["eos_token"]); eos.has_value()) {
        eos_texts.insert(eos_texts.begin(), *eos);
      }
    }
  }
  if (bos_text.has_value()) {
    config.bos_id = FindToken(config, *bos_text);
    if (!config.bos_id.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          file, ": BOS token \"", *bos_text, "\" is not in the vocabulary or added_tokens"));
    }
  }
  for (const std::string& text : eos_texts) {
    if (std::optional<int32_t> id = FindToken(config, text); id.has_value()) {
      config.eos_ids.push_back(*id);
    }
  }

  absl::StatusOr<std::unique_ptr<ByteLevelBpeTokenizer>> tokenizer = Create(std::move(config));
  if (!tokenizer.ok()) {
    return absl::Status(tokenizer.status().code(),
                        absl::StrCat(file, ": ", tokenizer.status().message()));
  }
  return tokenizer;
}

absl::StatusOr<std::unique_ptr<ByteLevelBpeTokenizer>> ByteLevelBpeTokenizer::FromGgufData(
    const GgufTokenizerData& data) {
  if (!data.token_types.empty() && data.token_types.size() != data.tokens.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "GGUF tokenizer.ggml.token_type has %d entries but tokenizer.ggml.tokens has %d; the "
        "arrays must be the same length",
        data.token_types.size(), data.tokens.size()));
  }
  Config config;
  if (data.pre == "llama-bpe" || data.pre == "llama3" || data.pre == "smaug-bpe") {
    config.split_pattern = std::string(kLlama3SplitPattern);
    config.ignore_merges = true;
  } else if (data.pre.empty() || data.pre == "default" || data.pre == "gpt-2") {
    config.split_pattern = std::string(kGpt2SplitPattern);
  } else {
    return absl::UnimplementedError(absl::StrCat(
        "GGUF tokenizer.ggml.pre \"", data.pre,
        "\" is not supported; supported are llama-bpe, llama3, smaug-bpe, gpt-2 and default"));
  }

  for (size_t id = 0; id < data.tokens.size(); ++id) {
    // GGUF type 3 is a control token and 4 a user-defined one. Both are spelled as plain text,
    // not in the byte alphabet, so they are matched in the text before pre-tokenization.
    const int32_t type = data.token_types.empty() ? 1 : data.token_types[id];
    if (type == 3 || type == 4) {
      config.added_tokens.push_back(
          {static_cast<int32_t>(id), data.tokens[id], /*special=*/type == 3, false, false});
    } else {
      config.vocab.emplace_back(data.tokens[id], static_cast<int32_t>(id));
    }
  }
  for (size_t rank = 0; rank < data.merges.size(); ++rank) {
    const std::string& text = data.merges[rank];
    const size_t space = text.find(' ');
    if (space == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "GGUF tokenizer.ggml.merges[%d] \"%s\" must be two tokens split by a space", rank,
          absl::CEscape(text)));
    }
    config.merges.emplace_back(text.substr(0, space), text.substr(space + 1));
  }

  config.bos_id = data.bos_token_id;
  config.add_bos = data.add_bos_token.value_or(true);
  if (data.eos_token_id.has_value()) config.eos_ids.push_back(*data.eos_token_id);
  for (std::string_view name : kEndTokenNames) {
    if (auto it = std::find(data.tokens.begin(), data.tokens.end(), name);
        it != data.tokens.end()) {
      config.eos_ids.push_back(static_cast<int32_t>(it - data.tokens.begin()));
    }
  }
  return Create(std::move(config));
}

// ---------------------------------------------------------------------------------------------
// Encoding

const AddedToken* ByteLevelBpeTokenizer::MatchAddedToken(std::string_view text,
                                                         bool parse_special) const {
  for (int32_t index : added_by_first_byte_[static_cast<uint8_t>(text[0])]) {
    const AddedToken& added = added_tokens_[index];
    if (added.special && !parse_special) continue;
    if (text.starts_with(added.content)) return &added;
  }
  return nullptr;
}

std::vector<int32_t> ByteLevelBpeTokenizer::Encode(std::string_view text, bool add_bos,
                                                   bool parse_special) const {
  std::vector<int32_t> ids;
  if (add_bos && bos_id_.has_value()) ids.push_back(*bos_id_);

  // Added tokens split the text first, leftmost and then longest match.
  size_t segment_begin = 0;
  for (size_t pos = 0; pos < text.size();) {
    const AddedToken* added = MatchAddedToken(text.substr(pos), parse_special);
    if (added == nullptr) {
      ++pos;
      continue;
    }
    size_t segment_end = pos;
    if (added->lstrip) {
      while (segment_end > segment_begin && IsWhitespaceByte(text[segment_end - 1])) {
        --segment_end;
      }
    }
    EncodeSegment(text.substr(segment_begin, segment_end - segment_begin), ids);
    ids.push_back(added->id);
    pos += added->content.size();
    if (added->rstrip) {
      while (pos < text.size() && IsWhitespaceByte(text[pos])) ++pos;
    }
    segment_begin = pos;
  }
  EncodeSegment(text.substr(segment_begin), ids);
  return ids;
}

void ByteLevelBpeTokenizer::EncodeSegment(std::string_view segment,
                                          std::vector<int32_t>& ids) const {
  if (segment.empty()) return;
  std::string prefixed;
  if (add_prefix_space_ && segment[0] != ' ') {
    prefixed = absl::StrCat(" ", AbslView(segment));
    segment = prefixed;
  }
  // PCRE2 in UTF mode requires valid UTF-8, so valid runs are split by the pattern and each
  // invalid byte becomes a pre-token of its own.
  size_t run_begin = 0;
  for (size_t pos = 0; pos < segment.size();) {
    const Utf8Scan scan = ScanUtf8Sequence(segment.substr(pos));
    if (!scan.invalid && !scan.incomplete) {
      pos += scan.length;
      continue;
    }
    EncodeValidUtf8(segment.substr(run_begin, pos - run_begin), ids);
    for (size_t i = 0; i < scan.length; ++i) EncodeWord(segment.substr(pos + i, 1), ids);
    pos += scan.length;
    run_begin = pos;
  }
  EncodeValidUtf8(segment.substr(run_begin), ids);
}

void ByteLevelBpeTokenizer::EncodeValidUtf8(std::string_view text,
                                            std::vector<int32_t>& ids) const {
  if (text.empty()) return;
  if (pattern_ == nullptr) {
    EncodeWord(text, ids);
    return;
  }
  thread_local MatchScratch scratch;
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t offset = 0;
  size_t previous_end = 0;  // End of the last match; text between matches is a pre-token too.
  while (offset < text.size()) {
    const int result = pcre2_match(pattern_->code, subject, text.size(), offset,
                                   PCRE2_NO_UTF_CHECK, scratch.match_data, scratch.context);
    if (result == PCRE2_ERROR_NOMATCH) break;
    if (result < 0) {
      // Only resource limits can fail here; the rest of the text stays one pre-token.
      static std::atomic<int> reported{0};
      if (reported.fetch_add(1) < 10) {
        spdlog::warn("pre-tokenizer pattern failed with PCRE2 error {} at byte {} of a {}-byte "
                     "text; encoding the rest without splitting",
                     result, offset, text.size());
      }
      break;
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(scratch.match_data);
    const size_t match_begin = ovector[0];
    const size_t match_end = ovector[1];
    if (match_end == match_begin) {
      // An empty match splits nothing; step over one character.
      offset = match_begin + std::max<size_t>(1, ScanUtf8Sequence(text.substr(match_begin)).length);
      continue;
    }
    if (match_begin > previous_end) {
      EncodeWord(text.substr(previous_end, match_begin - previous_end), ids);
    }
    EncodeWord(text.substr(match_begin, match_end - match_begin), ids);
    previous_end = match_end;
    offset = match_end;
  }
  if (previous_end < text.size()) EncodeWord(text.substr(previous_end), ids);
}

void ByteLevelBpeTokenizer::EncodeWord(std::string_view word, std::vector<int32_t>& ids) const {
  if (ignore_merges_) {
    if (auto it = bytes_ids_.find(AbslView(word)); it != bytes_ids_.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  // Symbols form a linked list; a merge replaces the left symbol's id and unlinks the right.
  struct Symbol {
    int32_t id;
    int prev;
    int next;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  for (char c : word) {
    const int32_t id = byte_ids_[static_cast<uint8_t>(c)];
    // NOTE: a byte without a token is dropped because no unknown token can stand for it.
    // GPT-2 and LLaMA 3 vocabularies have a token for every byte.
    if (id < 0) continue;
    const int index = static_cast<int>(symbols.size());
    symbols.push_back({id, index - 1, -1});
    if (index > 0) symbols[index - 1].next = index;
  }

  struct Candidate {
    int32_t rank;
    int left;
    int32_t left_id;
    int32_t right_id;
    int32_t merged_id;
  };
  // Lowest rank first; among equal ranks the leftmost pair.
  const auto lower_priority = [](const Candidate& a, const Candidate& b) {
    if (a.rank != b.rank) return a.rank > b.rank;
    return a.left > b.left;
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(lower_priority)> queue(
      lower_priority);
  const auto push_candidate = [&](int left) {
    if (left < 0 || symbols[left].next < 0) return;
    const Symbol& right = symbols[symbols[left].next];
    const uint64_t key =
        (static_cast<uint64_t>(symbols[left].id) << 32) | static_cast<uint32_t>(right.id);
    auto it = merges_.find(key);
    if (it == merges_.end()) return;
    queue.push({it->second.first, left, symbols[left].id, right.id, it->second.second});
  };
  for (int i = 0; i + 1 < static_cast<int>(symbols.size()); ++i) push_candidate(i);

  while (!queue.empty()) {
    const Candidate candidate = queue.top();
    queue.pop();
    Symbol& left = symbols[candidate.left];
    if (left.id != candidate.left_id || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    if (right.id != candidate.right_id) continue;
    left.id = candidate.merged_id;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = candidate.left;
    right.id = -1;
    push_candidate(left.prev);
    push_candidate(candidate.left);
  }
  for (int i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[i].next) ids.push_back(symbols[i].id);
}

// ---------------------------------------------------------------------------------------------
// Decoding and lookups

std::string ByteLevelBpeTokenizer::Decode(const std::vector<int32_t>& ids,
                                          bool skip_special) const {
  std::string bytes;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) continue;
    if (skip_special && added_kind_[id] == 2) continue;
    bytes += token_bytes_[id];
  }
  return ReplaceInvalidUtf8(bytes);
}

std::string ByteLevelBpeTokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return "";
  return token_bytes_[id];
}

std::string ByteLevelBpeTokenizer::TokenString(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return "";
  return token_strings_[id];
}

std::optional<int32_t> ByteLevelBpeTokenizer::TokenId(std::string_view token_string) const {
  auto it = string_ids_.find(AbslView(token_string));
  if (it == string_ids_.end()) return std::nullopt;
  return it->second;
}

bool ByteLevelBpeTokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < vocab_size() && added_kind_[id] == 2;
}

}  // namespace w8a8
