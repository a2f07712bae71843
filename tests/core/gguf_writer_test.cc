// GGUF export of a llama3-tiny checkpoint made by make-model (real Llama 3 tokenizer) and of
// stories260K, each reloaded with our own GGUF reader. Also Q8_0 encoding and the errors of
// the `w8a8 export-gguf` command.
#include "core/gguf_writer.h"

#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>

#include "core/checkpoint.h"
#include "core/generator.h"
#include "core/gguf.h"
#include "core/linear.h"
#include "core/make_model.h"
#include "core/model.h"
#include "core/tokenizer.h"
#include "core/tokenizer_files.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu_features.h"
#include "nlohmann/json.hpp"
#include "tests/reference/reference_paths.h"
#include "tests/test_util.h"

namespace w8a8 {
namespace {

using ::testing::HasSubstr;

// Llama 3 ids of "<|begin_of_text|>The quick brown fox jumps over".
const std::vector<int32_t> kLlama3Prompt = {128000, 791, 4062, 14198, 39935, 35308, 927};

const std::vector<std::string> kTexts = {
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "naïve café, 日本語 and emoji 🙂",
    "  leading spaces\n\nand 12345 digits",
    "<|begin_of_text|>special<|eot_id|>",
};

// The llama3-tiny model, made once per process because loading the 9 MB tokenizer.json
// dominates the cost.
class TinyLlama3 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    MakeModelOptions options;
    options.config = *PresetConfig("llama3-tiny");
    options.seed = 7;
    options.tokenizer_json = testing::Llama3TokenizerJson();
    const absl::Status made = MakeModel(options, source_dir());
    ASSERT_TRUE(made.ok()) << made;
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }

  static std::filesystem::path source_dir() { return dir_->path() / "hf"; }

  // Exports the tiny model once per output type and returns the path.
  static std::filesystem::path Exported(GgufOutType type) {
    const std::filesystem::path path =
        dir_->path() / ("tiny-" + std::string(GgufOutTypeName(type)) + ".gguf");
    if (!std::filesystem::exists(path)) {
      absl::StatusOr<std::unique_ptr<Checkpoint>> source = Checkpoint::Open(source_dir());
      EXPECT_TRUE(source.ok()) << source.status();
      GgufExportOptions options;
      options.out_type = type;
      const absl::StatusOr<GgufExportSummary> summary = ExportGguf(**source, path, options);
      EXPECT_TRUE(summary.ok()) << summary.status();
    }
    return path;
  }

  static std::vector<float> Logits(const std::filesystem::path& path) {
    absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(path);
    EXPECT_TRUE(checkpoint.ok()) << checkpoint.status();
    if (!checkpoint.ok()) return {};
    absl::StatusOr<std::unique_ptr<Model>> model = Model::Create(**checkpoint, Fp32LinearFactory());
    EXPECT_TRUE(model.ok()) << model.status();
    if (!model.ok()) return {};
    absl::StatusOr<std::vector<float>> logits = PromptLogits(**model, kLlama3Prompt);
    EXPECT_TRUE(logits.ok()) << logits.status();
    return logits.ok() ? *logits : std::vector<float>{};
  }

  static testing::TempDir* dir_;
};

testing::TempDir* TinyLlama3::dir_ = nullptr;

double MaxAbsDifference(const std::vector<float>& a, const std::vector<float>& b) {
  double max = 0.0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    max = std::max(max, std::fabs(static_cast<double>(a[i]) - b[i]));
  }
  return max;
}

double MaxAbs(const std::vector<float>& values) {
  double max = 0.0;
  for (float value : values) max = std::max(max, std::fabs(static_cast<double>(value)));
  return max;
}

// The source stores the output projection in BF16 and the F32 export in FP32, so their logits
// differ by the order of the sums. Where AMX is usable, the BF16 product keeps its inputs to
// 2^-16 of their magnitude (kernels::Bf16Matrix), so the logits may differ by about 2^-16 of
// their scale.
double F32ExportTolerance() { return kernels::AmxBf16Usable() ? 2e-5 : 1e-6; }

TEST_F(TinyLlama3, F32ExportGivesTheSourceLogits) {
  const std::vector<float> source = Logits(source_dir());
  const std::vector<float> exported = Logits(Exported(GgufOutType::kF32));
  ASSERT_EQ(source.size(), kLlama3Prompt.size() * 128256);
  ASSERT_EQ(exported.size(), source.size());
  std::printf("f32 export: max |logit difference| %.3g of max |logit| %.3g\n",
              MaxAbsDifference(source, exported), MaxAbs(source));
  EXPECT_LE(MaxAbsDifference(source, exported), F32ExportTolerance());
}

