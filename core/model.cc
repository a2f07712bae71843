#include "core/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "kernels/attention.h"
#include "kernels/fused.h"
#include "kernels/gemm.h"
#include "kernels/gemm_bf16.h"
#include "kernels/parallel.h"

namespace w8a8 {

// ---------------------------------------------------------------------------------------------
// KvCache

KvCache::KvCache(const ModelConfig& config, int64_t num_blocks, int64_t block_size)
    : num_layers_(config.num_hidden_layers),
      num_blocks_(num_blocks),
      block_size_(block_size),
      block_floats_(config.num_key_value_heads * block_size * config.head_dim),
      keys_(static_cast<size_t>(num_layers_ * num_blocks_ * block_floats_)),
      values_(static_cast<size_t>(num_layers_ * num_blocks_ * block_floats_)) {}

size_t KvCache::BytesPerBlock(const ModelConfig& config, int64_t block_size) {
  // Keys and values of every layer.
  return static_cast<size_t>(2 * config.num_hidden_layers * config.num_key_value_heads *
                             block_size * config.head_dim) *
         sizeof(float);
}

float* KvCache::keys(int64_t layer, int64_t block) {
  return keys_.data() + (layer * num_blocks_ + block) * block_floats_;
}
float* KvCache::values(int64_t layer, int64_t block) {
  return values_.data() + (layer * num_blocks_ + block) * block_floats_;
}
const float* KvCache::keys(int64_t layer, int64_t block) const {
  return keys_.data() + (layer * num_blocks_ + block) * block_floats_;
}
const float* KvCache::values(int64_t layer, int64_t block) const {
  return values_.data() + (layer * num_blocks_ + block) * block_floats_;
}

// ---------------------------------------------------------------------------------------------
// Rotary embeddings

std::vector<float> RopeInverseFrequencies(const ModelConfig& config) {
  const int64_t half = config.head_dim / 2;
  std::vector<float> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    double freq = 1.0 / std::pow(config.rope_theta, static_cast<double>(2 * i) /
                                                        static_cast<double>(config.head_dim));
    if (config.rope_scaling.has_value()) {
      // Llama 3.1 scaling: long wavelengths are stretched by `factor`, short ones kept, and the
      // band between is interpolated linearly in original_max / wavelength.
      const Llama3RopeScaling& scaling = *config.rope_scaling;
      const double original_max = static_cast<double>(scaling.original_max_position_embeddings);
      const double wavelen = 2.0 * std::numbers::pi / freq;
      const double low_freq_wavelen = original_max / scaling.low_freq_factor;
      const double high_freq_wavelen = original_max / scaling.high_freq_factor;
      if (wavelen > low_freq_wavelen) {
        freq = freq / scaling.factor;
      } else if (wavelen >= high_freq_wavelen) {
        const double smooth = (original_max / wavelen - scaling.low_freq_factor) /
                              (scaling.high_freq_factor - scaling.low_freq_factor);
        freq = (1.0 - smooth) * freq / scaling.factor + smooth * freq;
      }
    }
    inv_freq[static_cast<size_t>(i)] = static_cast<float>(freq);
  }
  return inv_freq;
}

namespace {

// Rotates each head of `row` (num_heads * head_dim floats) by `position` in the Hugging Face
// half-split layout: element i pairs with element i + head_dim / 2.
void ApplyRope(float* row, int64_t num_heads, int64_t head_dim, int64_t position,
               const std::vector<float>& inv_freq) {
  const int64_t half = head_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    // The angle is a float product as in Transformers, so long positions round the same way.
    const float angle = static_cast<float>(position) * inv_freq[static_cast<size_t>(i)];
    const float cos = std::cos(angle);
    const float sin = std::sin(angle);
    for (int64_t h = 0; h < num_heads; ++h) {
      float* head = row + h * head_dim;
      const float x0 = head[i];
      const float x1 = head[i + half];
      head[i] = x0 * cos - x1 * sin;
      head[i + half] = x1 * cos + x0 * sin;
    }
  }
}

