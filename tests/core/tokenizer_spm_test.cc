// SentencePiece BPE tokenizer on the stories260K vocabulary, from tok512.model and from the
// GGUF file's metadata.
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/sentencepiece_model.pb.h"
#include "core/spm_tokenizer.h"
#include "core/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace w8a8 {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

std::unique_ptr<Tokenizer> LoadModelFile() {
  auto tokenizer = Tokenizer::FromSentencePieceModel(testing::Stories260KDir() / "tok512.model");
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? std::move(*tokenizer) : nullptr;
}

// Strings for round trips and for comparing the two sources of the same vocabulary.
std::vector<std::string> SpmCorpus() {
  std::vector<std::string> corpus = {
      "Once upon a time",
      "Once upon a time, there was a little girl named Lily.",
      "",
      " ",
      "  two leading spaces",
      "trailing spaces   ",
      "Tabs\tand\nnewlines\n\n",
      "Lily's mom said, \"Lily, let's go to the park.\"",
      "Numbers 1234567890 and 3.14159",
      "caf\xC3\xA9 na\xC3\xAFve r\xC3\xA9sum\xC3\xA9",          // Latin-1 letters
      "\xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x8C\xE4\xB8\x96\xE7\x95\x8C",  // CJK
      "\xF0\x9F\x98\x80 \xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9",  // emoji, ZWJ
      "\xD9\x85\xD8\xB1\xD8\xAD\xD8\xA8\xD8\xA7",                       // Arabic
      "<s> and </s> as text",
      "ALL CAPS SHOUTING!!!",
  };
  const std::vector<std::string> words = {"the", "dog", "ran", "happy", "big", "ball", "sun",
                                          "Tom", "Sue", "said", "park", "tree", "\xC3\xBC"};
  // A fixed pseudo-random sequence of sentences, reproducible without a seeded library.
  uint32_t state = 12345;
  for (int i = 0; i < 200; ++i) {
    std::string sentence;
    const int length = 1 + static_cast<int>(state % 12);
    for (int w = 0; w < length; ++w) {
      state = state * 1664525u + 1013904223u;
      if (w > 0) sentence += (state >> 28) == 0 ? "  " : " ";
      sentence += words[(state >> 8) % words.size()];
    }
    sentence += (state >> 20) % 2 == 0 ? "." : "!\n";
    corpus.push_back(sentence);
  }
  return corpus;
}

TEST(SentencePieceTokenizer, EncodesOnceUponATimeWithBos) {
  std::unique_ptr<Tokenizer> tokenizer = LoadModelFile();
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_THAT(tokenizer->Encode("Once upon a time", /*add_bos=*/true, /*parse_special=*/false),
              ElementsAre(1, 403, 407, 261, 378));
}

TEST(SentencePieceTokenizer, EncodesReferencePromptToStoredIds) {
  std::unique_ptr<Tokenizer> tokenizer = LoadModelFile();
  ASSERT_NE(tokenizer, nullptr);
  std::ifstream in(testing::Stories260KDir() / "reference-logits.json");
  ASSERT_TRUE(in) << "missing reference-logits.json in " << testing::Stories260KDir();
  const nlohmann::json reference = nlohmann::json::parse(in);
  const std::vector<int32_t> expected = reference.at("tokens").get<std::vector<int32_t>>();
  EXPECT_THAT(tokenizer->Encode("Once upon a time, there was a little girl named Lily.",
                                /*add_bos=*/true, /*parse_special=*/false),
              ElementsAreArray(expected));
}

