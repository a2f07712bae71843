// The FP32 forward pass on a small random model held in memory, against a plain double-precision
// transcription of the LLaMA equations written in this file.
#include "core/model.h"

#include <cmath>
#include <cstring>
#include <map>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"
#include "core/quantization.h"
#include "gtest/gtest.h"
#include "kernels/cpu_features.h"

namespace w8a8 {
namespace {

// A checkpoint whose F32 tensors live in memory.
class MemoryCheckpoint final : public Checkpoint {
 public:
  explicit MemoryCheckpoint(ModelConfig config) : config_(std::move(config)) {}

  void Add(const std::string& name, std::vector<int64_t> shape, std::vector<float> data) {
    tensors_[name] = {std::move(shape), std::move(data), {}};
  }
  // Stores `data` rounded toward zero to BF16, as a BF16 tensor.
  void AddBf16(const std::string& name, std::vector<int64_t> shape,
               const std::vector<float>& data) {
    Stored stored{std::move(shape), {}, {}};
    for (float value : data) {
      uint32_t bits;
      std::memcpy(&bits, &value, sizeof(bits));
      stored.bf16.push_back(static_cast<uint16_t>(bits >> 16));
    }
    tensors_[name] = std::move(stored);
  }
  void Remove(const std::string& name) { tensors_.erase(name); }
  std::vector<float>& Data(const std::string& name) { return tensors_.at(name).data; }

  const std::filesystem::path& path() const override { return path_; }
  std::string format() const override { return "memory"; }
  const ModelConfig& config() const override { return config_; }
  const GenerationDefaults& generation_defaults() const override { return defaults_; }
  const TokenizerSource& tokenizer_source() const override { return tokenizer_; }
  std::vector<std::string> TensorNames() const override {
    std::vector<std::string> names;
    for (const auto& [name, tensor] : tensors_) names.push_back(name);
    return names;
  }
  bool HasTensor(const std::string& name) const override { return tensors_.contains(name); }
  absl::StatusOr<TensorView> Tensor(const std::string& name) const override {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) return absl::NotFoundError(absl::StrCat("no tensor ", name));
    TensorView view;
    view.name = name;
    view.shape = it->second.shape;
    if (!it->second.bf16.empty()) {
      view.dtype = DType::kBF16;
      view.data = reinterpret_cast<const std::byte*>(it->second.bf16.data());
      view.size_bytes = it->second.bf16.size() * sizeof(uint16_t);
      return view;
    }
    view.dtype = DType::kF32;
    view.data = reinterpret_cast<const std::byte*>(it->second.data.data());
    view.size_bytes = it->second.data.size() * sizeof(float);
    return view;
  }
  const std::optional<nlohmann::json>& quantization_config() const override {
    return quantization_config_;
  }
  const nlohmann::json& raw_config() const override { return raw_config_; }

 private:
  struct Stored {
    std::vector<int64_t> shape;
    std::vector<float> data;
    std::vector<uint16_t> bf16;  // Non-empty for a BF16 tensor, which then has no `data`.
  };
  std::filesystem::path path_ = "memory";
  ModelConfig config_;
  GenerationDefaults defaults_;
  TokenizerSource tokenizer_;
  std::map<std::string, Stored> tensors_;
  std::optional<nlohmann::json> quantization_config_;
  nlohmann::json raw_config_ = nlohmann::json::object();
};

ModelConfig SmallConfig() {
  ModelConfig config;
  config.hidden_size = 32;
  config.intermediate_size = 48;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;
  config.head_dim = 8;
  config.vocab_size = 40;
  config.max_position_embeddings = 256;
  config.rope_theta = 10000.0;
  config.bos_token_id = 1;
  config.eos_token_ids = {2};
  return config;
}

std::vector<float> RandomVector(std::mt19937& rng, size_t size, float mean, float stddev) {
  std::normal_distribution<float> normal(mean, stddev);
  std::vector<float> values(size);
  for (float& value : values) value = normal(rng);
  return values;
}

std::unique_ptr<MemoryCheckpoint> RandomCheckpoint(const ModelConfig& config, uint32_t seed) {
  std::mt19937 rng(seed);
  auto checkpoint = std::make_unique<MemoryCheckpoint>(config);
  const int64_t h = config.hidden_size;
  const int64_t qf = config.num_attention_heads * config.head_dim;
  const int64_t kvf = config.num_key_value_heads * config.head_dim;
  const int64_t im = config.intermediate_size;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float mean, float stddev) {
    int64_t count = 1;
    for (int64_t d : shape) count *= d;
    checkpoint->Add(name, shape, RandomVector(rng, static_cast<size_t>(count), mean, stddev));
  };
  add("model.embed_tokens.weight", {config.vocab_size, h}, 0.0f, 1.0f);
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    add(p + "input_layernorm.weight", {h}, 1.0f, 0.1f);
    add(p + "post_attention_layernorm.weight", {h}, 1.0f, 0.1f);
    add(p + "self_attn.q_proj.weight", {qf, h}, 0.0f, 0.2f);
    add(p + "self_attn.k_proj.weight", {kvf, h}, 0.0f, 0.2f);
    add(p + "self_attn.v_proj.weight", {kvf, h}, 0.0f, 0.2f);
    add(p + "self_attn.o_proj.weight", {h, qf}, 0.0f, 0.2f);
    add(p + "mlp.gate_proj.weight", {im, h}, 0.0f, 0.2f);
    add(p + "mlp.up_proj.weight", {im, h}, 0.0f, 0.2f);
    add(p + "mlp.down_proj.weight", {h, im}, 0.0f, 0.2f);
  }
  add("model.norm.weight", {h}, 1.0f, 0.1f);
  add("lm_head.weight", {config.vocab_size, h}, 0.0f, 0.2f);
  return checkpoint;
}

