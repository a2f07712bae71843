// Byte-level BPE tokenizer: LLaMA 3's tokenizer.json from the npm reference package, and small
// tokenizer.json files written by the tests for merge formats, added tokens and bad input.
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/bpe_tokenizer.h"
#include "core/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/reference/reference_paths.h"
#include "tests/test_util.h"

namespace w8a8 {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using nlohmann::json;

// Loads LLaMA 3's tokenizer once per process, because parsing its 9 MB tokenizer.json
// dominates the run time of these tests. Returns null after a failed load.
const Tokenizer* LoadLlama3() {
  static const absl::StatusOr<std::unique_ptr<Tokenizer>>* tokenizer =
      new absl::StatusOr<std::unique_ptr<Tokenizer>>(
          Tokenizer::FromTokenizerJson(testing::Llama3TokenizerJson()));
  EXPECT_TRUE(tokenizer->ok()) << tokenizer->status()
                               << " (run `npm ci` in tests/reference if the file is missing)";
  return tokenizer->ok() ? tokenizer->value().get() : nullptr;
}

// A tokenizer.json over the letters a to d, with merges "a b" then "ab c", an added special
// token and an added plain token.
json SmallTokenizerJson() {
  json vocab = json::object();
  int id = 0;
  for (const char* token : {"a", "b", "c", "d", "\xC4\xA0", "ab", "abc", "\xC4\xA0" "a"}) {
    vocab[token] = id++;
  }
  return {
      {"version", "1.0"},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         json::array({{{"type", "Split"},
                       {"pattern", {{"Regex", std::string(kLlama3SplitPattern)}}},
                       {"behavior", "Isolated"},
                       {"invert", false}},
                      {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", json::array({{{"SpecialToken", {{"id", "<bos>"}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})}}},
      {"added_tokens", json::array({{{"id", 8}, {"content", "<bos>"}, {"special", true}},
                                    {{"id", 9}, {"content", "<|eot_id|>"}, {"special", true}},
                                    {{"id", 10}, {"content", "dd"}, {"special", false}}})},
      {"model",
       {{"type", "BPE"},
        {"vocab", vocab},
        {"merges", json::array({"a b", "ab c", "\xC4\xA0 a"})}}},
  };
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadJson(const testing::TempDir& dir,
                                                    const json& tokenizer_json) {
  testing::WriteFile(dir / "tokenizer.json", tokenizer_json.dump());
  return Tokenizer::FromTokenizerJson(dir / "tokenizer.json");
}

TEST(BpeTokenizer, EncodesLlama3KnownIds) {
  const Tokenizer* tokenizer = LoadLlama3();
  ASSERT_NE(tokenizer, nullptr);
  // Ids as the reference implementation of the npm package gives them.
  EXPECT_THAT(tokenizer->Encode("Hello, my dog is cute", false, false),
              ElementsAre(9906, 11, 856, 5679, 374, 19369));
  EXPECT_THAT(tokenizer->Encode("Hello <|eot_id|> x", false, true),
              ElementsAre(9906, 220, 128009, 865));
}

TEST(BpeTokenizer, ReportsLlama3SpecialTokens) {
  const Tokenizer* tokenizer = LoadLlama3();
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(tokenizer->vocab_size(), 128256);
  EXPECT_EQ(tokenizer->type(), "bpe");
  // The package's tokenizer_config.json names <|begin_of_text|> as BOS.
  EXPECT_EQ(tokenizer->bos_id(), 128000);
  EXPECT_TRUE(tokenizer->adds_bos());
  EXPECT_THAT(tokenizer->eos_ids(), ElementsAre(128001, 128009));
  EXPECT_TRUE(tokenizer->IsSpecial(128009));
  EXPECT_FALSE(tokenizer->IsSpecial(9906));
  EXPECT_EQ(tokenizer->TokenId("<|eot_id|>"), 128009);
  EXPECT_EQ(tokenizer->TokenString(220), "\xC4\xA0");  // "Ġ" spells the space byte.
  EXPECT_EQ(tokenizer->TokenBytes(220), " ");
  EXPECT_EQ(tokenizer->TokenBytes(128009), "<|eot_id|>");
  EXPECT_FALSE(tokenizer->strips_leading_space());
}

TEST(BpeTokenizer, TreatsSpecialStringsAsTextUnlessParsing) {
  const Tokenizer* tokenizer = LoadLlama3();
  ASSERT_NE(tokenizer, nullptr);
  const std::vector<int32_t> plain = tokenizer->Encode("<|eot_id|>", false, false);
  EXPECT_GT(plain.size(), 1u);
  for (int32_t id : plain) EXPECT_FALSE(tokenizer->IsSpecial(id)) << "id " << id;
  EXPECT_EQ(tokenizer->Decode(plain), "<|eot_id|>");
  EXPECT_THAT(tokenizer->Encode("<|eot_id|>", false, true), ElementsAre(128009));
}

TEST(BpeTokenizer, AddsBosOnlyWhenAsked) {
  const Tokenizer* tokenizer = LoadLlama3();
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_THAT(tokenizer->Encode("Hello", true, false), ElementsAre(128000, 9906));
  EXPECT_THAT(tokenizer->Encode("Hello", false, false), ElementsAre(9906));
  EXPECT_THAT(tokenizer->Encode("", true, false), ElementsAre(128000));
}

TEST(BpeTokenizer, DecodeSkipsSpecialTokensOnRequest) {
  const Tokenizer* tokenizer = LoadLlama3();
  ASSERT_NE(tokenizer, nullptr);
  const std::vector<int32_t> ids = {128000, 9906, 128009};
  EXPECT_EQ(tokenizer->Decode(ids), "<|begin_of_text|>Hello<|eot_id|>");
  EXPECT_EQ(tokenizer->Decode(ids, /*skip_special=*/true), "Hello");
}

TEST(BpeTokenizer, DecodeReplacesBrokenUtf8) {
  const Tokenizer* tokenizer = LoadLlama3();
  ASSERT_NE(tokenizer, nullptr);
  // Three of the four bytes of U+1F600 are ill-formed text, so each byte gets its own token.
  std::vector<int32_t> ids = tokenizer->Encode("\xF0\x9F\x98", false, false);
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(tokenizer->Decode(ids), "\xEF\xBF\xBD");
  const std::vector<int32_t> last = tokenizer->Encode("\x80", false, false);
  ASSERT_EQ(last.size(), 1u);
  ids.push_back(last[0]);
  EXPECT_EQ(tokenizer->Decode(ids), "\xF0\x9F\x98\x80");
}

TEST(BpeTokenizer, EncodesInvalidUtf8ByteByByte) {
  const Tokenizer* tokenizer = LoadLlama3();
  ASSERT_NE(tokenizer, nullptr);
  const std::string text = "ok\xFF\xFEok";
  const std::vector<int32_t> ids = tokenizer->Encode(text, false, false);
  std::string bytes;
  for (int32_t id : ids) bytes += tokenizer->TokenBytes(id);
  EXPECT_EQ(bytes, text);
}

TEST(BpeTokenizer, EncodesRandomBytesWithoutLoss) {
  const Tokenizer* tokenizer = LoadLlama3();
  ASSERT_NE(tokenizer, nullptr);
  std::mt19937 random(7);
  for (int i = 0; i < 300; ++i) {
    std::string text(random() % 64, '\0');
    for (char& c : text) c = static_cast<char>(random() % 256);
    const std::vector<int32_t> ids = tokenizer->Encode(text, false, true);
    std::string bytes;
    for (int32_t id : ids) bytes += tokenizer->TokenBytes(id);
    EXPECT_EQ(bytes, text) << "random string " << i;
  }
}

TEST(BpeTokenizer, EncodesLongInputs) {
  const Tokenizer* tokenizer = LoadLlama3();
  ASSERT_NE(tokenizer, nullptr);
  std::string text;
  for (int i = 0; i < 2000; ++i) text += "The quick brown fox jumps over the lazy dog. ";
  text += std::string(20000, ' ') + std::string(20000, 'x');
  const std::vector<int32_t> ids = tokenizer->Encode(text, false, false);
  EXPECT_GT(ids.size(), 20000u);
  EXPECT_EQ(tokenizer->Decode(ids), text);
}

TEST(BpeTokenizer, EncodesConcurrentlyLikeSerially) {
  const Tokenizer* tokenizer = LoadLlama3();
  ASSERT_NE(tokenizer, nullptr);
  std::vector<std::string> texts;
  for (int i = 0; i < 200; ++i) {
    texts.push_back("Line " + std::to_string(i) + ": it's   \t\n caf\xC3\xA9 \xE4\xBD\xA0 " +
                    std::string(i % 17, ' ') + "end<|eot_id|>");
  }
  std::vector<std::vector<int32_t>> serial;
  for (const std::string& text : texts) serial.push_back(tokenizer->Encode(text, true, true));

  std::vector<std::vector<std::vector<int32_t>>> results(4);
  std::vector<std::thread> threads;
  for (auto& result : results) {
    threads.emplace_back([&] {
      for (const std::string& text : texts) result.push_back(tokenizer->Encode(text, true, true));
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (const auto& result : results) EXPECT_EQ(result, serial);
}

TEST(BpeTokenizer, AppliesMergesByRank) {
  testing::TempDir dir;
  auto tokenizer = LoadJson(dir, SmallTokenizerJson());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_THAT((*tokenizer)->Encode("abc", false, false), ElementsAre(6));
  EXPECT_THAT((*tokenizer)->Encode("abcd", false, false), ElementsAre(6, 3));
  EXPECT_THAT((*tokenizer)->Encode("cab", false, false), ElementsAre(2, 5));
  EXPECT_THAT((*tokenizer)->Encode("a a", false, false), ElementsAre(0, 7));
}

TEST(BpeTokenizer, AcceptsMergePairArrays) {
  testing::TempDir dir;
  json tokenizer_json = SmallTokenizerJson();
  tokenizer_json["model"]["merges"] =
      json::array({json::array({"a", "b"}), json::array({"ab", "c"})});
  auto tokenizer = LoadJson(dir, tokenizer_json);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_THAT((*tokenizer)->Encode("abc", false, false), ElementsAre(6));
}

TEST(BpeTokenizer, ReadsBosFromTemplateProcessing) {
  testing::TempDir dir;
  auto tokenizer = LoadJson(dir, SmallTokenizerJson());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->bos_id(), 8);
  EXPECT_TRUE((*tokenizer)->adds_bos());
  EXPECT_THAT((*tokenizer)->Encode("ab", true, false), ElementsAre(8, 5));
  EXPECT_THAT((*tokenizer)->eos_ids(), ElementsAre(9));
}

TEST(BpeTokenizer, MatchesPlainAddedTokensAlways) {
  testing::TempDir dir;
  auto tokenizer = LoadJson(dir, SmallTokenizerJson());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  // "dd" is an added token that is not special, so it is matched even without parse_special.
  EXPECT_THAT((*tokenizer)->Encode("addab", false, false), ElementsAre(0, 10, 5));
  EXPECT_THAT((*tokenizer)->Encode("<bos>ab", false, true), ElementsAre(8, 5));
  EXPECT_FALSE((*tokenizer)->IsSpecial(10));
  EXPECT_TRUE((*tokenizer)->IsSpecial(8));
}

TEST(BpeTokenizer, AddedTokenStripsSurroundingWhitespace) {
  testing::TempDir dir;
  json tokenizer_json = SmallTokenizerJson();
  tokenizer_json["added_tokens"][1]["lstrip"] = true;
  tokenizer_json["added_tokens"][1]["rstrip"] = true;
  auto tokenizer = LoadJson(dir, tokenizer_json);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_THAT((*tokenizer)->Encode("ab  <|eot_id|>  ab", false, true), ElementsAre(5, 9, 5));
}

TEST(BpeTokenizer, RejectsMergeOfUnknownToken) {
  testing::TempDir dir;
  json tokenizer_json = SmallTokenizerJson();
  tokenizer_json["model"]["merges"].push_back("c d");  // "cd" is not in the vocabulary.
  auto tokenizer = LoadJson(dir, tokenizer_json);
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tokenizer.status().message(), HasSubstr("merge 3"));
  EXPECT_THAT(tokenizer.status().message(), HasSubstr("tokenizer.json"));
}

TEST(BpeTokenizer, RejectsIdFarBeyondVocabulary) {
  testing::TempDir dir;
  json tokenizer_json = SmallTokenizerJson();
  tokenizer_json["model"]["vocab"]["d"] = 1000000;
  auto tokenizer = LoadJson(dir, tokenizer_json);
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_THAT(tokenizer.status().message(), HasSubstr("1000000"));
}

TEST(BpeTokenizer, RejectsMalformedMerge) {
  testing::TempDir dir;
  json tokenizer_json = SmallTokenizerJson();
  tokenizer_json["model"]["merges"].push_back("abc");
  auto tokenizer = LoadJson(dir, tokenizer_json);
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_THAT(tokenizer.status().message(), HasSubstr("\"abc\""));
}

TEST(BpeTokenizer, RejectsInvalidJson) {
  testing::TempDir dir;
  testing::WriteFile(dir / "tokenizer.json", "{\"model\": ");
  auto tokenizer = Tokenizer::FromTokenizerJson(dir / "tokenizer.json");
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tokenizer.status().message(), HasSubstr("tokenizer.json"));
}

TEST(BpeTokenizer, RejectsMissingFile) {
  testing::TempDir dir;
  auto tokenizer = Tokenizer::FromPath(dir / "absent.json");
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kNotFound);
}

TEST(BpeTokenizer, RejectsNonByteLevelPreTokenizer) {
  testing::TempDir dir;
  json tokenizer_json = SmallTokenizerJson();
  tokenizer_json["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}};
  auto tokenizer = LoadJson(dir, tokenizer_json);
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(tokenizer.status().message(), HasSubstr("Metaspace"));
}

TEST(BpeTokenizer, RejectsInvalidSplitPattern) {
  testing::TempDir dir;
  json tokenizer_json = SmallTokenizerJson();
  tokenizer_json["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  auto tokenizer = LoadJson(dir, tokenizer_json);
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_THAT(tokenizer.status().message(), HasSubstr("(unclosed"));
}

// Writes a one-layer LLaMA checkpoint with zero weights beside `tokenizer_json`, so that
// Tokenizer::FromPath goes through Checkpoint::Open.
void WriteTinyCheckpoint(const testing::TempDir& dir, const json& tokenizer_json) {
  constexpr int64_t kVocab = 11;
  constexpr int64_t kHidden = 8;
  constexpr int64_t kIntermediate = 16;
  constexpr int64_t kHeadDim = 4;
  const json config = {{"architectures", json::array({"LlamaForCausalLM"})},
                       {"hidden_size", kHidden},
                       {"intermediate_size", kIntermediate},
                       {"num_hidden_layers", 1},
                       {"num_attention_heads", 2},
                       {"num_key_value_heads", 1},
                       {"vocab_size", kVocab},
                       {"tie_word_embeddings", true},
                       {"bos_token_id", 8},
                       {"eos_token_id", 9}};
  testing::WriteFile(dir / "config.json", config.dump());
  testing::WriteFile(dir / "tokenizer.json", tokenizer_json.dump());

  const std::vector<std::pair<std::string, std::vector<int64_t>>> shapes = {
      {"model.embed_tokens.weight", {kVocab, kHidden}},
      {"model.layers.0.input_layernorm.weight", {kHidden}},
      {"model.layers.0.post_attention_layernorm.weight", {kHidden}},
      {"model.layers.0.self_attn.q_proj.weight", {2 * kHeadDim, kHidden}},
      {"model.layers.0.self_attn.k_proj.weight", {kHeadDim, kHidden}},
      {"model.layers.0.self_attn.v_proj.weight", {kHeadDim, kHidden}},
      {"model.layers.0.self_attn.o_proj.weight", {kHidden, 2 * kHeadDim}},
      {"model.layers.0.mlp.gate_proj.weight", {kIntermediate, kHidden}},
      {"model.layers.0.mlp.up_proj.weight", {kIntermediate, kHidden}},
      {"model.layers.0.mlp.down_proj.weight", {kHidden, kIntermediate}},
      {"model.norm.weight", {kHidden}},
  };
  const std::vector<float> zeros(kVocab * kIntermediate * kHidden, 0.0f);
  std::vector<TensorToWrite> tensors;
  for (const auto& [name, shape] : shapes) {
    int64_t count = 1;
    for (int64_t dim : shape) count *= dim;
    tensors.push_back({name, DType::kF32, shape,
                       std::as_bytes(std::span<const float>(zeros.data(), count))});
  }
  const absl::Status written = WriteSafetensors(dir / "model.safetensors", tensors);
  ASSERT_TRUE(written.ok()) << written;
}

TEST(BpeTokenizer, FromPathOpensCheckpointDirectory) {
  testing::TempDir dir;
  WriteTinyCheckpoint(dir, SmallTokenizerJson());
  auto tokenizer = Tokenizer::FromPath(dir.path());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->type(), "bpe");
  EXPECT_THAT((*tokenizer)->Encode("abc", true, false), ElementsAre(8, 6));
}

TEST(BpeTokenizer, FromPathReportsDirectoryWithoutConfig) {
  testing::TempDir dir;
  testing::WriteFile(dir / "tokenizer.json", SmallTokenizerJson().dump());
  auto tokenizer = Tokenizer::FromPath(dir.path());
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_THAT(tokenizer.status().message(), HasSubstr("config.json"));
}

TEST(BpeTokenizer, BuildsFromGgufMetadata) {
  const Tokenizer* reference = LoadLlama3();
  ASSERT_NE(reference, nullptr);
  // GGUF metadata of a "gpt2" tokenizer: tokens in the byte alphabet, control tokens of type 3
  // and merges as "a b" strings.
  json root = json::parse(testing::ReadFile(testing::Llama3TokenizerJson()));
  GgufTokenizerData data;
  data.model = "gpt2";
  data.pre = "llama-bpe";
  data.tokens.resize(reference->vocab_size());
  data.token_types.assign(reference->vocab_size(), 1);
  for (const auto& [text, id] : root["model"]["vocab"].items()) data.tokens[id.get<int>()] = text;
  for (const json& added : root["added_tokens"]) {
    data.tokens[added["id"].get<int>()] = added["content"].get<std::string>();
    data.token_types[added["id"].get<int>()] = 3;
  }
  for (const json& merge : root["model"]["merges"]) data.merges.push_back(merge.get<std::string>());
  data.bos_token_id = 128000;
  data.eos_token_id = 128001;

  auto tokenizer = Tokenizer::FromGguf(data);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->type(), "bpe");
  EXPECT_TRUE((*tokenizer)->adds_bos());
  EXPECT_THAT((*tokenizer)->eos_ids(), ElementsAre(128001, 128009));
  for (const char* text : {"Hello, my dog is cute", "  indented\n\tcode();", "It's 12345 o'clock",
                           "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"}) {
    for (bool parse_special : {false, true}) {
      EXPECT_EQ((*tokenizer)->Encode(text, true, parse_special),
                reference->Encode(text, true, parse_special))
          << "text: " << text << " parse_special: " << parse_special;
    }
  }
}

TEST(BpeTokenizer, RejectsUnknownGgufPreTokenizer) {
  GgufTokenizerData data;
  data.model = "gpt2";
  data.pre = "qwen2";
  data.tokens = {"a"};
  auto tokenizer = Tokenizer::FromGguf(data);
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_THAT(tokenizer.status().message(), HasSubstr("qwen2"));
}

TEST(BpeTokenizer, RejectsUnknownGgufModel) {
  GgufTokenizerData data;
  data.model = "bert";
  auto tokenizer = Tokenizer::FromGguf(data);
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_THAT(tokenizer.status().message(), HasSubstr("bert"));
}

}  // namespace
}  // namespace w8a8