TEST_F(TinyLlama3, Bf16ExportOfBf16SourceIsLossless) {
  // make-model writes BF16 weights, so a BF16 export stores the same values.
  const std::vector<float> source = Logits(source_dir());
  const std::vector<float> exported = Logits(Exported(GgufOutType::kBF16));
  ASSERT_EQ(exported.size(), source.size());
  EXPECT_LE(MaxAbsDifference(source, exported), 1e-6);
}

TEST_F(TinyLlama3, F16AndQ8_0ExportsGiveCloseLogits) {
  const std::vector<float> source = Logits(source_dir());
  const double scale = MaxAbs(source);
  ASSERT_GT(scale, 0.0);
  const std::vector<float> f16 = Logits(Exported(GgufOutType::kF16));
  const std::vector<float> q8_0 = Logits(Exported(GgufOutType::kQ8_0));
  ASSERT_EQ(f16.size(), source.size());
  ASSERT_EQ(q8_0.size(), source.size());
  const double f16_error = MaxAbsDifference(source, f16) / scale;
  const double q8_0_error = MaxAbsDifference(source, q8_0) / scale;
  std::printf("max |logit difference| / max |logit|: f16 %.3g, q8_0 %.3g\n", f16_error, q8_0_error);
  EXPECT_LE(f16_error, 1e-3);
  EXPECT_LE(q8_0_error, 3e-2);
}

TEST_F(TinyLlama3, RopeFreqsReproduceStrongRopeScaling) {
  // An original context of 64 positions scales most rotary frequencies of head_dim 16, so
  // the logits of 7 positions depend on rope_freqs.weight well above rounding noise.
  const std::filesystem::path dir = dir_->path() / "short-rope";
  std::filesystem::create_directories(dir);
  for (const auto& entry : std::filesystem::directory_iterator(source_dir())) {
    std::filesystem::copy(entry.path(), dir / entry.path().filename());
  }
  nlohmann::json config = nlohmann::json::parse(testing::ReadFile(dir / "config.json"));
  config["rope_scaling"] = {{"rope_type", "llama3"},
                            {"factor", 32.0},
                            {"low_freq_factor", 1.0},
                            {"high_freq_factor", 4.0},
                            {"original_max_position_embeddings", 64}};
  testing::WriteFile(dir / "config.json", config.dump());
  absl::StatusOr<std::unique_ptr<Checkpoint>> source = Checkpoint::Open(dir);
  ASSERT_TRUE(source.ok()) << source.status();
  GgufExportOptions options;
  options.out_type = GgufOutType::kF32;
  const absl::StatusOr<GgufExportSummary> summary =
      ExportGguf(**source, dir_->path() / "short-rope.gguf", options);
  ASSERT_TRUE(summary.ok()) << summary.status();

  const std::vector<float> expected = Logits(dir);
  const std::vector<float> exported = Logits(dir_->path() / "short-rope.gguf");
  ASSERT_EQ(exported.size(), expected.size());
  EXPECT_LE(MaxAbsDifference(expected, exported), F32ExportTolerance());
  EXPECT_GT(MaxAbsDifference(expected, Logits(source_dir())), 1e-4);
}

TEST_F(TinyLlama3, F32ExportReadsBackTensorForTensor) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> source = Checkpoint::Open(source_dir());
  ASSERT_TRUE(source.ok()) << source.status();
  absl::StatusOr<std::unique_ptr<Checkpoint>> exported =
      Checkpoint::Open(Exported(GgufOutType::kF32));
  ASSERT_TRUE(exported.ok()) << exported.status();
  EXPECT_EQ((*exported)->TensorNames(), (*source)->TensorNames());
  for (const std::string& name : (*source)->TensorNames()) {
    absl::StatusOr<TensorView> a = (*source)->Tensor(name);
    absl::StatusOr<TensorView> b = (*exported)->Tensor(name);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(a->shape, b->shape) << name;
    EXPECT_EQ(*ToFloat32(*a), *ToFloat32(*b)) << name;
  }
}