TEST(SentencePieceTokenizer, ReportsVocabularyAndSpecialIds) {
  std::unique_ptr<Tokenizer> tokenizer = LoadModelFile();
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(tokenizer->vocab_size(), 512);
  EXPECT_EQ(tokenizer->bos_id(), 1);
  EXPECT_THAT(tokenizer->eos_ids(), ElementsAre(2));
  EXPECT_EQ(tokenizer->type(), "sentencepiece");
  EXPECT_TRUE(tokenizer->adds_bos());
  EXPECT_TRUE(tokenizer->strips_leading_space());
  EXPECT_TRUE(tokenizer->IsSpecial(1));
  EXPECT_TRUE(tokenizer->IsSpecial(0));  // <unk>
  EXPECT_FALSE(tokenizer->IsSpecial(403));
  EXPECT_EQ(tokenizer->TokenString(1), "<s>");
  EXPECT_EQ(tokenizer->TokenId("<0x41>"), 3 + 0x41);
  EXPECT_EQ(tokenizer->TokenBytes(3 + 0x41), "A");
  EXPECT_EQ(tokenizer->TokenId("no such piece"), std::nullopt);
  const std::string once = tokenizer->TokenString(403);
  EXPECT_EQ(once, "\xE2\x96\x81" "Once");
  EXPECT_EQ(tokenizer->TokenBytes(403), " Once");
}

TEST(SentencePieceTokenizer, FallsBackToBytesForUnknownCharacters) {
  std::unique_ptr<Tokenizer> tokenizer = LoadModelFile();
  ASSERT_NE(tokenizer, nullptr);
  // U+4F60 is not a piece of the 512-piece vocabulary, so it becomes its three UTF-8 bytes.
  const std::vector<int32_t> ids = tokenizer->Encode("\xE4\xBD\xA0", false, false);
  ASSERT_GE(ids.size(), 3u);
  const std::vector<int32_t> tail(ids.end() - 3, ids.end());
  EXPECT_EQ(tokenizer->TokenString(tail[0]), "<0xE4>");
  EXPECT_EQ(tokenizer->TokenString(tail[1]), "<0xBD>");
  EXPECT_EQ(tokenizer->TokenString(tail[2]), "<0xA0>");
  EXPECT_EQ(tokenizer->Decode(ids), "\xE4\xBD\xA0");
}

TEST(SentencePieceTokenizer, RoundTripsCorpus) {
  std::unique_ptr<Tokenizer> tokenizer = LoadModelFile();
  ASSERT_NE(tokenizer, nullptr);
  for (const std::string& text : SpmCorpus()) {
    const std::vector<int32_t> ids = tokenizer->Encode(text, true, false);
    EXPECT_EQ(tokenizer->Decode(ids, /*skip_special=*/true), text) << "text: " << text;
  }
}

TEST(SentencePieceTokenizer, EncodesRandomBytesToValidIds) {
  std::unique_ptr<Tokenizer> tokenizer = LoadModelFile();
  ASSERT_NE(tokenizer, nullptr);
  std::mt19937 random(7);
  for (int i = 0; i < 300; ++i) {
    std::string text(random() % 64, '\0');
    for (char& c : text) c = static_cast<char>(random() % 256);
    const std::vector<int32_t> ids = tokenizer->Encode(text, true, true);
    for (int32_t id : ids) {
      EXPECT_GE(id, 0) << "random string " << i;
      EXPECT_LT(id, tokenizer->vocab_size()) << "random string " << i;
    }
    // Byte fallback keeps every byte, so decoding gives the text with ill-formed sequences
    // replaced, unless the text spells U+2581 or a special piece itself.
    if (text.find("\xE2\x96\x81") == std::string::npos && text.find('<') == std::string::npos) {
      EXPECT_EQ(tokenizer->Decode(ids, true), ReplaceInvalidUtf8(text)) << "random string " << i;
    }
  }
}