// out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight, in float, row by row.
void RmsNorm(const float* x, const float* weight, int64_t rows, int64_t dim, float eps,
             float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* in_row = x + r * dim;
    float* out_row = out + r * dim;
    float sum_squares = 0.0f;
    for (int64_t i = 0; i < dim; ++i) sum_squares += in_row[i] * in_row[i];
    const float inv_rms = 1.0f / std::sqrt(sum_squares / static_cast<float>(dim) + eps);
    for (int64_t i = 0; i < dim; ++i) out_row[i] = weight[i] * (in_row[i] * inv_rms);
  }
}

// The output projection of a model with tied embeddings: reads the embedding matrix that the
// model owns instead of keeping a second copy of [vocab, hidden] floats.
class TiedLmHead final : public LinearLayer {
 public:
  // Exactly one of `embedding` and `embedding_bf16` is non-empty.
  TiedLmHead(const std::vector<float>& embedding, const kernels::Bf16Matrix& embedding_bf16,
             int64_t vocab_size, int64_t hidden_size)
      : embedding_(embedding),
        embedding_bf16_(embedding_bf16),
        vocab_size_(vocab_size),
        hidden_size_(hidden_size) {}

  void Forward(const float* x, int64_t m, float* y) const override {
    if (!embedding_bf16_.empty()) {
      embedding_bf16_.Multiply(x, m, y);
    } else {
      kernels::GemmF32(x, embedding_.data(), y, m, vocab_size_, hidden_size_);
    }
  }
  int64_t in_features() const override { return hidden_size_; }
  int64_t out_features() const override { return vocab_size_; }
  std::string scheme() const override { return "fp32"; }
  size_t weight_bytes() const override { return 0; }  // Counted with the embedding.