// The LLaMA equations in double precision, one token at a time, with a contiguous cache.
class ReferenceModel {
 public:
  explicit ReferenceModel(MemoryCheckpoint& checkpoint)
      : checkpoint_(checkpoint), config_(checkpoint.config()) {}

  // Logits of every position of `tokens`.
  std::vector<std::vector<double>> Run(const std::vector<int32_t>& tokens) {
    const int64_t h = config_.hidden_size;
    const int64_t hd = config_.head_dim;
    const int64_t nh = config_.num_attention_heads;
    const int64_t nkv = config_.num_key_value_heads;
    const size_t layers = static_cast<size_t>(config_.num_hidden_layers);
    std::vector<std::vector<std::vector<double>>> keys(layers), values(layers);
    std::vector<std::vector<double>> all_logits;
    for (size_t pos = 0; pos < tokens.size(); ++pos) {
      const std::vector<float>& embedding = checkpoint_.Data("model.embed_tokens.weight");
      std::vector<double> x(embedding.begin() + tokens[pos] * h,
                            embedding.begin() + (tokens[pos] + 1) * h);
      for (size_t l = 0; l < layers; ++l) {
        const std::string p = absl::StrCat("model.layers.", l, ".");
        std::vector<double> n = Norm(x, p + "input_layernorm.weight");
        std::vector<double> q = Matmul(p + "self_attn.q_proj.weight", n);
        std::vector<double> k = Matmul(p + "self_attn.k_proj.weight", n);
        std::vector<double> v = Matmul(p + "self_attn.v_proj.weight", n);
        Rope(q, nh, static_cast<double>(pos));
        Rope(k, nkv, static_cast<double>(pos));
        keys[l].push_back(k);
        values[l].push_back(v);
        std::vector<double> attention(static_cast<size_t>(nh * hd), 0.0);
        for (int64_t head = 0; head < nh; ++head) {
          const int64_t g = head / (nh / nkv);
          std::vector<double> scores(pos + 1);
          double max_score = -1e300;
          for (size_t t = 0; t <= pos; ++t) {
            double dot = 0.0;
            for (int64_t d = 0; d < hd; ++d) dot += q[head * hd + d] * keys[l][t][g * hd + d];
            scores[t] = dot / std::sqrt(static_cast<double>(hd));
            max_score = std::max(max_score, scores[t]);
          }
          double sum = 0.0;
          for (double& s : scores) sum += (s = std::exp(s - max_score));
          for (size_t t = 0; t <= pos; ++t) {
            for (int64_t d = 0; d < hd; ++d) {
              attention[head * hd + d] += scores[t] / sum * values[l][t][g * hd + d];
            }
          }
        }
        std::vector<double> o = Matmul(p + "self_attn.o_proj.weight", attention);
        for (int64_t i = 0; i < h; ++i) x[i] += o[i];
        n = Norm(x, p + "post_attention_layernorm.weight");
        std::vector<double> gate = Matmul(p + "mlp.gate_proj.weight", n);
        std::vector<double> up = Matmul(p + "mlp.up_proj.weight", n);
        for (size_t i = 0; i < gate.size(); ++i) gate[i] = gate[i] / (1 + std::exp(-gate[i])) * up[i];
        std::vector<double> down = Matmul(p + "mlp.down_proj.weight", gate);
        for (int64_t i = 0; i < h; ++i) x[i] += down[i];
      }
      std::vector<double> n = Norm(x, "model.norm.weight");
      all_logits.push_back(Matmul(checkpoint_.HasTensor("lm_head.weight")
                                      ? "lm_head.weight"
                                      : "model.embed_tokens.weight",
                                  n));
    }
    return all_logits;
  }

