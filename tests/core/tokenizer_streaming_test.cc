// StreamingDetokenizer: text pieces from a stream of ids never contain a broken UTF-8
// character, for the LLaMA 3 byte-level BPE and the stories260K SentencePiece vocabulary.
#include <string>
#include <vector>

#include "core/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/reference/reference_paths.h"
#include "tests/test_util.h"

namespace w8a8 {
namespace {

constexpr const char* kReplacement = "\xEF\xBF\xBD";  // U+FFFD

const Tokenizer* LoadLlama3() {
  static const absl::StatusOr<std::unique_ptr<Tokenizer>>* tokenizer =
      new absl::StatusOr<std::unique_ptr<Tokenizer>>(
          Tokenizer::FromTokenizerJson(testing::Llama3TokenizerJson()));
  EXPECT_TRUE(tokenizer->ok()) << tokenizer->status();
  return tokenizer->ok() ? tokenizer->value().get() : nullptr;
}

const Tokenizer* LoadStories() {
  static const absl::StatusOr<std::unique_ptr<Tokenizer>>* tokenizer =
      new absl::StatusOr<std::unique_ptr<Tokenizer>>(
          Tokenizer::FromSentencePieceModel(testing::Stories260KDir() / "tok512.model"));
  EXPECT_TRUE(tokenizer->ok()) << tokenizer->status();
  return tokenizer->ok() ? tokenizer->value().get() : nullptr;
}

// Pushes every id and returns the emitted pieces, with the flushed rest as the last piece.
std::vector<std::string> StreamPieces(const Tokenizer& tokenizer, const std::vector<int32_t>& ids,
                                      bool skip_special = true) {
  StreamingDetokenizer detokenizer(tokenizer, skip_special);
  std::vector<std::string> pieces;
  for (int32_t id : ids) pieces.push_back(detokenizer.Push(id));
  pieces.push_back(detokenizer.Flush());
  return pieces;
}

std::string Join(const std::vector<std::string>& pieces) {
  std::string text;
  for (const std::string& piece : pieces) text += piece;
  return text;
}

bool IsValidUtf8(const std::string& text) { return ReplaceInvalidUtf8(text) == text; }

// Encodes `text` one byte at a time, so every multi-byte character arrives as one token per
// byte, the worst case for a streaming decoder.
std::vector<int32_t> ByteTokens(const Tokenizer& tokenizer, const std::string& text) {
  std::vector<int32_t> ids;
  for (char c : text) {
    const std::vector<int32_t> byte_ids = tokenizer.Encode(std::string(1, c), false, false);
    ids.insert(ids.end(), byte_ids.begin(), byte_ids.end());
  }
  return ids;
}

TEST(StreamingDetokenizer, KeepsEmojiWholeAcrossByteTokens) {
  const Tokenizer* tokenizer = LoadLlama3();
  ASSERT_NE(tokenizer, nullptr);
  // U+1F468 U+200D U+1F469 (a ZWJ sequence) and U+1F600, 11 + 4 bytes.
  const std::string text = "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9 \xF0\x9F\x98\x80";
  const std::vector<int32_t> ids = ByteTokens(*tokenizer, text);
  ASSERT_EQ(ids.size(), text.size());
  const std::vector<std::string> pieces = StreamPieces(*tokenizer, ids);
  for (const std::string& piece : pieces) EXPECT_TRUE(IsValidUtf8(piece)) << piece;
  EXPECT_EQ(Join(pieces), text);
  // The first three bytes of U+1F468 produce nothing; the fourth completes the character.
  EXPECT_EQ(pieces[0], "");
  EXPECT_EQ(pieces[2], "");
  EXPECT_EQ(pieces[3], "\xF0\x9F\x91\xA8");
}

TEST(StreamingDetokenizer, KeepsCjkWholeAcrossByteTokens) {
  const Tokenizer* tokenizer = LoadLlama3();
  ASSERT_NE(tokenizer, nullptr);
  const std::string text = "\xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x8C\xE4\xB8\x96\xE7\x95\x8C";
  const std::vector<int32_t> ids = ByteTokens(*tokenizer, text);
  const std::vector<std::string> pieces = StreamPieces(*tokenizer, ids);
  for (const std::string& piece : pieces) EXPECT_TRUE(IsValidUtf8(piece)) << piece;
  EXPECT_EQ(Join(pieces), text);
}

TEST(StreamingDetokenizer, MatchesDecodeForNormalTokens) {
  const Tokenizer* tokenizer = LoadLlama3();
  ASSERT_NE(tokenizer, nullptr);
  const std::string text =
      "Mixed text: caf\xC3\xA9, \xD9\x85\xD8\xB1\xD8\xAD\xD8\xA8\xD8\xA7, \xE0\xA4\xA8\xE0\xA4\xAE"
      "\xE0\xA4\xB8\xE0\xA5\x8D\xE0\xA4\xA4\xE0\xA5\x87 and \xF0\x9F\x8E\x89!";
  const std::vector<int32_t> ids = tokenizer->Encode(text, true, false);
  const std::vector<std::string> pieces = StreamPieces(*tokenizer, ids);
  for (const std::string& piece : pieces) EXPECT_TRUE(IsValidUtf8(piece)) << piece;
  EXPECT_EQ(Join(pieces), text);
  EXPECT_EQ(Join(pieces), tokenizer->Decode(ids, /*skip_special=*/true));
}

TEST(StreamingDetokenizer, FlushReplacesIncompleteCharacter) {
  const Tokenizer* tokenizer = LoadLlama3();
  ASSERT_NE(tokenizer, nullptr);
  const std::vector<int32_t> ids = ByteTokens(*tokenizer, "ok\xF0\x9F\x98");
  const std::vector<std::string> pieces = StreamPieces(*tokenizer, ids);
  EXPECT_EQ(Join(pieces), std::string("ok") + kReplacement);
  EXPECT_EQ(pieces.back(), kReplacement);
}

TEST(StreamingDetokenizer, ReplacesInvalidByteWithoutWaiting) {
  const Tokenizer* tokenizer = LoadLlama3();
  ASSERT_NE(tokenizer, nullptr);
  // 0xFF never starts a UTF-8 character, so it is replaced as soon as it arrives.
  const std::vector<int32_t> ids = ByteTokens(*tokenizer, "a\xFF" "b");
  ASSERT_EQ(ids.size(), 3u);
  StreamingDetokenizer detokenizer(*tokenizer);
  EXPECT_EQ(detokenizer.Push(ids[0]), "a");
  EXPECT_EQ(detokenizer.Push(ids[1]), kReplacement);
  EXPECT_EQ(detokenizer.Push(ids[2]), "b");
  EXPECT_EQ(detokenizer.Flush(), "");
}

TEST(StreamingDetokenizer, SkipsOrKeepsSpecialTokens) {
  const Tokenizer* tokenizer = LoadLlama3();
  ASSERT_NE(tokenizer, nullptr);
  const std::vector<int32_t> ids = {128000, 9906, 128009};
  EXPECT_EQ(Join(StreamPieces(*tokenizer, ids, /*skip_special=*/true)), "Hello");
  EXPECT_EQ(Join(StreamPieces(*tokenizer, ids, /*skip_special=*/false)),
            "<|begin_of_text|>Hello<|eot_id|>");
}

TEST(StreamingDetokenizer, DropsSentencePieceDummyPrefixOnce) {
  const Tokenizer* tokenizer = LoadStories();
  ASSERT_NE(tokenizer, nullptr);
  const std::vector<int32_t> ids = {1, 403, 407, 261, 378};
  const std::vector<std::string> pieces = StreamPieces(*tokenizer, ids);
  EXPECT_EQ(pieces[1], "Once");
  EXPECT_EQ(pieces[2], " upon");
  EXPECT_EQ(Join(pieces), "Once upon a time");
}

TEST(StreamingDetokenizer, KeepsSpaceOfLeadingBytePiece) {
  const Tokenizer* tokenizer = LoadStories();
  ASSERT_NE(tokenizer, nullptr);
  // <0x20> is a real space, unlike the U+2581 that the dummy prefix adds to "Once".
  const std::vector<int32_t> ids = {*tokenizer->TokenId("<0x20>"), 403};
  EXPECT_EQ(Join(StreamPieces(*tokenizer, ids)), "  Once");
  EXPECT_EQ(Join(StreamPieces(*tokenizer, ids)), tokenizer->Decode(ids));
}

TEST(StreamingDetokenizer, JoinsSentencePieceByteFallback) {
  const Tokenizer* tokenizer = LoadStories();
  ASSERT_NE(tokenizer, nullptr);
  // Neither character is a piece of the 512-piece vocabulary, so both arrive as byte pieces.
  const std::string text = "Hi \xE4\xBD\xA0 \xF0\x9F\x98\x80";
  const std::vector<int32_t> ids = tokenizer->Encode(text, true, false);
  const std::vector<std::string> pieces = StreamPieces(*tokenizer, ids);
  for (const std::string& piece : pieces) EXPECT_TRUE(IsValidUtf8(piece)) << piece;
  EXPECT_EQ(Join(pieces), text);
}

}  // namespace
}  // namespace w8a8