 private:
  const std::vector<float>& embedding_;
  const kernels::Bf16Matrix& embedding_bf16_;
  int64_t vocab_size_;
  int64_t hidden_size_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Model

struct Model::Layer {
  std::vector<float> input_norm;           // input_layernorm.weight [hidden]
  std::vector<float> post_attention_norm;  // post_attention_layernorm.weight [hidden]
  std::unique_ptr<LinearLayer> q_proj;
  std::unique_ptr<LinearLayer> k_proj;
  std::unique_ptr<LinearLayer> v_proj;
  std::unique_ptr<LinearLayer> o_proj;
  std::unique_ptr<LinearLayer> gate_proj;
  std::unique_ptr<LinearLayer> up_proj;
  std::unique_ptr<LinearLayer> down_proj;
};

// A slice of one SequenceStep that fits into a forward chunk.
struct Model::ChunkStep {
  std::span<const int32_t> tokens;
  int64_t start_position;
  std::span<const int32_t> block_table;
  SequenceStep::Logits logits;
};

Model::~Model() = default;

namespace {

absl::StatusOr<std::unique_ptr<LinearLayer>> BuildLinear(const Checkpoint& checkpoint,
                                                         const LinearFactory& factory,
                                                         const std::string& name,
                                                         int64_t out_features,
                                                         int64_t in_features,
                                                         bool shared_embedding = false) {
  ASSIGN_OR_RETURN(std::unique_ptr<LinearLayer> layer,
                   factory(checkpoint, name, out_features, in_features));
  // A full-precision output projection that is the embedding is served from the embedding.
  if (layer == nullptr && shared_embedding) return layer;
  if (layer == nullptr) {
    return absl::InternalError(
        absl::StrCat("The linear factory returned no layer for '", name, "'."));
  }
  if (layer->out_features() != out_features || layer->in_features() != in_features) {
    return absl::InternalError(absl::StrCat(
        "The linear factory built '", name, "' with shape [", layer->out_features(), ", ",
        layer->in_features(), "], expected [", out_features, ", ", in_features, "]."));
  }
  return layer;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> Model::Create(const Checkpoint& checkpoint,
                                                     const LinearFactory& factory,
                                                     const ModelOptions& options) {
  const ModelConfig& config = checkpoint.config();
  RETURN_IF_ERROR(config.Validate());
  if (config.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("head_dim ", config.head_dim, " in ", checkpoint.path().string(),
                     " is odd; rotary embeddings need an even head_dim."));
  }
  if (options.max_batch_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ModelOptions.max_batch_tokens is ", options.max_batch_tokens, "; it must be >= 1."));
  }

  auto model = std::unique_ptr<Model>(new Model());
  model->config_ = config;
  model->options_ = options;
  const int64_t hidden = config.hidden_size;
  const int64_t q_features = config.num_attention_heads * config.head_dim;
  const int64_t kv_features = config.num_key_value_heads * config.head_dim;

  // A BF16 embedding stays BF16. BF16 widens to FP32 exactly, so lookups lose nothing.
  const std::string embedding_name = "model.embed_tokens.weight";
  ASSIGN_OR_RETURN(const TensorView embedding_view, checkpoint.Tensor(embedding_name));
  if (embedding_view.dtype == DType::kBF16 &&
      embedding_view.shape == std::vector<int64_t>{config.vocab_size, hidden}) {
    model->embedding_bf16_ = kernels::Bf16Matrix(embedding_view.data, config.vocab_size, hidden);
  } else {
    ASSIGN_OR_RETURN(model->embedding_,
                     checkpoint.LoadFloat32(embedding_name, {config.vocab_size, hidden}));
  }
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const std::string prefix = absl::StrCat("model.layers.", l, ".");
    auto layer = std::make_unique<Layer>();
    ASSIGN_OR_RETURN(layer->input_norm,
                     checkpoint.LoadFloat32(prefix + "input_layernorm.weight", {hidden}));
    ASSIGN_OR_RETURN(layer->post_attention_norm,
                     checkpoint.LoadFloat32(prefix + "post_attention_layernorm.weight", {hidden}));
    ASSIGN_OR_RETURN(layer->q_proj, BuildLinear(checkpoint, factory, prefix + "self_attn.q_proj",
                                                q_features, hidden));
    ASSIGN_OR_RETURN(layer->k_proj, BuildLinear(checkpoint, factory, prefix + "self_attn.k_proj",
                                                kv_features, hidden));
    ASSIGN_OR_RETURN(layer->v_proj, BuildLinear(checkpoint, factory, prefix + "self_attn.v_proj",
                                                kv_features, hidden));
    ASSIGN_OR_RETURN(layer->o_proj, BuildLinear(checkpoint, factory, prefix + "self_attn.o_proj",
                                                hidden, q_features));
    ASSIGN_OR_RETURN(layer->gate_proj, BuildLinear(checkpoint, factory, prefix + "mlp.gate_proj",
                                                   config.intermediate_size, hidden));
    ASSIGN_OR_RETURN(layer->up_proj, BuildLinear(checkpoint, factory, prefix + "mlp.up_proj",
                                                 config.intermediate_size, hidden));
    ASSIGN_OR_RETURN(layer->down_proj, BuildLinear(checkpoint, factory, prefix + "mlp.down_proj",
                                                   hidden, config.intermediate_size));
    model->layers_.push_back(std::move(layer));
  }
  ASSIGN_OR_RETURN(model->final_norm_, checkpoint.LoadFloat32("model.norm.weight", {hidden}));

  const bool shared_embedding = IsSharedLmHead(checkpoint, "lm_head");
  ASSIGN_OR_RETURN(model->lm_head_, BuildLinear(checkpoint, factory, "lm_head", config.vocab_size,
                                                hidden, shared_embedding));
  if (model->lm_head_ == nullptr) {
    model->lm_head_ = std::make_unique<TiedLmHead>(model->embedding_, model->embedding_bf16_,
                                                   config.vocab_size, hidden);
  }
  model->rope_inv_freq_ = RopeInverseFrequencies(config);
  // GGUF files carry Llama 3 rope scaling as per-frequency divisors instead of rope_scaling.
  if (const std::optional<TensorView> factors = checkpoint.rope_frequency_factors();
      factors.has_value() && !config.rope_scaling.has_value()) {
    ASSIGN_OR_RETURN(const std::vector<float> divisors, ToFloat32(*factors));
    if (divisors.size() != model->rope_inv_freq_.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          checkpoint.path().string(), ": rope_freqs.weight has ", divisors.size(),
          " values, but head_dim / 2 is ", model->rope_inv_freq_.size()));
    }
    for (size_t i = 0; i < divisors.size(); ++i) {
      if (!std::isfinite(divisors[i]) || divisors[i] <= 0.0f) {
        return absl::InvalidArgumentError(absl::StrCat(
            checkpoint.path().string(), ": rope_freqs.weight[", i, "] is ", divisors[i],
            "; every frequency factor must be a positive finite number"));
      }
      model->rope_inv_freq_[i] = static_cast<float>(
          static_cast<double>(model->rope_inv_freq_[i]) / static_cast<double>(divisors[i]));
    }
  }
  return model;
}