 private:
  std::vector<double> Norm(const std::vector<double>& x, const std::string& weight_name) {
    const std::vector<float>& w = checkpoint_.Data(weight_name);
    double sum = 0.0;
    for (double v : x) sum += v * v;
    const double inv = 1.0 / std::sqrt(sum / static_cast<double>(x.size()) + config_.rms_norm_eps);
    std::vector<double> out(x.size());
    for (size_t i = 0; i < x.size(); ++i) out[i] = w[i] * x[i] * inv;
    return out;
  }
  std::vector<double> Matmul(const std::string& weight_name, const std::vector<double>& x) {
    const std::vector<float>& w = checkpoint_.Data(weight_name);
    const size_t in = x.size();
    std::vector<double> y(w.size() / in, 0.0);
    for (size_t r = 0; r < y.size(); ++r) {
      for (size_t c = 0; c < in; ++c) y[r] += w[r * in + c] * x[c];
    }
    return y;
  }
  // Half-split rotation without rope scaling: pairs (i, i + head_dim / 2).
  void Rope(std::vector<double>& x, int64_t heads, double pos) {
    const int64_t hd = config_.head_dim;
    for (int64_t head = 0; head < heads; ++head) {
      for (int64_t i = 0; i < hd / 2; ++i) {
        const double freq = std::pow(config_.rope_theta, -2.0 * i / hd);
        const double c = std::cos(pos * freq), s = std::sin(pos * freq);
        double& a = x[head * hd + i];
        double& b = x[head * hd + i + hd / 2];
        const double a0 = a, b0 = b;
        a = a0 * c - b0 * s;
        b = b0 * c + a0 * s;
      }
    }
  }

  MemoryCheckpoint& checkpoint_;
  const ModelConfig& config_;
};

std::vector<int32_t> Iota(int64_t count, int32_t first = 0) {
  std::vector<int32_t> values(static_cast<size_t>(count));
  std::iota(values.begin(), values.end(), first);
  return values;
}

// Runs one sequence through the model in pieces of `piece` tokens, returning every logit row.
std::vector<float> RunInPieces(const Model& model, const std::vector<int32_t>& tokens,
                               size_t piece, std::vector<int32_t> block_table,
                               int64_t block_size, int64_t num_blocks) {
  KvCache cache(model.config(), num_blocks, block_size);
  std::vector<float> logits;
  for (size_t start = 0; start < tokens.size(); start += piece) {
    SequenceStep step;
    step.tokens = std::span<const int32_t>(tokens).subspan(start, std::min(piece, tokens.size() - start));
    step.start_position = static_cast<int64_t>(start);
    step.block_table = block_table;
    step.logits = SequenceStep::Logits::kAll;
    EXPECT_TRUE(model.Forward({&step, 1}, cache, logits).ok());
  }
  return logits;
}

// Runs the wrapped layer one row at a time, so its results cannot depend on the batch size
// (the FP32 GEMM picks a different kernel for one row than for several).
class RowByRowLinear final : public LinearLayer {
 public:
  explicit RowByRowLinear(std::unique_ptr<LinearLayer> inner) : inner_(std::move(inner)) {}
  void Forward(const float* x, int64_t m, float* y) const override {
    for (int64_t r = 0; r < m; ++r) inner_->Forward(x + r * in_features(), 1, y + r * out_features());
  }
  int64_t in_features() const override { return inner_->in_features(); }
  int64_t out_features() const override { return inner_->out_features(); }
  std::string scheme() const override { return inner_->scheme(); }
  size_t weight_bytes() const override { return inner_->weight_bytes(); }

 private:
  std::unique_ptr<LinearLayer> inner_;
};