TEST_F(TinyLlama3, MetadataDescribesTheModel) {
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(Exported(GgufOutType::kQ8_0));
  ASSERT_TRUE(file.ok()) << file.status();
  const auto integer = [&](const char* key) {
    const GgufValue* value = (*file)->FindMetadata(key);
    return value == nullptr ? std::optional<int64_t>() : value->AsInt();
  };
  EXPECT_EQ(*(*file)->FindMetadata("general.architecture")->AsString(), "llama");
  EXPECT_EQ(*(*file)->FindMetadata("general.name")->AsString(), "hf");
  EXPECT_EQ(integer("general.alignment"), 32);
  EXPECT_EQ(integer("general.file_type"), 7);
  EXPECT_EQ(integer("llama.block_count"), 2);
  EXPECT_EQ(integer("llama.embedding_length"), 64);
  EXPECT_EQ(integer("llama.feed_forward_length"), 192);
  EXPECT_EQ(integer("llama.attention.head_count"), 4);
  EXPECT_EQ(integer("llama.attention.head_count_kv"), 2);
  EXPECT_EQ(integer("llama.rope.dimension_count"), 16);
  EXPECT_EQ(integer("llama.vocab_size"), 128256);
  EXPECT_EQ(integer("llama.context_length"), 131072);
  EXPECT_EQ((*file)->FindMetadata("llama.rope.freq_base")->AsDouble(), 500000.0);
  EXPECT_EQ((*file)->FindMetadata("llama.rope.freq_base")->type, GgufType::kFloat32);
  EXPECT_EQ((*file)->FindMetadata("llama.block_count")->type, GgufType::kUint32);

  EXPECT_EQ(*(*file)->FindMetadata("tokenizer.ggml.model")->AsString(), "gpt2");
  EXPECT_EQ(*(*file)->FindMetadata("tokenizer.ggml.pre")->AsString(), "llama-bpe");
  EXPECT_EQ(integer("tokenizer.ggml.bos_token_id"), 128000);
  EXPECT_EQ(integer("tokenizer.ggml.eos_token_id"), 128001);
  const std::optional<std::vector<int64_t>> types =
      (*file)->FindMetadata("tokenizer.ggml.token_type")->AsIntArray();
  ASSERT_TRUE(types.has_value());
  ASSERT_EQ(types->size(), 128256u);
  EXPECT_EQ((*types)[0], 1);
  EXPECT_EQ((*types)[127999], 1);
  EXPECT_EQ((*types)[128000], 3);
  EXPECT_EQ((*types)[128255], 3);
  EXPECT_EQ((*file)->FindMetadata("tokenizer.ggml.merges")->AsStringArray()->size(), 280147u);

  // Tied embeddings: no output.weight. 1-D tensors stay F32, 2-D ones are Q8_0.
  EXPECT_EQ((*file)->FindTensor("output.weight"), nullptr);
  EXPECT_EQ((*file)->FindTensor("blk.1.attn_norm.weight")->dtype, DType::kF32);
  EXPECT_EQ((*file)->FindTensor("blk.1.ffn_down.weight")->dtype, DType::kQ8_0);
  EXPECT_EQ((*file)->FindTensor("token_embd.weight")->shape, (std::vector<int64_t>{128256, 64}));
  EXPECT_EQ((*file)->tensors().size(), 1u + 1u + 2u * 9u + 1u);
}

TEST_F(TinyLlama3, RopeFreqsHoldTheLlama3Factors) {
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(Exported(GgufOutType::kF32));
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorView* rope = (*file)->FindTensor("rope_freqs.weight");
  ASSERT_NE(rope, nullptr);
  EXPECT_EQ(rope->dtype, DType::kF32);
  EXPECT_EQ(rope->shape, std::vector<int64_t>{8});
  const std::vector<float> factors = *ToFloat32(*rope);
  EXPECT_EQ(factors, Llama3RopeFrequencyFactors(*PresetConfig("llama3-tiny")));
  // theta 500000, head_dim 16, original context 8192: wavelengths 6.3 to 4443 keep factor 1
  // below 2048, 4443 is interpolated, and the longer ones are divided by 32.
  EXPECT_EQ(factors[0], 1.0f);
  EXPECT_EQ(factors[3], 1.0f);
  EXPECT_GT(factors[4], 1.0f);
  EXPECT_LT(factors[4], 32.0f);
  EXPECT_EQ(factors[7], 32.0f);
}