std::vector<LinearLayerInfo> Model::LinearLayers() const {
  std::vector<LinearLayerInfo> infos;
  auto add = [&infos](std::string name, const LinearLayer& layer) {
    infos.push_back({std::move(name), layer.out_features(), layer.in_features(), layer.scheme(),
                     layer.weight_bytes()});
  };
  for (size_t l = 0; l < layers_.size(); ++l) {
    const std::string prefix = absl::StrCat("model.layers.", l, ".");
    const Layer& layer = *layers_[l];
    add(prefix + "self_attn.q_proj", *layer.q_proj);
    add(prefix + "self_attn.k_proj", *layer.k_proj);
    add(prefix + "self_attn.v_proj", *layer.v_proj);
    add(prefix + "self_attn.o_proj", *layer.o_proj);
    add(prefix + "mlp.gate_proj", *layer.gate_proj);
    add(prefix + "mlp.up_proj", *layer.up_proj);
    add(prefix + "mlp.down_proj", *layer.down_proj);
  }
  add("lm_head", *lm_head_);
  return infos;
}

size_t Model::embedding_bytes() const {
  return embedding_.size() * sizeof(float) + embedding_bf16_.bytes();
}

size_t Model::weight_bytes() const {
  size_t bytes = embedding_bytes() + final_norm_.size() * sizeof(float);
  for (const LinearLayerInfo& info : LinearLayers()) bytes += info.weight_bytes;
  for (const auto& layer : layers_) {
    bytes += (layer->input_norm.size() + layer->post_attention_norm.size()) * sizeof(float);
  }
  return bytes;
}