LinearFactory RowByRowFactory() {
  return [fp32 = Fp32LinearFactory()](const Checkpoint& checkpoint, const std::string& name,
                                      int64_t out, int64_t in)
             -> absl::StatusOr<std::unique_ptr<LinearLayer>> {
    absl::StatusOr<std::unique_ptr<LinearLayer>> layer = fp32(checkpoint, name, out, in);
    if (!layer.ok() || *layer == nullptr) return layer;
    return std::make_unique<RowByRowLinear>(std::move(*layer));
  };
}

const std::vector<int32_t> kPrompt = {1, 7, 19, 3, 3, 25, 11, 39, 0, 14, 22, 5, 8, 30, 17, 2, 9, 36};

TEST(ModelTest, PrefillMatchesDoublePrecisionReference) {
  const ModelConfig config = SmallConfig();
  auto checkpoint = RandomCheckpoint(config, 1);
  auto model = Model::Create(*checkpoint, Fp32LinearFactory());
  ASSERT_TRUE(model.ok()) << model.status();

  const std::vector<float> logits = RunInPieces(**model, kPrompt, kPrompt.size(), Iota(5), 4, 5);
  const auto expected = ReferenceModel(*checkpoint).Run(kPrompt);
  ASSERT_EQ(logits.size(), kPrompt.size() * config.vocab_size);
  for (size_t t = 0; t < kPrompt.size(); ++t) {
    for (int64_t v = 0; v < config.vocab_size; ++v) {
      ASSERT_NEAR(logits[t * config.vocab_size + v], expected[t][v], 2e-4)
          << "position " << t << " token " << v;
    }
  }
}

TEST(ModelTest, TiedModelUsesEmbeddingAsLmHead) {
  ModelConfig config = SmallConfig();
  config.tie_word_embeddings = true;
  auto checkpoint = RandomCheckpoint(config, 2);
  checkpoint->Remove("lm_head.weight");
  auto model = Model::Create(*checkpoint, Fp32LinearFactory());
  ASSERT_TRUE(model.ok()) << model.status();

  const std::vector<float> logits = RunInPieces(**model, kPrompt, kPrompt.size(), Iota(5), 4, 5);
  const auto expected = ReferenceModel(*checkpoint).Run(kPrompt);
  for (size_t t = 0; t < kPrompt.size(); ++t) {
    for (int64_t v = 0; v < config.vocab_size; ++v) {
      ASSERT_NEAR(logits[t * config.vocab_size + v], expected[t][v], 2e-4)
          << "position " << t << " token " << v;
    }
  }
  EXPECT_EQ((*model)->LinearLayers().back().name, "lm_head");
  EXPECT_EQ((*model)->LinearLayers().back().weight_bytes, 0u);
}

TEST(ModelTest, PlanQuantizesTiedLmHeadFromEmbedding) {
  ModelConfig config = SmallConfig();
  config.tie_word_embeddings = true;
  auto checkpoint = RandomCheckpoint(config, 2);
  checkpoint->Remove("lm_head.weight");
  QuantPlan plan;
  LayerPlan head_plan;
  head_plan.name = "lm_head";
  head_plan.scheme = WeightScheme::kPerChannel;
  plan.layers.push_back(head_plan);
  auto quantized_head = Model::Create(*checkpoint, LinearFactoryForQuantPlan(plan));
  auto fp32_head = Model::Create(*checkpoint, LinearFactoryForQuantPlan(QuantPlan{}));
  ASSERT_TRUE(quantized_head.ok()) << quantized_head.status();
  ASSERT_TRUE(fp32_head.ok()) << fp32_head.status();

  const LinearLayerInfo head = (*quantized_head)->LinearLayers().back();
  EXPECT_EQ(head.name, "lm_head");
  EXPECT_EQ(head.scheme, "per-channel");
  EXPECT_GE(head.weight_bytes, static_cast<size_t>(config.vocab_size * config.hidden_size));
  EXPECT_EQ((*fp32_head)->LinearLayers().back().scheme, "fp32");
  EXPECT_EQ((*fp32_head)->LinearLayers().back().weight_bytes, 0u);

  // Token lookups still read the FP32 embedding, so only the logits carry int8 error.
  const std::vector<float> logits =
      RunInPieces(**quantized_head, kPrompt, kPrompt.size(), Iota(5), 4, 5);
  const auto expected = ReferenceModel(*checkpoint).Run(kPrompt);
  float max_error = 0.0f;
  float max_logit = 0.0f;
  for (size_t t = 0; t < kPrompt.size(); ++t) {
    for (int64_t v = 0; v < config.vocab_size; ++v) {
      max_error = std::max(max_error,
                           std::abs(logits[t * config.vocab_size + v] - static_cast<float>(expected[t][v])));
      max_logit = std::max(max_logit, std::abs(static_cast<float>(expected[t][v])));
    }
  }
  EXPECT_GT(max_error, 0.0f);
  EXPECT_LT(max_error, 0.02f * max_logit);
}