TEST_F(TinyLlama3, ZeroRopeFactorIsRejected) {
  const std::filesystem::path path = dir_->path() / "zero-rope.gguf";
  std::filesystem::copy_file(Exported(GgufOutType::kF32), path);
  const std::vector<float> factors = Llama3RopeFrequencyFactors(*PresetConfig("llama3-tiny"));
  std::string bytes = testing::ReadFile(path);
  const std::string pattern(reinterpret_cast<const char*>(factors.data()),
                            factors.size() * sizeof(float));
  const size_t at = bytes.find(pattern);
  ASSERT_NE(at, std::string::npos);
  ASSERT_EQ(bytes.find(pattern, at + 1), std::string::npos);
  const float zero = 0.0f;
  std::memcpy(bytes.data() + at + 7 * sizeof(float), &zero, sizeof(zero));
  testing::WriteFile(path, bytes);

  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(path);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const absl::StatusOr<std::unique_ptr<Model>> model =
      Model::Create(**checkpoint, Fp32LinearFactory());
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(model.status().message()),
              ::testing::HasSubstr("rope_freqs.weight[7] is 0"));
}

TEST_F(TinyLlama3, ReloadedTokenizerGivesTheSourceIds) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> source =
      Tokenizer::FromTokenizerJson(testing::Llama3TokenizerJson());
  ASSERT_TRUE(source.ok()) << source.status();
  absl::StatusOr<std::unique_ptr<Tokenizer>> exported =
      Tokenizer::FromPath(Exported(GgufOutType::kQ8_0));
  ASSERT_TRUE(exported.ok()) << exported.status();
  EXPECT_EQ((*exported)->vocab_size(), (*source)->vocab_size());
  EXPECT_EQ((*exported)->bos_id(), (*source)->bos_id());
  for (const std::string& text : kTexts) {
    EXPECT_EQ((*exported)->Encode(text, false, false), (*source)->Encode(text, false, false))
        << text;
    EXPECT_EQ((*exported)->Encode(text, true, true), (*source)->Encode(text, true, true)) << text;
  }
  EXPECT_EQ((*exported)->Encode("The quick brown fox jumps over", true, false), kLlama3Prompt);
}

TEST_F(TinyLlama3, Q8_0BlocksDecodeWithinHalfTheirScale) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> source = Checkpoint::Open(source_dir());
  ASSERT_TRUE(source.ok()) << source.status();
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(Exported(GgufOutType::kQ8_0));
  ASSERT_TRUE(file.ok()) << file.status();
  int64_t checked = 0;
  for (const TensorView& tensor : (*file)->tensors()) {
    if (tensor.dtype != DType::kQ8_0) continue;
    const std::optional<std::string> hf_name = GgufToHfTensorName(tensor.name);
    ASSERT_TRUE(hf_name.has_value()) << tensor.name;
    std::vector<float> expected = *ToFloat32(*(*source)->Tensor(*hf_name));
    const ModelConfig& config = (*source)->config();
    if (tensor.name.find("attn_q") != std::string::npos) {
      expected = *HfRotaryRowsToGguf(expected, config.num_attention_heads, config.head_dim);
    } else if (tensor.name.find("attn_k") != std::string::npos) {
      expected = *HfRotaryRowsToGguf(expected, config.num_key_value_heads, config.head_dim);
    }
    const std::vector<float> decoded = *ToFloat32(tensor);
    ASSERT_EQ(decoded.size(), expected.size()) << tensor.name;
    for (size_t block = 0; block < decoded.size() / 32; ++block) {
      uint16_t scale_bits = 0;
      std::memcpy(&scale_bits, tensor.data + block * 34, sizeof(scale_bits));
      const float scale = HalfToFloat(scale_bits);
      for (size_t i = block * 32; i < block * 32 + 32; ++i) {
        ASSERT_LE(std::fabs(decoded[i] - expected[i]), scale * 0.5f * (1.0f + 1e-4f))
            << tensor.name << " element " << i;
      }
    }
    ++checked;
  }
  EXPECT_EQ(checked, 2 * 7 + 1);  // Seven linear layers per block and the embedding.
}