absl::Status Model::ValidateBatch(std::span<const SequenceStep> batch,
                                  const KvCache& cache) const {
  if (cache.num_layers() != config_.num_hidden_layers ||
      cache.floats_per_block() !=
          config_.num_key_value_heads * cache.block_size() * config_.head_dim) {
    return absl::InvalidArgumentError(
        "The KV cache was built for another model configuration; construct it from this "
        "model's config().");
  }
  for (size_t s = 0; s < batch.size(); ++s) {
    const SequenceStep& step = batch[s];
    if (step.tokens.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("Sequence ", s, " of the batch has no tokens; every step needs >= 1."));
    }
    if (step.start_position < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Sequence ", s, " has start_position ", step.start_position, "; it must be >= 0."));
    }
    for (const int32_t token : step.tokens) {
      if (token < 0 || token >= config_.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("Sequence ", s, " has token id ", token,
                                                       " outside the vocabulary [0, ",
                                                       config_.vocab_size, ")."));
      }
    }
    const int64_t end = step.start_position + static_cast<int64_t>(step.tokens.size());
    const int64_t blocks_needed = (end + cache.block_size() - 1) / cache.block_size();
    if (static_cast<int64_t>(step.block_table.size()) < blocks_needed) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Sequence ", s, " reaches position ", end - 1, ", which needs ", blocks_needed,
          " blocks of ", cache.block_size(), ", but its block table has ",
          step.block_table.size(), "."));
    }
    for (int64_t b = 0; b < blocks_needed; ++b) {
      const int32_t block = step.block_table[static_cast<size_t>(b)];
      if (block < 0 || block >= cache.num_blocks()) {
        return absl::InvalidArgumentError(absl::StrCat("Sequence ", s, " has block id ", block,
                                                       " outside the cache's [0, ",
                                                       cache.num_blocks(), ")."));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status Model::Forward(std::span<const SequenceStep> batch, KvCache& cache,
                            std::vector<float>& logits) const {
  RETURN_IF_ERROR(ValidateBatch(batch, cache));

  // Cut the batch into chunks of at most max_batch_tokens tokens. A sequence split over two
  // chunks finds its earlier tokens in the cache, which the first chunk has written.
  std::vector<ChunkStep> chunk;
  int64_t chunk_tokens = 0;
  for (const SequenceStep& step : batch) {
    const int64_t size = static_cast<int64_t>(step.tokens.size());
    int64_t offset = 0;
    while (offset < size) {
      const int64_t take = std::min(size - offset, options_.max_batch_tokens - chunk_tokens);
      const bool last_piece = offset + take == size;
      SequenceStep::Logits wanted = step.logits;
      if (!last_piece && wanted == SequenceStep::Logits::kLast) wanted = SequenceStep::Logits::kNone;
      chunk.push_back({step.tokens.subspan(static_cast<size_t>(offset), static_cast<size_t>(take)),
                       step.start_position + offset, step.block_table, wanted});
      offset += take;
      chunk_tokens += take;
      if (chunk_tokens == options_.max_batch_tokens) {
        RunChunk(chunk, cache, logits);
        chunk.clear();
        chunk_tokens = 0;
      }
    }
  }
  if (!chunk.empty()) RunChunk(chunk, cache, logits);
  return absl::OkStatus();
}

namespace {

// A range of one sequence's tokens whose attention runs as one work item.
struct AttentionItem {
  int64_t step;
  int64_t first_token;     // Index into the chunk's tokens.
  int64_t first_position;  // Position of that token in its sequence.
  int64_t tokens;
};

// The activations of one forward chunk. RunChunk keeps one set per thread and resizes it per
// chunk, which keeps the capacity, so steady decoding and repeated prefills allocate nothing.
struct ChunkBuffers {
  std::vector<int64_t> token_step;
  std::vector<int64_t> token_position;
  std::vector<AttentionItem> attention_items;
  std::vector<float> x, normed, q, k, v, attention, residual, gate, up, selected;
  std::vector<int8_t> quantized;
  std::vector<float> quantized_scales;
  std::vector<int64_t> rows;
};

}  // namespace

void Model::RunChunk(std::span<const ChunkStep> steps, KvCache& cache,
                     std::vector<float>& logits) const {
  const int64_t hidden = config_.hidden_size;
  const int64_t head_dim = config_.head_dim;
  const int64_t num_heads = config_.num_attention_heads;
  const int64_t num_kv_heads = config_.num_key_value_heads;
  const int64_t q_features = num_heads * head_dim;
  const int64_t kv_features = num_kv_heads * head_dim;
  const int64_t intermediate = config_.intermediate_size;
  const int64_t block_size = cache.block_size();
  const float eps = static_cast<float>(config_.rms_norm_eps);
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));

  // Every buffer is reused from the previous chunk on this thread.
  thread_local ChunkBuffers buffers;
  // Per-token bookkeeping: which step a token belongs to and its position in its sequence.
  std::vector<int64_t>& token_step = buffers.token_step;
  std::vector<int64_t>& token_position = buffers.token_position;
  token_step.clear();
  token_position.clear();
  for (size_t s = 0; s < steps.size(); ++s) {
    for (size_t i = 0; i < steps[s].tokens.size(); ++i) {
      token_step.push_back(static_cast<int64_t>(s));
      token_position.push_back(steps[s].start_position + static_cast<int64_t>(i));
    }
  }
  const int64_t num_tokens = static_cast<int64_t>(token_step.size());

  // Attention work items: each step's tokens in ranges of at most kAttentionTokens, so a long
  // prompt spreads over threads. The causal cost grows along a prompt, so threads take ranges
  // dynamically.
  constexpr int64_t kAttentionTokens = 32;
  std::vector<AttentionItem>& attention_items = buffers.attention_items;
  attention_items.clear();
  // Multiply-adds of the scores (as many again for the values), at most: tokens x context x
  // heads x head_dim. Small batches of short contexts run on the calling thread.
  int64_t attention_work = 0;
  for (int64_t s = 0, first_token = 0; s < static_cast<int64_t>(steps.size()); ++s) {
    const ChunkStep& step = steps[static_cast<size_t>(s)];
    const int64_t count = static_cast<int64_t>(step.tokens.size());
    for (int64_t t = 0; t < count; t += kAttentionTokens) {
      const int64_t tokens = std::min(kAttentionTokens, count - t);
      attention_items.push_back({s, first_token + t, step.start_position + t, tokens});
      attention_work += tokens * (step.start_position + t + tokens) * num_heads * head_dim;
    }
    first_token += count;
  }
  const kernels::Isa isa = kernels::ActiveIsa();
  const kernels::AttentionShape attention_shape{num_heads, num_kv_heads, head_dim, scale};

  auto sized = [](auto& buffer, int64_t size) -> auto& {
    buffer.resize(static_cast<size_t>(size));
    return buffer;
  };
  std::vector<float>& x = sized(buffers.x, num_tokens * hidden);
  std::vector<float>& normed = sized(buffers.normed, num_tokens * hidden);
  std::vector<float>& q = sized(buffers.q, num_tokens * q_features);
  std::vector<float>& k = sized(buffers.k, num_tokens * kv_features);
  std::vector<float>& v = sized(buffers.v, num_tokens * kv_features);
  std::vector<float>& attention = sized(buffers.attention, num_tokens * q_features);
  std::vector<float>& residual = sized(buffers.residual, num_tokens * hidden);
  std::vector<float>& gate = sized(buffers.gate, num_tokens * intermediate);
  // Int8 activations for layers that take them: the normed input of q/k/v and gate/up, or the
  // SwiGLU product for down_proj, quantized by a fused kernel in the same pass.
  std::vector<int8_t>& quantized =
      sized(buffers.quantized, num_tokens * std::max(hidden, intermediate));
  std::vector<float>& quantized_scales = sized(buffers.quantized_scales, num_tokens);
  std::vector<float>& up = sized(buffers.up, num_tokens * intermediate);

  for (int64_t t = 0; t < num_tokens; ++t) {
    const ChunkStep& step = steps[static_cast<size_t>(token_step[t])];
    const int32_t token = step.tokens[static_cast<size_t>(token_position[t] - step.start_position)];
    if (!embedding_bf16_.empty()) {
      embedding_bf16_.Row(token, x.data() + t * hidden);
    } else {
      std::memcpy(x.data() + t * hidden, embedding_.data() + token * hidden,
                  static_cast<size_t>(hidden) * sizeof(float));
    }
  }

  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& layer = *layers_[l];
    const int64_t layer_index = static_cast<int64_t>(l);

    if (layer.q_proj->takes_int8_per_token() && layer.k_proj->takes_int8_per_token() &&
        layer.v_proj->takes_int8_per_token()) {
      kernels::RmsNormQuantize(x.data(), layer.input_norm.data(), eps, num_tokens, hidden,
                               quantized.data(), quantized_scales.data());
      layer.q_proj->ForwardQuantized(quantized.data(), quantized_scales.data(), num_tokens,
                                     q.data());
      layer.k_proj->ForwardQuantized(quantized.data(), quantized_scales.data(), num_tokens,
                                     k.data());
      layer.v_proj->ForwardQuantized(quantized.data(), quantized_scales.data(), num_tokens,
                                     v.data());
    } else {
      RmsNorm(x.data(), layer.input_norm.data(), num_tokens, hidden, eps, normed.data());
      layer.q_proj->Forward(normed.data(), num_tokens, q.data());
      layer.k_proj->Forward(normed.data(), num_tokens, k.data());
      layer.v_proj->Forward(normed.data(), num_tokens, v.data());
    }

    // Rotate q and k, then store k and v at each token's slot before any token attends, so a
    // prompt's tokens see each other.
    for (int64_t t = 0; t < num_tokens; ++t) {
      const int64_t position = token_position[t];
      ApplyRope(q.data() + t * q_features, num_heads, head_dim, position, rope_inv_freq_);
      ApplyRope(k.data() + t * kv_features, num_kv_heads, head_dim, position, rope_inv_freq_);
      const ChunkStep& step = steps[static_cast<size_t>(token_step[t])];
      const int64_t block = step.block_table[static_cast<size_t>(position / block_size)];
      const int64_t slot = position % block_size;
      float* key_block = cache.keys(layer_index, block);
      float* value_block = cache.values(layer_index, block);
      for (int64_t g = 0; g < num_kv_heads; ++g) {
        std::memcpy(key_block + (g * block_size + slot) * head_dim,
                    k.data() + t * kv_features + g * head_dim,
                    static_cast<size_t>(head_dim) * sizeof(float));
        std::memcpy(value_block + (g * block_size + slot) * head_dim,
                    v.data() + t * kv_features + g * head_dim,
                    static_cast<size_t>(head_dim) * sizeof(float));
      }
    }

    // Causal grouped-query attention. Work items are (sequence, KV head, range of tokens);
    // each item's arithmetic does not depend on the rest of the batch.
    const kernels::PagedKv layer_kv_base{cache.keys(layer_index, 0), cache.values(layer_index, 0),
                                         cache.floats_per_block(), block_size, nullptr};
    const int64_t items = static_cast<int64_t>(attention_items.size()) * num_kv_heads;
    kernels::ParallelForDynamic(items, attention_work >= kernels::kMinThreadedMacs,
                                [&](int64_t item) {
      const AttentionItem& range = attention_items[static_cast<size_t>(item / num_kv_heads)];
      kernels::PagedKv kv = layer_kv_base;
      kv.block_table = steps[static_cast<size_t>(range.step)].block_table.data();
      kernels::CausalAttentionKvHead(isa, attention_shape, kv, item % num_kv_heads,
                                     q.data() + range.first_token * q_features, q_features,
                                     range.tokens, range.first_position,
                                     attention.data() + range.first_token * q_features,
                                     q_features);
    });

    layer.o_proj->Forward(attention.data(), num_tokens, residual.data());
    for (size_t i = 0; i < x.size(); ++i) x[i] += residual[i];

    // SwiGLU MLP: down(silu(gate(h)) * up(h)).
    if (layer.gate_proj->takes_int8_per_token() && layer.up_proj->takes_int8_per_token()) {
      kernels::RmsNormQuantize(x.data(), layer.post_attention_norm.data(), eps, num_tokens,
                               hidden, quantized.data(), quantized_scales.data());
      layer.gate_proj->ForwardQuantized(quantized.data(), quantized_scales.data(), num_tokens,
                                        gate.data());
      layer.up_proj->ForwardQuantized(quantized.data(), quantized_scales.data(), num_tokens,
                                      up.data());
    } else {
      RmsNorm(x.data(), layer.post_attention_norm.data(), num_tokens, hidden, eps,
              normed.data());
      layer.gate_proj->Forward(normed.data(), num_tokens, gate.data());
      layer.up_proj->Forward(normed.data(), num_tokens, up.data());
    }
    if (layer.down_proj->takes_int8_per_token()) {
      kernels::SiluMulQuantize(gate.data(), up.data(), num_tokens, intermediate,
                               quantized.data(), quantized_scales.data());
      layer.down_proj->ForwardQuantized(quantized.data(), quantized_scales.data(), num_tokens,
                                        residual.data());
    } else {
      for (size_t i = 0; i < gate.size(); ++i) {
        gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
      }
      layer.down_proj->Forward(gate.data(), num_tokens, residual.data());
    }
    for (size_t i = 0; i < x.size(); ++i) x[i] += residual[i];
  }

  // Final norm and lm_head only for the rows whose logits were requested.
  std::vector<int64_t>& rows = buffers.rows;
  rows.clear();
  for (int64_t t = 0; t < num_tokens; ++t) {
    const ChunkStep& step = steps[static_cast<size_t>(token_step[t])];
    const bool last = token_position[t] ==
                      step.start_position + static_cast<int64_t>(step.tokens.size()) - 1;
    if (step.logits == SequenceStep::Logits::kAll ||
        (step.logits == SequenceStep::Logits::kLast && last)) {
      rows.push_back(t);
    }
  }
  if (rows.empty()) return;
  std::vector<float>& selected =
      sized(buffers.selected, static_cast<int64_t>(rows.size()) * hidden);
  for (size_t r = 0; r < rows.size(); ++r) {
    RmsNorm(x.data() + rows[r] * hidden, final_norm_.data(), 1, hidden, eps,
            selected.data() + r * static_cast<size_t>(hidden));
  }
  const size_t offset = logits.size();
  logits.resize(offset + rows.size() * static_cast<size_t>(config_.vocab_size));
  lm_head_->Forward(selected.data(), static_cast<int64_t>(rows.size()), logits.data() + offset);
}

}  // namespace w8a8