// Compares the logits of a model with a BF16 output projection with those of the same model
// in FP32, over 18 prompt tokens in pieces of 1, 5 and 17 rows. On the AVX-512 path these
// cover a pass over 8 tiles (2 of them real), a pass of 5 rows over one tile, and three passes
// of 6, 6 and 5 rows. The other paths run the plain loop and the converted blocks. Where AMX
// is usable, 17 rows run on it, with inputs kept to 2^-16 of their magnitude instead of
// exactly, hence the wider tolerance there.
void ExpectBf16LogitsMatchFp32(const Model& bf16_model, const Model& fp32_model) {
  for (const size_t count : {size_t{1}, size_t{5}, size_t{17}}) {
    const std::vector<int32_t> prompt(kPrompt.begin(), kPrompt.begin() + 18);
    const std::vector<float> expected = RunInPieces(fp32_model, prompt, count, Iota(5), 4, 5);
    const std::vector<float> actual = RunInPieces(bf16_model, prompt, count, Iota(5), 4, 5);
    const float relative = count >= 8 && kernels::AmxBf16Usable() ? 1e-4f : 1e-5f;
    ASSERT_EQ(actual.size(), expected.size());
    for (size_t i = 0; i < expected.size(); ++i) {
      ASSERT_NEAR(actual[i], expected[i], relative * (1.0f + std::abs(expected[i])))
          << "piece of " << count << " rows, logit " << i;
    }
  }
}

TEST(ModelTest, Bf16EmbeddingStaysBf16WithSameLogits) {
  ModelConfig config = SmallConfig();
  config.tie_word_embeddings = true;
  ASSERT_EQ(config.vocab_size, 40);
  auto bf16 = RandomCheckpoint(config, 12);
  bf16->Remove("lm_head.weight");
  const std::vector<float> embedding = bf16->Data("model.embed_tokens.weight");
  bf16->AddBf16("model.embed_tokens.weight", {config.vocab_size, config.hidden_size}, embedding);
  // The same values in FP32: BF16 -> FP32 is exact.
  auto fp32 = RandomCheckpoint(config, 12);
  fp32->Remove("lm_head.weight");
  absl::StatusOr<std::vector<float>> widened =
      bf16->LoadFloat32("model.embed_tokens.weight", {config.vocab_size, config.hidden_size});
  ASSERT_TRUE(widened.ok()) << widened.status();
  fp32->Data("model.embed_tokens.weight") = *widened;

  auto bf16_model = Model::Create(*bf16, Fp32LinearFactory());
  auto fp32_model = Model::Create(*fp32, Fp32LinearFactory());
  ASSERT_TRUE(bf16_model.ok()) << bf16_model.status();
  ASSERT_TRUE(fp32_model.ok()) << fp32_model.status();
  const size_t elements = static_cast<size_t>(config.vocab_size * config.hidden_size);
  // The BF16 matrix pads its 40 rows to two tiles of 32.
  const size_t bf16_bytes = 64 * static_cast<size_t>(config.hidden_size) * sizeof(uint16_t);
  EXPECT_EQ((*bf16_model)->embedding_bytes(), bf16_bytes);
  EXPECT_EQ((*fp32_model)->embedding_bytes(), elements * sizeof(float));
  EXPECT_EQ((*fp32_model)->weight_bytes() - (*bf16_model)->weight_bytes(),
            elements * sizeof(float) - bf16_bytes);

  ExpectBf16LogitsMatchFp32(**bf16_model, **fp32_model);
}