TEST(QuantizeQ8_0Test, BlocksDecodeWithinHalfTheirScale) {
  std::mt19937 random(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> values(32 * 64);
  for (size_t i = 0; i < values.size(); ++i) {
    // Blocks of widely different magnitudes, one all zero and one with a single outlier.
    const size_t block = i / 32;
    values[i] =
        block == 5 ? 0.0f : normal(random) * std::pow(10.0f, static_cast<float>(block % 7) - 4);
  }
  values[32 * 9 + 3] = 1000.0f;
  std::vector<std::byte> encoded(values.size() / 32 * 34);
  QuantizeQ8_0(values, encoded);
  TensorView view{"q", DType::kQ8_0, {64, 32}, encoded.data(), encoded.size()};
  const std::vector<float> decoded = *ToFloat32(view);
  for (size_t block = 0; block < 64; ++block) {
    uint16_t scale_bits = 0;
    std::memcpy(&scale_bits, encoded.data() + block * 34, sizeof(scale_bits));
    const float scale = HalfToFloat(scale_bits);
    for (size_t i = block * 32; i < block * 32 + 32; ++i) {
      EXPECT_LE(std::fabs(decoded[i] - values[i]), scale * 0.5f * (1.0f + 1e-4f))
          << "block " << block << " element " << i;
    }
  }
  EXPECT_EQ(decoded[32 * 5], 0.0f);
  // The outlier is the block maximum, so it decodes to 127 times the FP16 scale 7.875.
  EXPECT_EQ(decoded[32 * 9 + 3], 127.0f * 7.875f);
}

TEST(GgufOutTypeTest, ParsesTheFourNames) {
  for (const char* name : {"f32", "f16", "bf16", "q8_0"}) {
    absl::StatusOr<GgufOutType> type = ParseGgufOutType(name);
    ASSERT_TRUE(type.ok()) << name;
    EXPECT_EQ(GgufOutTypeName(*type), name);
  }
}

TEST(GgufOutTypeTest, UnknownNameListsTheValidOnes) {
  absl::StatusOr<GgufOutType> type = ParseGgufOutType("q4_0");
  ASSERT_FALSE(type.ok());
  EXPECT_THAT(type.status().message(), HasSubstr("'q4_0'"));
  EXPECT_THAT(type.status().message(), HasSubstr("f32, f16, bf16 and q8_0"));
}

// stories260K (SentencePiece tokenizer, F32 weights, untied output) written as a Hugging Face
// directory from its GGUF file, so the export starts from safetensors and tokenizer.model.
class Stories260K : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<Checkpoint>> gguf = Checkpoint::Open(testing::Stories260KGguf());
    ASSERT_TRUE(gguf.ok()) << gguf.status();
    original_ = std::move(*gguf);
    WriteHfCopy(dir_ / "hf", {});
  }

  // Writes the model as config.json, model.safetensors and tokenizer.model; `edits` replaces
  // single values (tensor name, index, value).
  void WriteHfCopy(const std::filesystem::path& out,
                   const std::vector<std::tuple<std::string, size_t, float>>& edits) {
    std::filesystem::create_directories(out);
    testing::WriteFile(out / "config.json", ToHfConfigJson(original_->config()).dump());
    ASSERT_TRUE(WriteTokenizerFiles(*original_, out).ok());
    std::vector<std::vector<float>> buffers;
    std::vector<TensorToWrite> tensors;
    const std::vector<std::string> names = original_->TensorNames();
    buffers.reserve(names.size());
    for (const std::string& name : names) {
      absl::StatusOr<TensorView> view = original_->Tensor(name);
      ASSERT_TRUE(view.ok()) << view.status();
      buffers.push_back(*ToFloat32(*view));
      for (const auto& [edit_name, index, value] : edits) {
        if (edit_name == name) buffers.back()[index] = value;
      }
      tensors.push_back(
          {name, DType::kF32, view->shape, std::as_bytes(std::span<const float>(buffers.back()))});
    }
    ASSERT_TRUE(WriteSafetensors(out / "model.safetensors", tensors).ok());
  }

  absl::StatusOr<GgufExportSummary> Export(const std::filesystem::path& source,
                                           const std::filesystem::path& out, GgufOutType type) {
    absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(source);
    if (!checkpoint.ok()) return checkpoint.status();
    GgufExportOptions options;
    options.out_type = type;
    return ExportGguf(**checkpoint, out, options);
  }

  testing::TempDir dir_;
  std::unique_ptr<Checkpoint> original_;
};