TEST(SentencePieceTokenizer, ParsesControlPiecesOnlyWhenAsked) {
  std::unique_ptr<Tokenizer> tokenizer = LoadModelFile();
  ASSERT_NE(tokenizer, nullptr);
  const std::vector<int32_t> parsed = tokenizer->Encode("<s>Once</s>", false, true);
  ASSERT_GE(parsed.size(), 3u);
  EXPECT_EQ(parsed.front(), 1);
  EXPECT_EQ(parsed.back(), 2);
  // The text between the pieces gets the dummy prefix, as at the start of a text.
  EXPECT_EQ(parsed[1], 403);

  const std::vector<int32_t> plain = tokenizer->Encode("<s>Once</s>", false, false);
  for (int32_t id : plain) EXPECT_FALSE(tokenizer->IsSpecial(id)) << "id " << id;
  EXPECT_EQ(tokenizer->Decode(plain), "<s>Once</s>");
}

TEST(SentencePieceTokenizer, DecodeKeepsOrSkipsSpecialPieces) {
  std::unique_ptr<Tokenizer> tokenizer = LoadModelFile();
  ASSERT_NE(tokenizer, nullptr);
  const std::vector<int32_t> ids = {1, 403, 407, 261, 378, 2};
  EXPECT_EQ(tokenizer->Decode(ids, /*skip_special=*/true), "Once upon a time");
  EXPECT_EQ(tokenizer->Decode(ids, /*skip_special=*/false), "<s>Once upon a time</s>");
  EXPECT_EQ(tokenizer->Decode({}), "");
  EXPECT_EQ(tokenizer->Decode({-1, 100000}), "");
}

TEST(SentencePieceTokenizer, EncodesEmptyTextAsBosOnly) {
  std::unique_ptr<Tokenizer> tokenizer = LoadModelFile();
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_THAT(tokenizer->Encode("", true, false), ElementsAre(1));
  EXPECT_TRUE(tokenizer->Encode("", false, true).empty());
}

TEST(SentencePieceTokenizer, RejectsMissingFile) {
  testing::TempDir dir;
  auto tokenizer = Tokenizer::FromSentencePieceModel(dir / "absent.model");
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(tokenizer.status().message(), HasSubstr("absent.model"));
}

TEST(SentencePieceTokenizer, RejectsFileThatIsNotAModel) {
  testing::TempDir dir;
  testing::WriteFile(dir / "garbage.model", std::string("\xFF\xFF\xFF\xFF not a protobuf", 20));
  auto tokenizer = Tokenizer::FromSentencePieceModel(dir / "garbage.model");
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tokenizer.status().message(), HasSubstr("garbage.model"));
}

TEST(SentencePieceTokenizer, RejectsUnigramModel) {
  testing::TempDir dir;
  sentencepiece::ModelProto model;
  model.mutable_trainer_spec()->set_model_type(sentencepiece::TrainerSpec::UNIGRAM);
  auto* piece = model.add_pieces();
  piece->set_piece("<unk>");
  piece->set_type(sentencepiece::ModelProto::SentencePiece::UNKNOWN);
  testing::WriteFile(dir / "unigram.model", model.SerializeAsString());
  auto tokenizer = Tokenizer::FromSentencePieceModel(dir / "unigram.model");
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(tokenizer.status().message(), HasSubstr("UNIGRAM"));
}

TEST(SentencePieceTokenizer, RejectsBosOutsideVocabulary) {
  testing::TempDir dir;
  sentencepiece::ModelProto model;
  model.mutable_trainer_spec()->set_model_type(sentencepiece::TrainerSpec::BPE);
  model.mutable_trainer_spec()->set_bos_id(7);
  auto* piece = model.add_pieces();
  piece->set_piece("<unk>");
  piece->set_type(sentencepiece::ModelProto::SentencePiece::UNKNOWN);
  testing::WriteFile(dir / "small.model", model.SerializeAsString());
  auto tokenizer = Tokenizer::FromSentencePieceModel(dir / "small.model");
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_THAT(tokenizer.status().message(), HasSubstr("BOS id 7"));
}