TEST(ModelTest, UntiedBf16LmHeadStaysBf16) {
  ModelConfig config = SmallConfig();
  ASSERT_FALSE(config.tie_word_embeddings);
  ASSERT_EQ(config.vocab_size, 40);
  auto bf16 = RandomCheckpoint(config, 13);
  const std::vector<int64_t> shape = {config.vocab_size, config.hidden_size};
  bf16->AddBf16("lm_head.weight", shape, bf16->Data("lm_head.weight"));
  // The same values in FP32, and the same BF16 values in a layer that is not the lm_head.
  auto fp32 = RandomCheckpoint(config, 13);
  absl::StatusOr<std::vector<float>> widened = bf16->LoadFloat32("lm_head.weight", shape);
  ASSERT_TRUE(widened.ok()) << widened.status();
  fp32->Data("lm_head.weight") = *widened;
  const std::vector<int64_t> down_shape = {config.hidden_size, config.intermediate_size};
  bf16->AddBf16("model.layers.0.mlp.down_proj.weight", down_shape,
                bf16->Data("model.layers.0.mlp.down_proj.weight"));
  absl::StatusOr<std::vector<float>> down =
      bf16->LoadFloat32("model.layers.0.mlp.down_proj.weight", down_shape);
  ASSERT_TRUE(down.ok()) << down.status();
  fp32->Data("model.layers.0.mlp.down_proj.weight") = *down;

  // Every layer unquantized, as a plan leaves the lm_head unless it names it.
  auto bf16_model = Model::Create(*bf16, LinearFactoryForQuantPlan(QuantPlan{}));
  auto fp32_model = Model::Create(*fp32, LinearFactoryForQuantPlan(QuantPlan{}));
  ASSERT_TRUE(bf16_model.ok()) << bf16_model.status();
  ASSERT_TRUE(fp32_model.ok()) << fp32_model.status();
  const LinearLayerInfo head = (*bf16_model)->LinearLayers().back();
  EXPECT_EQ(head.name, "lm_head");
  EXPECT_EQ(head.scheme, "fp32");
  // 40 rows padded to two tiles of 32, at 2 bytes each.
  EXPECT_EQ(head.weight_bytes, 64 * static_cast<size_t>(config.hidden_size) * sizeof(uint16_t));
  EXPECT_EQ((*fp32_model)->LinearLayers().back().weight_bytes,
            static_cast<size_t>(config.vocab_size * config.hidden_size) * sizeof(float));
  // Only the lm_head keeps BF16, so down_proj loads as FP32 from either checkpoint.
  EXPECT_EQ((*bf16_model)->weight_bytes() - head.weight_bytes,
            (*fp32_model)->weight_bytes() - (*fp32_model)->LinearLayers().back().weight_bytes);

  ExpectBf16LogitsMatchFp32(**bf16_model, **fp32_model);
}

TEST(ModelTest, DecodeOneByOneMatchesPrefill) {
  auto checkpoint = RandomCheckpoint(SmallConfig(), 3);
  auto model = Model::Create(*checkpoint, Fp32LinearFactory());
  ASSERT_TRUE(model.ok()) << model.status();
  const std::vector<float> prefill = RunInPieces(**model, kPrompt, kPrompt.size(), Iota(5), 4, 5);
  const std::vector<float> decode = RunInPieces(**model, kPrompt, 1, Iota(5), 4, 5);
  ASSERT_EQ(prefill.size(), decode.size());
  for (size_t i = 0; i < prefill.size(); ++i) ASSERT_NEAR(prefill[i], decode[i], 1e-5) << i;
}

TEST(ModelTest, ScatteredBlockTableGivesSameLogits) {
  auto checkpoint = RandomCheckpoint(SmallConfig(), 4);
  auto model = Model::Create(*checkpoint, Fp32LinearFactory());
  ASSERT_TRUE(model.ok()) << model.status();
  const std::vector<float> contiguous = RunInPieces(**model, kPrompt, 5, Iota(5), 4, 5);
  const std::vector<float> scattered = RunInPieces(**model, kPrompt, 5, {9, 2, 7, 0, 4}, 4, 10);
  EXPECT_EQ(contiguous, scattered);
}

