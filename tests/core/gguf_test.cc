#include "core/gguf.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "core/checkpoint_formats.h"
#include "tests/core/checkpoint_test_util.h"
#include "tests/test_util.h"

namespace w8a8 {
namespace {

using ::testing::HasSubstr;

std::span<const std::byte> AsBytes(const std::string& text) {
  return {reinterpret_cast<const std::byte*>(text.data()), text.size()};
}

std::vector<std::byte> FloatBytes(const std::vector<float>& values) {
  std::vector<std::byte> bytes(values.size() * sizeof(float));
  std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

TEST(GgufFile, Stories260KHeaderParses) {
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(testing::Stories260KGguf());
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->version(), 3u);
  EXPECT_EQ((*file)->alignment(), 32u);
  EXPECT_EQ((*file)->metadata().size(), 19u);
  ASSERT_EQ((*file)->tensors().size(), 48u);

  const GgufValue* architecture = (*file)->FindMetadata("general.architecture");
  ASSERT_NE(architecture, nullptr);
  ASSERT_NE(architecture->AsString(), nullptr);
  EXPECT_EQ(*architecture->AsString(), "llama");
  const GgufValue* layers = (*file)->FindMetadata("llama.block_count");
  ASSERT_NE(layers, nullptr);
  EXPECT_EQ(layers->type, GgufType::kUint32);
  EXPECT_EQ(layers->AsInt(), 5);
  const GgufValue* tokens = (*file)->FindMetadata("tokenizer.ggml.tokens");
  ASSERT_NE(tokens, nullptr);
  ASSERT_NE(tokens->AsStringArray(), nullptr);
  EXPECT_EQ(tokens->AsStringArray()->size(), 512u);

  // GGUF stores token_embd as ne = [64, 512]; the row-major shape is [512, 64].
  const TensorView* embedding = (*file)->FindTensor("token_embd.weight");
  ASSERT_NE(embedding, nullptr);
  EXPECT_EQ(embedding->shape, (std::vector<int64_t>{512, 64}));
  EXPECT_EQ(embedding->size_bytes, 512u * 64u * 4u);
  const TensorView* down = (*file)->FindTensor("blk.0.ffn_down.weight");
  ASSERT_NE(down, nullptr);
  EXPECT_EQ(down->shape, (std::vector<int64_t>{64, 172}));
}

TEST(GgufWriter, MetadataOfEveryTypeRoundTrips) {
  GgufWriter writer(/*alignment=*/64);
  writer.SetMetadata("u8", GgufValue{GgufType::kUint8, GgufType::kUint8, int64_t{200}});
  writer.SetMetadata("i8", GgufValue{GgufType::kInt8, GgufType::kUint8, int64_t{-100}});
  writer.SetMetadata("u16", GgufValue{GgufType::kUint16, GgufType::kUint8, int64_t{60000}});
  writer.SetMetadata("i16", GgufValue{GgufType::kInt16, GgufType::kUint8, int64_t{-30000}});
  writer.SetMetadata("u32", GgufValue::Uint32(4000000000u));
  writer.SetMetadata("i32", GgufValue::Int32(-2000000000));
  writer.SetMetadata("f32", GgufValue::Float32(1.5f));
  writer.SetMetadata("bool", GgufValue::Bool(true));
  writer.SetMetadata("string", GgufValue::String("héllo"));
  writer.SetMetadata("u64", GgufValue::Uint64(UINT64_MAX));
  writer.SetMetadata("i64", GgufValue{GgufType::kInt64, GgufType::kUint8, int64_t{INT64_MIN}});
  writer.SetMetadata("f64", GgufValue{GgufType::kFloat64, GgufType::kUint8, 0.1});
  writer.SetMetadata("strings", GgufValue::StringArray({"a", "", "b c"}));
  writer.SetMetadata("floats", GgufValue::Float32Array({0.25f, -2.0f}));
  writer.SetMetadata("ints", GgufValue::Int32Array({1, -2, 3}));
  writer.SetMetadata("bools", GgufValue{GgufType::kArray, GgufType::kBool,
                                        std::vector<int64_t>{1, 0, 1}});
  writer.SetMetadata("nested",
                     GgufValue{GgufType::kArray, GgufType::kArray,
                               std::vector<GgufValue>{GgufValue::Int32Array({1, 2}),
                                                      GgufValue::Int32Array({})}});
  const std::vector<float> values = {1, 2, 3, 4, 5, 6};
  const std::vector<std::byte> bytes = FloatBytes(values);
  ASSERT_TRUE(writer.AddTensor("t", DType::kF32, {2, 3}, bytes).ok());

  absl::StatusOr<std::string> serialized = writer.Serialize();
  ASSERT_TRUE(serialized.ok()) << serialized.status();
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Parse(AsBytes(*serialized), "mem");
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufFile& gguf = **file;
  EXPECT_EQ(gguf.alignment(), 64u);
  EXPECT_EQ(gguf.FindMetadata("u8")->AsInt(), 200);
  EXPECT_EQ(gguf.FindMetadata("i8")->AsInt(), -100);
  EXPECT_EQ(gguf.FindMetadata("u16")->AsInt(), 60000);
  EXPECT_EQ(gguf.FindMetadata("i16")->AsInt(), -30000);
  EXPECT_EQ(gguf.FindMetadata("u32")->AsInt(), 4000000000);
  EXPECT_EQ(gguf.FindMetadata("i32")->AsInt(), -2000000000);
  EXPECT_EQ(gguf.FindMetadata("f32")->AsDouble(), 1.5);
  EXPECT_EQ(gguf.FindMetadata("bool")->AsBool(), true);
  EXPECT_EQ(*gguf.FindMetadata("string")->AsString(), "héllo");
  EXPECT_EQ(std::get<uint64_t>(gguf.FindMetadata("u64")->value), UINT64_MAX);
  EXPECT_FALSE(gguf.FindMetadata("u64")->AsInt().has_value());
  EXPECT_EQ(gguf.FindMetadata("i64")->AsInt(), INT64_MIN);
  EXPECT_EQ(gguf.FindMetadata("f64")->AsDouble(), 0.1);
  EXPECT_EQ(*gguf.FindMetadata("strings")->AsStringArray(),
            (std::vector<std::string>{"a", "", "b c"}));
  EXPECT_EQ(gguf.FindMetadata("floats")->AsDoubleArray(), (std::vector<double>{0.25, -2.0}));
  EXPECT_EQ(gguf.FindMetadata("ints")->AsIntArray(), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(gguf.FindMetadata("bools")->AsIntArray(), (std::vector<int64_t>{1, 0, 1}));
  const auto& nested = std::get<std::vector<GgufValue>>(gguf.FindMetadata("nested")->value);
  ASSERT_EQ(nested.size(), 2u);
  EXPECT_EQ(nested[0].AsIntArray(), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(nested[1].AsIntArray(), (std::vector<int64_t>{}));

  const TensorView* tensor = gguf.FindTensor("t");
  ASSERT_NE(tensor, nullptr);
  EXPECT_EQ(tensor->shape, (std::vector<int64_t>{2, 3}));
  const auto* file_start = reinterpret_cast<const std::byte*>(serialized->data());
  EXPECT_EQ((tensor->data - file_start) % 64, 0);
  absl::StatusOr<std::vector<float>> loaded = ToFloat32(*tensor);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(*loaded, values);
}

TEST(GgufWriter, TensorOfWrongSizeIsRejected) {
  GgufWriter writer;
  const std::vector<std::byte> bytes(20);
  absl::Status status = writer.AddTensor("t", DType::kF32, {2, 3}, bytes);
  EXPECT_THAT(status.message(), HasSubstr("needs 24 bytes"));
}

TEST(GgufFile, Q8_0TensorDequantizes) {
  // One block: scale 0.5, values -64..63 step 4.
  std::vector<std::byte> block(34);
  const uint16_t scale = FloatToHalf(0.5f);
  std::memcpy(block.data(), &scale, 2);
  for (int i = 0; i < 32; ++i) block[2 + i] = static_cast<std::byte>(static_cast<int8_t>(-64 + 4 * i));
  GgufWriter writer;
  ASSERT_TRUE(writer.AddTensor("q", DType::kQ8_0, {1, 32}, block).ok());
  absl::StatusOr<std::string> serialized = writer.Serialize();
  ASSERT_TRUE(serialized.ok());
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Parse(AsBytes(*serialized), "mem");
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorView* tensor = (*file)->FindTensor("q");
  ASSERT_NE(tensor, nullptr);
  EXPECT_EQ(tensor->dtype, DType::kQ8_0);
  absl::StatusOr<std::vector<float>> values = ToFloat32(*tensor);
  ASSERT_TRUE(values.ok()) << values.status();
  for (int i = 0; i < 32; ++i) EXPECT_EQ((*values)[i], 0.5f * (-64 + 4 * i)) << i;
}

// Patches the ggml type of the only tensor of a one-tensor file.
TEST(GgufFile, UnsupportedTensorTypeIsRejectedByName) {
  GgufWriter writer;
  const std::vector<std::byte> bytes(4 * 32);
  ASSERT_TRUE(writer.AddTensor("blk.0.attn_q.weight", DType::kF32, {1, 32}, bytes).ok());
  absl::StatusOr<std::string> serialized = writer.Serialize();
  ASSERT_TRUE(serialized.ok());
  // Header: magic 4, version 4, counts 16; then the tensor info: name length 8, name,
  // n_dims 4, two dims 16, type 4.
  const size_t type_offset = 24 + 8 + std::strlen("blk.0.attn_q.weight") + 4 + 16;
  const uint32_t q4_k = 12;
  std::memcpy(serialized->data() + type_offset, &q4_k, 4);
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Parse(AsBytes(*serialized), "x.gguf");
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(file.status().message(), HasSubstr("blk.0.attn_q.weight"));
  EXPECT_THAT(file.status().message(), HasSubstr("Q4_K"));
}

TEST(GgufFile, HugeLengthsAreRejectedBeforeAllocation) {
  GgufWriter writer;
  writer.SetMetadata("general.architecture", GgufValue::String("llama"));
  writer.SetMetadata("list", GgufValue::StringArray({"a", "b"}));
  absl::StatusOr<std::string> serialized = writer.Serialize();
  ASSERT_TRUE(serialized.ok());
  const uint64_t huge = uint64_t{1} << 60;

  // The tensor count, the metadata count, the key length, the string value length and the
  // array length, each set to 2^60 in turn.
  const size_t key_length = 24;
  const size_t value_length = key_length + 8 + std::strlen("general.architecture") + 4;
  const size_t array_length =
      value_length + 8 + std::strlen("llama") + 8 + std::strlen("list") + 4 + 4;
  for (size_t offset : {size_t{8}, size_t{16}, key_length, value_length, array_length}) {
    std::string corrupt = *serialized;
    std::memcpy(corrupt.data() + offset, &huge, 8);
    absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Parse(AsBytes(corrupt), "x.gguf");
    ASSERT_FALSE(file.ok()) << "offset " << offset;
    EXPECT_THAT(file.status().message(), HasSubstr("x.gguf")) << offset;
  }
}

TEST(GgufFile, BadMagicAndVersionAreRejected) {
  GgufWriter writer;
  absl::StatusOr<std::string> serialized = writer.Serialize();
  ASSERT_TRUE(serialized.ok());
  std::string bad_magic = *serialized;
  bad_magic[0] = 'X';
  EXPECT_THAT(GgufFile::Parse(AsBytes(bad_magic), "a").status().message(), HasSubstr("magic"));
  std::string version_1 = *serialized;
  version_1[4] = 1;
  EXPECT_THAT(GgufFile::Parse(AsBytes(version_1), "a").status().message(),
              HasSubstr("version 1"));
  std::string big_endian = *serialized;
  big_endian[4] = 0;
  big_endian[7] = 3;
  EXPECT_THAT(GgufFile::Parse(AsBytes(big_endian), "a").status().message(),
              HasSubstr("big-endian"));
  std::string version_2 = *serialized;
  version_2[4] = 2;
  EXPECT_TRUE(GgufFile::Parse(AsBytes(version_2), "a").ok());
}

TEST(GgufFile, BadAlignmentIsRejected) {
  GgufWriter writer;
  writer.SetMetadata("general.alignment", GgufValue::Uint32(24));
  absl::StatusOr<std::string> serialized = writer.Serialize();
  ASSERT_TRUE(serialized.ok());
  EXPECT_THAT(GgufFile::Parse(AsBytes(*serialized), "a").status().message(),
              HasSubstr("general.alignment"));
}

TEST(GgufFile, Stories260KTruncationsFailCleanly) {
  const std::string bytes = testing::ReadFile(testing::Stories260KGguf());
  ASSERT_GT(bytes.size(), 20000u);
  constexpr size_t kHeaderRegion = 14200;  // The tensor infos end at byte 14152.
  std::vector<size_t> lengths;
  for (size_t length = 0; length < kHeaderRegion; ++length) lengths.push_back(length);
  for (size_t length = kHeaderRegion; length < bytes.size(); length += 9973) {
    lengths.push_back(length);
  }
  lengths.push_back(bytes.size() - 1);
  for (size_t length : lengths) {
    // An exact-size copy, so a read past the end is caught by AddressSanitizer.
    const std::vector<std::byte> prefix(reinterpret_cast<const std::byte*>(bytes.data()),
                                        reinterpret_cast<const std::byte*>(bytes.data()) + length);
    absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Parse(prefix, "cut.gguf");
    ASSERT_FALSE(file.ok()) << "length " << length;
    ASSERT_THAT(file.status().message(), HasSubstr("cut.gguf")) << length;
  }
}

TEST(GgufFile, Stories260KHeaderByteFlipsNeverCrash) {
  const std::string original = testing::ReadFile(testing::Stories260KGguf());
  std::vector<std::byte> bytes(reinterpret_cast<const std::byte*>(original.data()),
                               reinterpret_cast<const std::byte*>(original.data()) +
                                   original.size());
  constexpr size_t kHeaderRegion = 14200;
  // Flips inside the token, score and token-type arrays, which start after the first key and
  // end at the key "tokenizer.ggml.model", only change values, so the checkpoint layer runs on
  // every 16th of them and on every other flip.
  const size_t arrays_begin = original.find("tokenizer.ggml.tokens") + 32;
  const size_t arrays_end = original.find("tokenizer.ggml.model");
  ASSERT_LT(arrays_begin, arrays_end);
  ASSERT_NE(arrays_end, std::string::npos);

  int opened = 0;
  for (size_t i = 0; i < kHeaderRegion; ++i) {
    bytes[i] ^= std::byte{0xA5};
    absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Parse(bytes, "flip.gguf");
    const bool inside_arrays = i >= arrays_begin && i < arrays_end;
    if (!file.ok()) {
      ASSERT_THAT(file.status().message(), HasSubstr("flip.gguf")) << i;
    } else if (!inside_arrays || i % 16 == 0) {
      // The checkpoint layer checks the llama metadata and tensor set on top.
      absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
          checkpoint_internal::OpenGgufCheckpoint(*std::move(file));
      if (checkpoint.ok()) {
        ++opened;
        for (const std::string& name : (*checkpoint)->TensorNames()) {
          ASSERT_TRUE((*checkpoint)->Tensor(name).ok()) << name;
        }
      } else {
        ASSERT_THAT(checkpoint.status().message(), HasSubstr("flip.gguf")) << i;
      }
    }
    bytes[i] ^= std::byte{0xA5};
  }

  // Flips inside token strings and scores keep the file valid.
  EXPECT_GT(opened, 0);
}

TEST(GgufNames, LlamaNamesMapBothWays) {
  const std::pair<std::string, std::string> pairs[] = {
      {"token_embd.weight", "model.embed_tokens.weight"},
      {"output_norm.weight", "model.norm.weight"},
      {"output.weight", "lm_head.weight"},
      {"blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight"},
      {"blk.11.attn_q.weight", "model.layers.11.self_attn.q_proj.weight"},
      {"blk.2.attn_k.weight", "model.layers.2.self_attn.k_proj.weight"},
      {"blk.2.attn_v.weight", "model.layers.2.self_attn.v_proj.weight"},
      {"blk.2.attn_output.weight", "model.layers.2.self_attn.o_proj.weight"},
      {"blk.3.ffn_norm.weight", "model.layers.3.post_attention_layernorm.weight"},
      {"blk.3.ffn_gate.weight", "model.layers.3.mlp.gate_proj.weight"},
      {"blk.3.ffn_up.weight", "model.layers.3.mlp.up_proj.weight"},
      {"blk.3.ffn_down.weight", "model.layers.3.mlp.down_proj.weight"},
  };
  for (const auto& [gguf, hf] : pairs) {
    EXPECT_EQ(GgufToHfTensorName(gguf), hf);
    EXPECT_EQ(HfToGgufTensorName(hf), gguf);
  }
  EXPECT_FALSE(GgufToHfTensorName("rope_freqs.weight").has_value());
  EXPECT_FALSE(GgufToHfTensorName("blk.x.attn_q.weight").has_value());
  EXPECT_FALSE(GgufToHfTensorName("blk.01.attn_q.weight").has_value());
  EXPECT_FALSE(GgufToHfTensorName("blk.0.attn_q.bias").has_value());
}

TEST(GgufRotaryRows, PermutationMatchesTheDocumentedRows) {
  // 2 heads of dimension 4, one column: value = GGUF row index.
  const std::vector<float> gguf_rows = {0, 1, 2, 3, 4, 5, 6, 7};
  absl::StatusOr<std::vector<float>> hf = GgufRotaryRowsToHf(gguf_rows, 2, 4);
  ASSERT_TRUE(hf.ok()) << hf.status();
  // HF row h*4 + i = GGUF row h*4 + 2i; HF row h*4 + 2 + i = GGUF row h*4 + 2i + 1.
  EXPECT_EQ(*hf, (std::vector<float>{0, 2, 1, 3, 4, 6, 5, 7}));
  absl::StatusOr<std::vector<float>> back = HfRotaryRowsToGguf(*hf, 2, 4);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, gguf_rows);
}

TEST(GgufRotaryRows, RoundTripRestoresRandomWeights) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> uniform(-1, 1);
  std::vector<float> weight(8 * 16 * 5);  // 8 heads of 16, 5 columns.
  for (float& v : weight) v = uniform(rng);
  absl::StatusOr<std::vector<float>> gguf = HfRotaryRowsToGguf(weight, 8, 16);
  ASSERT_TRUE(gguf.ok());
  EXPECT_NE(*gguf, weight);
  absl::StatusOr<std::vector<float>> hf = GgufRotaryRowsToHf(*gguf, 8, 16);
  ASSERT_TRUE(hf.ok());
  EXPECT_EQ(*hf, weight);
  EXPECT_FALSE(GgufRotaryRowsToHf(weight, 8, 15).ok());
  EXPECT_FALSE(GgufRotaryRowsToHf(std::vector<float>(7), 1, 4).ok());
}

// Rotates one head vector in place at position `pos`. Half-split (Hugging Face) pairs i with
// i + d/2; interleaved (GGUF, Meta's original code) pairs 2i with 2i + 1. Both use the
// frequency theta^(-2i/d) for pair i.
void Rotate(std::vector<double>& x, int pos, bool interleaved) {
  const size_t d = x.size();
  for (size_t i = 0; i < d / 2; ++i) {
    const double angle = pos * std::pow(10000.0, -2.0 * i / d);
    const size_t a = interleaved ? 2 * i : i;
    const size_t b = interleaved ? 2 * i + 1 : i + d / 2;
    const double xa = x[a];
    const double xb = x[b];
    x[a] = xa * std::cos(angle) - xb * std::sin(angle);
    x[b] = xa * std::sin(angle) + xb * std::cos(angle);
  }
}

// Projects `input` through rows [head*d, head*d + d) of `weight` (row-major, `columns` wide).
std::vector<double> ProjectHead(const std::vector<float>& weight, const std::vector<float>& input,
                                int head, int d, int columns) {
  std::vector<double> out(d);
  for (int r = 0; r < d; ++r) {
    for (int c = 0; c < columns; ++c) {
      out[r] += static_cast<double>(weight[(head * d + r) * columns + c]) * input[c];
    }
  }
  return out;
}

TEST(GgufRotaryRows, AttentionScoresMatchAcrossRotaryLayouts) {
  constexpr int kHeads = 3;
  constexpr int kHeadDim = 8;
  constexpr int kColumns = 6;
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> uniform(-1, 1);
  std::vector<float> wq(kHeads * kHeadDim * kColumns);
  std::vector<float> wk(kHeads * kHeadDim * kColumns);
  std::vector<float> x1(kColumns);
  std::vector<float> x2(kColumns);
  for (auto* v : {&wq, &wk, &x1, &x2}) {
    for (float& f : *v) f = uniform(rng);
  }
  absl::StatusOr<std::vector<float>> wq_gguf = HfRotaryRowsToGguf(wq, kHeads, kHeadDim);
  absl::StatusOr<std::vector<float>> wk_gguf = HfRotaryRowsToGguf(wk, kHeads, kHeadDim);
  ASSERT_TRUE(wq_gguf.ok()) << wq_gguf.status();
  ASSERT_TRUE(wk_gguf.ok()) << wk_gguf.status();

  for (int head = 0; head < kHeads; ++head) {
    for (const auto& [pos_q, pos_k] : {std::pair{5, 2}, std::pair{17, 0}, std::pair{3, 3}}) {
      std::vector<double> q_hf = ProjectHead(wq, x1, head, kHeadDim, kColumns);
      std::vector<double> k_hf = ProjectHead(wk, x2, head, kHeadDim, kColumns);
      std::vector<double> q_gguf = ProjectHead(*wq_gguf, x1, head, kHeadDim, kColumns);
      std::vector<double> k_gguf = ProjectHead(*wk_gguf, x2, head, kHeadDim, kColumns);
      Rotate(q_hf, pos_q, /*interleaved=*/false);
      Rotate(k_hf, pos_k, /*interleaved=*/false);
      Rotate(q_gguf, pos_q, /*interleaved=*/true);
      Rotate(k_gguf, pos_k, /*interleaved=*/true);
      double score_hf = 0;
      double score_gguf = 0;
      double score_mixed = 0;  // HF weights with the interleaved rotation: a wrong pairing.
      std::vector<double> q_wrong = ProjectHead(wq, x1, head, kHeadDim, kColumns);
      std::vector<double> k_wrong = ProjectHead(wk, x2, head, kHeadDim, kColumns);
      Rotate(q_wrong, pos_q, /*interleaved=*/true);
      Rotate(k_wrong, pos_k, /*interleaved=*/true);
      for (int i = 0; i < kHeadDim; ++i) {
        score_hf += q_hf[i] * k_hf[i];
        score_gguf += q_gguf[i] * k_gguf[i];
        score_mixed += q_wrong[i] * k_wrong[i];
      }
      EXPECT_NEAR(score_hf, score_gguf, 1e-9) << "head " << head << " pos " << pos_q;
      if (pos_q != pos_k) {
        EXPECT_GT(std::abs(score_hf - score_mixed), 1e-6) << "head " << head;
      }
    }
  }
}

}  // namespace
}  // namespace w8a8