void ExpectSameTensors(const GgufFile& expected, const GgufFile& actual) {
  ASSERT_EQ(actual.tensors().size(), expected.tensors().size());
  for (const TensorView& tensor : expected.tensors()) {
    const TensorView* copy = actual.FindTensor(tensor.name);
    ASSERT_NE(copy, nullptr) << tensor.name;
    EXPECT_EQ(copy->dtype, tensor.dtype) << tensor.name;
    EXPECT_EQ(copy->shape, tensor.shape) << tensor.name;
    ASSERT_EQ(copy->size_bytes, tensor.size_bytes) << tensor.name;
    EXPECT_EQ(std::memcmp(copy->data, tensor.data, tensor.size_bytes), 0) << tensor.name;
  }
}

void ExpectSameTokenizer(const GgufFile& expected, const GgufFile& actual) {
  const auto value = [](const GgufFile& file, const char* key) {
    const GgufValue* found = file.FindMetadata(key);
    EXPECT_NE(found, nullptr) << key;
    return found == nullptr ? GgufValue::String("<missing>") : *found;
  };
  EXPECT_EQ(*value(actual, "tokenizer.ggml.model").AsString(),
            *value(expected, "tokenizer.ggml.model").AsString());
  EXPECT_EQ(*value(actual, "tokenizer.ggml.tokens").AsStringArray(),
            *value(expected, "tokenizer.ggml.tokens").AsStringArray());
  EXPECT_EQ(value(actual, "tokenizer.ggml.scores").AsDoubleArray(),
            value(expected, "tokenizer.ggml.scores").AsDoubleArray());
  EXPECT_EQ(value(actual, "tokenizer.ggml.token_type").AsIntArray(),
            value(expected, "tokenizer.ggml.token_type").AsIntArray());
  for (const char* key : {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                          "tokenizer.ggml.unknown_token_id"}) {
    EXPECT_EQ(value(actual, key).AsInt(), value(expected, key).AsInt()) << key;
  }
}

TEST_F(Stories260K, ExportFromSafetensorsEqualsTheOriginalGguf) {
  const absl::StatusOr<GgufExportSummary> summary =
      Export(dir_ / "hf", dir_ / "stories.gguf", GgufOutType::kF32);
  ASSERT_TRUE(summary.ok()) << summary.status();
  absl::StatusOr<std::unique_ptr<GgufFile>> original = GgufFile::Open(testing::Stories260KGguf());
  absl::StatusOr<std::unique_ptr<GgufFile>> exported = GgufFile::Open(dir_ / "stories.gguf");
  ASSERT_TRUE(original.ok()) << original.status();
  ASSERT_TRUE(exported.ok()) << exported.status();
  ExpectSameTensors(**original, **exported);
  ExpectSameTokenizer(**original, **exported);
  EXPECT_EQ(summary->tensor_count, static_cast<int64_t>((*original)->tensors().size()));
  // Like the original: a SentencePiece vocabulary has no pre-tokenizer to name.
  EXPECT_EQ((*exported)->FindMetadata("tokenizer.ggml.pre"), nullptr);
}

TEST_F(Stories260K, ExportFromGgufEqualsTheOriginalGguf) {
  ASSERT_TRUE(Export(testing::Stories260KGguf(), dir_ / "again.gguf", GgufOutType::kF32).ok());
  absl::StatusOr<std::unique_ptr<GgufFile>> original = GgufFile::Open(testing::Stories260KGguf());
  absl::StatusOr<std::unique_ptr<GgufFile>> exported = GgufFile::Open(dir_ / "again.gguf");
  ASSERT_TRUE(original.ok()) << original.status();
  ASSERT_TRUE(exported.ok()) << exported.status();
  ExpectSameTensors(**original, **exported);
  ExpectSameTokenizer(**original, **exported);
}

TEST_F(Stories260K, ReloadedTokenizerGivesTheSourceIds) {
  ASSERT_TRUE(Export(dir_ / "hf", dir_ / "stories.gguf", GgufOutType::kF32).ok());
  absl::StatusOr<std::unique_ptr<Tokenizer>> source =
      Tokenizer::FromSentencePieceModel(testing::Stories260KDir() / "tok512.model");
  absl::StatusOr<std::unique_ptr<Tokenizer>> exported = Tokenizer::FromPath(dir_ / "stories.gguf");
  ASSERT_TRUE(source.ok()) << source.status();
  ASSERT_TRUE(exported.ok()) << exported.status();
  EXPECT_EQ((*exported)->Encode("Once upon a time", true, false),
            (std::vector<int32_t>{1, 403, 407, 261, 378}));
  for (const std::string& text : kTexts) {
    EXPECT_EQ((*exported)->Encode(text, true, false), (*source)->Encode(text, true, false)) << text;
  }
}