TEST(SentencePieceTokenizer, RejectsMalformedBytePiece) {
  std::vector<SentencePiece> pieces = {{"<unk>", 0, PieceType::kUnknown},
                                       {"<0xZZ>", 0, PieceType::kByte}};
  auto tokenizer = SentencePieceTokenizer::Create(pieces, {});
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_THAT(tokenizer.status().message(), HasSubstr("<0xZZ>"));
}

TEST(SentencePieceTokenizer, MergesHighestScoringPairFirst) {
  // "abc": "ab" scores higher than "bc", so the result is "ab" + "c" and never "a" + "bc".
  std::vector<SentencePiece> pieces = {
      {"<unk>", 0, PieceType::kUnknown}, {"a", -1, PieceType::kNormal},
      {"b", -1, PieceType::kNormal},     {"c", -1, PieceType::kNormal},
      {"ab", -2, PieceType::kNormal},    {"bc", -3, PieceType::kNormal},
  };
  SentencePieceTokenizer::Options options;
  options.add_dummy_prefix = false;
  options.byte_fallback = false;
  options.unknown_id = 0;
  auto tokenizer = SentencePieceTokenizer::Create(pieces, options);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_THAT((*tokenizer)->Encode("abc", false, false), ElementsAre(4, 3));
  // Without byte fallback an unknown character becomes <unk>.
  EXPECT_THAT((*tokenizer)->Encode("abz", false, false), ElementsAre(4, 0));
}

TEST(SentencePieceTokenizer, FromPathAcceptsModelFile) {
  auto tokenizer = Tokenizer::FromPath(testing::Stories260KDir() / "tok512.model");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->type(), "sentencepiece");
}

TEST(SentencePieceTokenizer, FromSourcePrefersModelOverUnsupportedJson) {
  testing::TempDir dir;
  // A SentencePiece-style tokenizer.json, which the byte-level BPE loader rejects.
  testing::WriteFile(dir / "tokenizer.json",
                     R"({"model": {"type": "BPE", "vocab": {}, "merges": []},
                         "normalizer": null, "pre_tokenizer": {"type": "Metaspace"}})");
  std::filesystem::copy_file(testing::Stories260KDir() / "tok512.model", dir / "tokenizer.model");
  TokenizerSource source;
  source.tokenizer_json = dir / "tokenizer.json";
  auto tokenizer = Tokenizer::FromSource(source);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->type(), "sentencepiece");
  EXPECT_THAT((*tokenizer)->Encode("Once upon a time", true, false),
              ElementsAre(1, 403, 407, 261, 378));

  std::filesystem::remove(dir / "tokenizer.model");
  tokenizer = Tokenizer::FromSource(source);
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(tokenizer.status().message(), HasSubstr("tokenizer.model"));
}

TEST(SentencePieceTokenizer, GgufAndModelFileGiveIdenticalIds) {
  std::unique_ptr<Tokenizer> from_model = LoadModelFile();
  ASSERT_NE(from_model, nullptr);
  auto from_gguf = Tokenizer::FromPath(testing::Stories260KGguf());
  ASSERT_TRUE(from_gguf.ok()) << from_gguf.status();
  EXPECT_EQ((*from_gguf)->type(), "sentencepiece");
  EXPECT_EQ((*from_gguf)->vocab_size(), from_model->vocab_size());
  EXPECT_EQ((*from_gguf)->bos_id(), from_model->bos_id());
  EXPECT_EQ((*from_gguf)->eos_ids(), from_model->eos_ids());
  EXPECT_EQ((*from_gguf)->adds_bos(), from_model->adds_bos());
  int compared = 0;
  for (const std::string& text : SpmCorpus()) {
    for (bool parse_special : {false, true}) {
      EXPECT_EQ((*from_gguf)->Encode(text, true, parse_special),
                from_model->Encode(text, true, parse_special))
          << "text: " << text << " parse_special: " << parse_special;
      ++compared;
    }
  }
  EXPECT_GT(compared, 400);
}

}  // namespace
}  // namespace w8a8