// Runs two sequences solo and batched (prefill, then two decode steps) and compares the
// logits: bitwise when `tolerance` is 0.
void ExpectBatchedMatchesSolo(const LinearFactory& factory, float tolerance) {
  auto checkpoint = RandomCheckpoint(SmallConfig(), 5);
  auto model = Model::Create(*checkpoint, factory);
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelConfig& config = (*model)->config();
  const std::vector<int32_t> a = kPrompt;
  const std::vector<int32_t> b = {1, 33, 4, 4, 12, 6, 20};
  const std::vector<int32_t> table_a = {0, 1, 2, 3, 4};
  const std::vector<int32_t> table_b = {5, 6, 7};

  // Solo: each sequence alone, prefill then two single-token decode steps.
  auto run_solo = [&](const std::vector<int32_t>& tokens, const std::vector<int32_t>& table) {
    KvCache cache(config, 8, 4);
    std::vector<float> logits;
    SequenceStep prefill{tokens, 0, table, SequenceStep::Logits::kLast};
    EXPECT_TRUE((*model)->Forward({&prefill, 1}, cache, logits).ok());
    int64_t position = static_cast<int64_t>(tokens.size());
    for (int32_t extra : {3, 10}) {
      const std::vector<int32_t> one = {extra};
      SequenceStep next{one, position++, table, SequenceStep::Logits::kLast};
      EXPECT_TRUE((*model)->Forward({&next, 1}, cache, logits).ok());
    }
    return logits;
  };
  const std::vector<float> solo_a = run_solo(a, table_a);
  const std::vector<float> solo_b = run_solo(b, table_b);

  // Batched: both prompts in one call, then both decode steps in one call each.
  KvCache cache(config, 8, 4);
  std::vector<float> batched;
  std::vector<SequenceStep> prefill = {{a, 0, table_a, SequenceStep::Logits::kLast},
                                       {b, 0, table_b, SequenceStep::Logits::kLast}};
  ASSERT_TRUE((*model)->Forward(prefill, cache, batched).ok());
  int64_t pos_a = static_cast<int64_t>(a.size());
  int64_t pos_b = static_cast<int64_t>(b.size());
  for (int32_t extra : {3, 10}) {
    const std::vector<int32_t> one = {extra};
    std::vector<SequenceStep> decode = {{one, pos_a++, table_a, SequenceStep::Logits::kLast},
                                        {one, pos_b++, table_b, SequenceStep::Logits::kLast}};
    ASSERT_TRUE((*model)->Forward(decode, cache, batched).ok());
  }
  const size_t vocab = static_cast<size_t>(config.vocab_size);
  ASSERT_EQ(batched.size(), 6 * vocab);
  for (size_t step = 0; step < 3; ++step) {
    for (size_t v = 0; v < vocab; ++v) {
      ASSERT_NEAR(batched[(2 * step) * vocab + v], solo_a[step * vocab + v], tolerance)
          << "step " << step;
      ASSERT_NEAR(batched[(2 * step + 1) * vocab + v], solo_b[step * vocab + v], tolerance)
          << "step " << step;
    }
  }
}

// With a linear layer whose rows are independent of the batch, everything else in the forward
// pass (norms, rotary embeddings, attention) must give the same bits batched as solo.
TEST(ModelTest, BatchedMatchesSoloBitwise) { ExpectBatchedMatchesSolo(RowByRowFactory(), 0.0f); }

TEST(ModelTest, BatchedMatchesSoloWithGemm) { ExpectBatchedMatchesSolo(Fp32LinearFactory(), 1e-5f); }

TEST(ModelTest, SmallMaxBatchTokensSplitsWithoutChangingLogits) {
  auto checkpoint = RandomCheckpoint(SmallConfig(), 6);
  auto whole = Model::Create(*checkpoint, Fp32LinearFactory());
  auto split = Model::Create(*checkpoint, Fp32LinearFactory(), ModelOptions{.max_batch_tokens = 3});
  ASSERT_TRUE(whole.ok()) << whole.status();
  ASSERT_TRUE(split.ok()) << split.status();
  const std::vector<float> a = RunInPieces(**whole, kPrompt, kPrompt.size(), Iota(5), 4, 5);
  const std::vector<float> b = RunInPieces(**split, kPrompt, kPrompt.size(), Iota(5), 4, 5);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-5) << i;
}

TEST(ModelTest, LogitsModeSelectsRows) {
  auto checkpoint = RandomCheckpoint(SmallConfig(), 7);
  auto model = Model::Create(*checkpoint, Fp32LinearFactory());
  ASSERT_TRUE(model.ok());
  const std::vector<int32_t> table = Iota(5);
  const size_t vocab = static_cast<size_t>((*model)->config().vocab_size);
  for (auto [mode, rows] : {std::pair{SequenceStep::Logits::kNone, size_t{0}},
                            std::pair{SequenceStep::Logits::kLast, size_t{1}},
                            std::pair{SequenceStep::Logits::kAll, kPrompt.size()}}) {
    KvCache cache((*model)->config(), 5, 4);
    std::vector<float> logits;
    SequenceStep step{kPrompt, 0, table, mode};
    ASSERT_TRUE((*model)->Forward({&step, 1}, cache, logits).ok());
    EXPECT_EQ(logits.size(), rows * vocab);
  }
}