TEST_F(Stories260K, Q8_0FallsBackToF16) {
  const absl::StatusOr<GgufExportSummary> summary =
      Export(dir_ / "hf", dir_ / "q8.gguf", GgufOutType::kQ8_0);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->q8_0_fallbacks.size(), 5u);
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(dir_ / "q8.gguf");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->FindTensor("blk.0.ffn_down.weight")->dtype, DType::kF16);
  EXPECT_EQ((*file)->FindTensor("blk.0.ffn_up.weight")->dtype, DType::kQ8_0);
  EXPECT_EQ((*file)->FindTensor("output.weight")->dtype, DType::kQ8_0);
  EXPECT_EQ((*file)->FindTensor("output_norm.weight")->dtype, DType::kF32);
}

TEST_F(Stories260K, NonFiniteWeightLeavesNoFile) {
  // The bad value sits in the last layer, so earlier tensors are already written.
  WriteHfCopy(dir_ / "nan", {{"model.layers.4.mlp.down_proj.weight", 17, std::nanf("")}});
  const std::filesystem::path out = dir_ / "out" / "model.gguf";
  std::filesystem::create_directories(out.parent_path());
  const absl::StatusOr<GgufExportSummary> summary = Export(dir_ / "nan", out, GgufOutType::kF32);
  ASSERT_FALSE(summary.ok());
  EXPECT_THAT(summary.status().message(), HasSubstr("blk.4.ffn_down.weight"));
  EXPECT_FALSE(std::filesystem::exists(out));
  EXPECT_TRUE(std::filesystem::is_empty(out.parent_path()));
}

TEST_F(Stories260K, FailedExportKeepsTheExistingFile) {
  WriteHfCopy(dir_ / "big", {{"model.layers.2.self_attn.o_proj.weight", 3, 1.0e6f}});
  const std::filesystem::path out = dir_ / "model.gguf";
  testing::WriteFile(out, "previous contents");
  const absl::StatusOr<GgufExportSummary> summary = Export(dir_ / "big", out, GgufOutType::kF16);
  ASSERT_FALSE(summary.ok());
  EXPECT_THAT(summary.status().message(), HasSubstr("blk.2.attn_output.weight"));
  EXPECT_THAT(summary.status().message(), HasSubstr("--outtype bf16 or f32"));
  EXPECT_EQ(testing::ReadFile(out), "previous contents");
}

TEST_F(Stories260K, MissingOutputDirectoryIsReported) {
  const std::filesystem::path out = dir_ / "no-such-dir" / "model.gguf";
  const absl::StatusOr<GgufExportSummary> summary = Export(dir_ / "hf", out, GgufOutType::kF32);
  ASSERT_FALSE(summary.ok());
  EXPECT_THAT(summary.status().message(), HasSubstr("no-such-dir"));
  EXPECT_THAT(summary.status().message(), HasSubstr("exists and is writable"));
  EXPECT_FALSE(std::filesystem::exists(out));
}

TEST_F(Stories260K, OutputDirectoryPathIsRejected) {
  const absl::StatusOr<GgufExportSummary> summary =
      Export(dir_ / "hf", dir_.path(), GgufOutType::kF32);
  ASSERT_FALSE(summary.ok());
  EXPECT_THAT(summary.status().message(), HasSubstr("is a directory"));
}

TEST_F(Stories260K, CheckpointWithoutTokenizerIsRejected) {
  std::filesystem::remove(dir_ / "hf" / "tokenizer.model");
  const absl::StatusOr<GgufExportSummary> summary =
      Export(dir_ / "hf", dir_ / "model.gguf", GgufOutType::kF32);
  ASSERT_FALSE(summary.ok());
  EXPECT_THAT(summary.status().message(), HasSubstr("has no tokenizer"));
  EXPECT_FALSE(std::filesystem::exists(dir_ / "model.gguf"));
}

TEST_F(Stories260K, TokenizerJsonWithoutVocabIsRejected) {
  testing::WriteFile(dir_ / "hf" / "tokenizer.json", R"({"decoder": {"type": "ByteLevel"}})");
  const absl::StatusOr<GgufExportSummary> summary =
      Export(dir_ / "hf", dir_ / "model.gguf", GgufOutType::kF32);
  ASSERT_FALSE(summary.ok());
  EXPECT_THAT(summary.status().message(), HasSubstr("model.vocab is missing"));
  EXPECT_FALSE(std::filesystem::exists(dir_ / "model.gguf"));
}

TEST_F(Stories260K, TokenizerJsonPaddedToVocabulary) {
  // Three tokens and an added token whose "special" is not a bool (so it counts as not
  // special) for a model of 512 embedding rows; the other ids become [PAD<id>] tokens.
  testing::WriteFile(dir_ / "hf" / "tokenizer.json", R"({
      "decoder": {"type": "ByteLevel"},
      "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]},
      "added_tokens": [{"id": 5, "content": "<x>", "special": "yes"}]})");
  ASSERT_TRUE(Export(dir_ / "hf", dir_ / "model.gguf", GgufOutType::kF32).ok());
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(dir_ / "model.gguf");
  ASSERT_TRUE(file.ok()) << file.status();
  const std::vector<std::string>& tokens =
      *(*file)->FindMetadata("tokenizer.ggml.tokens")->AsStringArray();
  ASSERT_EQ(tokens.size(), 512u);
  EXPECT_EQ(tokens[2], "ab");
  EXPECT_EQ(tokens[3], "[PAD3]");
  EXPECT_EQ(tokens[5], "<x>");
  EXPECT_EQ(tokens[511], "[PAD511]");
  const std::vector<int64_t> types =
      *(*file)->FindMetadata("tokenizer.ggml.token_type")->AsIntArray();
  EXPECT_EQ(types[0], 1);
  EXPECT_EQ(types[3], 4);
  EXPECT_EQ(types[5], 4);
  EXPECT_EQ(*(*file)->FindMetadata("tokenizer.ggml.merges")->AsStringArray(),
            std::vector<std::string>{"a b"});
  EXPECT_EQ(*(*file)->FindMetadata("tokenizer.ggml.pre")->AsString(), "default");
}

// The `w8a8 export-gguf` command.
using testing::CommandResult;

using testing::RunW8a8Tool;

class ExportGgufCommand : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(std::filesystem::exists(testing::W8a8Tool()))
        << "build the w8a8 target first: " << testing::W8a8Tool();
  }
  testing::TempDir dir_;
};

TEST_F(ExportGgufCommand, WritesAFileThatLoads) {
  const std::filesystem::path out = dir_ / "stories-q8_0.gguf";
  const CommandResult result =
      RunW8a8Tool("export-gguf --model " + testing::Stories260KGguf().string() + " --out " +
                  out.string() + " --outtype q8_0");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_THAT(result.output, HasSubstr("q8_0"));
  EXPECT_THAT(result.output, HasSubstr("blk.0.ffn_down.weight"));
  EXPECT_TRUE(Checkpoint::Open(out).ok());
}

TEST_F(ExportGgufCommand, MissingModelDirectoryIsNamed) {
  const std::string missing = (dir_ / "no-model").string();
  const CommandResult result =
      RunW8a8Tool("export-gguf --model " + missing + " --out " + (dir_ / "m.gguf").string());
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr(missing + " not found"));
}

TEST_F(ExportGgufCommand, UnknownOuttypeListsTheValidOnes) {
  const CommandResult result =
      RunW8a8Tool("export-gguf --model " + testing::Stories260KGguf().string() + " --out " +
                  (dir_ / "m.gguf").string() + " --outtype q4_k");
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("'q4_k'"));
  EXPECT_THAT(result.output, HasSubstr("f32, f16, bf16 and q8_0"));
  EXPECT_FALSE(std::filesystem::exists(dir_ / "m.gguf"));
}

TEST_F(ExportGgufCommand, UnwritableOutputIsReported) {
  const std::string out = (dir_ / "missing" / "m.gguf").string();
  const CommandResult result =
      RunW8a8Tool("export-gguf --model " + testing::Stories260KGguf().string() + " --out " + out);
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("check that the directory exists and is writable"));
}

TEST_F(ExportGgufCommand, MissingOutFlagIsReported) {
  const CommandResult result =
      RunW8a8Tool("export-gguf --model " + testing::Stories260KGguf().string());
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("--out is missing"));
}

}  // namespace
}  // namespace w8a8