TEST(ModelTest, ForwardRejectsInvalidSteps) {
  auto checkpoint = RandomCheckpoint(SmallConfig(), 8);
  auto model = Model::Create(*checkpoint, Fp32LinearFactory());
  ASSERT_TRUE(model.ok());
  KvCache cache((*model)->config(), 4, 4);
  std::vector<float> logits;
  const std::vector<int32_t> table = {0, 1};
  const std::vector<int32_t> bad_token = {1, 40};
  const std::vector<int32_t> nine = Iota(9);
  const std::vector<int32_t> bad_table = {0, 4};
  const std::vector<int32_t> none;

  SequenceStep step{bad_token, 0, table};
  absl::Status status = (*model)->Forward({&step, 1}, cache, logits);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("token id 40"), std::string::npos) << status;

  step = {nine, 0, table};
  status = (*model)->Forward({&step, 1}, cache, logits);
  EXPECT_NE(status.message().find("block table has 2"), std::string::npos) << status;

  step = {std::span<const int32_t>(nine).subspan(0, 5), 0, bad_table};
  status = (*model)->Forward({&step, 1}, cache, logits);
  EXPECT_NE(status.message().find("block id 4"), std::string::npos) << status;

  step = {none, 0, table};
  EXPECT_FALSE((*model)->Forward({&step, 1}, cache, logits).ok());

  KvCache other(SmallConfig(), 4, 4);
  ModelConfig wider = SmallConfig();
  wider.num_hidden_layers = 3;
  KvCache wrong(wider, 4, 4);
  step = {std::span<const int32_t>(nine).subspan(0, 2), 0, table};
  EXPECT_TRUE((*model)->Forward({&step, 1}, other, logits).ok());
  EXPECT_FALSE((*model)->Forward({&step, 1}, wrong, logits).ok());
  EXPECT_EQ(logits.size(), static_cast<size_t>((*model)->config().vocab_size));
}

TEST(ModelTest, FactoryBuildsLayersInOrder) {
  const ModelConfig config = SmallConfig();
  auto checkpoint = RandomCheckpoint(config, 9);
  std::vector<std::string> names;
  LinearFactory fp32 = Fp32LinearFactory();
  LinearFactory recording = [&](const Checkpoint& c, const std::string& name, int64_t out,
                                int64_t in) {
    names.push_back(name);
    return fp32(c, name, out, in);
  };
  auto model = Model::Create(*checkpoint, recording);
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_EQ(names.size(), 7u * 2 + 1);
  EXPECT_EQ(names[0], "model.layers.0.self_attn.q_proj");
  EXPECT_EQ(names[6], "model.layers.0.mlp.down_proj");
  EXPECT_EQ(names[7], "model.layers.1.self_attn.q_proj");
  EXPECT_EQ(names.back(), "lm_head");

  const std::vector<LinearLayerInfo> layers = (*model)->LinearLayers();
  ASSERT_EQ(layers.size(), names.size());
  for (size_t i = 0; i < names.size(); ++i) EXPECT_EQ(layers[i].name, names[i]);
  EXPECT_EQ(layers[4].out_features, config.intermediate_size);
  EXPECT_EQ(layers[4].scheme, "fp32");
  EXPECT_GT((*model)->weight_bytes(), 0u);
}

TEST(ModelTest, CreateRejectsFactoryShapeMismatch) {
  auto checkpoint = RandomCheckpoint(SmallConfig(), 10);
  LinearFactory wrong = [](const Checkpoint&, const std::string&, int64_t out, int64_t in)
      -> absl::StatusOr<std::unique_ptr<LinearLayer>> {
    return MakeFp32Linear(std::vector<float>(static_cast<size_t>((out + 1) * in)), out + 1, in);
  };
  auto model = Model::Create(*checkpoint, wrong);
  ASSERT_FALSE(model.ok());
  EXPECT_NE(model.status().message().find("model.layers.0.self_attn.q_proj"), std::string::npos)
      << model.status();
}

TEST(ModelTest, CreateReportsMissingTensor) {
  auto checkpoint = RandomCheckpoint(SmallConfig(), 11);
  checkpoint->Remove("model.layers.1.post_attention_layernorm.weight");
  auto model = Model::Create(*checkpoint, Fp32LinearFactory());
  ASSERT_FALSE(model.ok());
  EXPECT_NE(model.status().message().find("post_attention_layernorm"), std::string::npos)
      << model.status();
}

}  // namespace
}  // namespace w8a8
