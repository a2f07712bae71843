// The LLaMA forward pass over a batch of sequences with a paged KV cache.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/checkpoint.h"
#include "core/linear.h"
#include "core/model_config.h"
#include "kernels/gemm_bf16.h"

namespace w8a8 {

// Keys and values of every layer in fixed-size blocks. A sequence owns a list of block ids
// (its block table); position p of the sequence lives in block table[p / block_size] at slot
// p % block_size. The cache does not allocate blocks to sequences: the caller does.
class KvCache {
 public:
  KvCache(const ModelConfig& config, int64_t num_blocks, int64_t block_size);

  static size_t BytesPerBlock(const ModelConfig& config, int64_t block_size);

  int64_t num_layers() const { return num_layers_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  int64_t floats_per_block() const { return block_floats_; }  // Of keys (or values), per layer.
  // Layout per layer and block: [kv_head][block_size][head_dim].
  float* keys(int64_t layer, int64_t block);
  float* values(int64_t layer, int64_t block);
  const float* keys(int64_t layer, int64_t block) const;
  const float* values(int64_t layer, int64_t block) const;

 private:
  int64_t num_layers_;
  int64_t num_blocks_;
  int64_t block_size_;
  int64_t block_floats_;  // kv_heads * block_size * head_dim
  std::vector<float> keys_;
  std::vector<float> values_;
};

// One sequence's share of a forward step.
struct SequenceStep {
  std::span<const int32_t> tokens;       // New tokens, at positions start_position...
  int64_t start_position = 0;            // Tokens of this sequence already in the cache.
  std::span<const int32_t> block_table;  // Must cover start_position + tokens.size() positions.
  // Which logits to return: none (a middle prompt chunk), the last token's, or every token's.
  enum class Logits { kNone, kLast, kAll } logits = Logits::kLast;
};

struct ModelOptions {
  // Maximum tokens of one forward call; longer batches are split internally.
  int64_t max_batch_tokens = 512;
};

struct LinearLayerInfo {
  std::string name;  // "model.layers.0.mlp.down_proj"
  int64_t out_features;
  int64_t in_features;
  std::string scheme;
  size_t weight_bytes;
};

class Model {
 public:
  ~Model();

  // Loads norms and embeddings as FP32 and builds every linear layer through `factory`,
  // layer by layer.
  static absl::StatusOr<std::unique_ptr<Model>> Create(const Checkpoint& checkpoint,
                                                       const LinearFactory& factory,
                                                       const ModelOptions& options = {});

  // Runs the new tokens of every sequence in `batch` through the model, writes their keys and
  // values into `cache`, and appends the requested logits (vocab_size floats per row, in batch
  // order) to `logits`. Sequences attend only to their own tokens. A sequence may appear only
  // once per batch. Blocks until done and uses OpenMP worker threads. Safe to call from
  // several threads with distinct caches. Fails without touching the cache when a step has no
  // tokens, a token id outside the vocabulary, or a block table too short for its positions.
  // NOTE: positions past config().max_position_embeddings are not rejected; callers bound them.
  absl::Status Forward(std::span<const SequenceStep> batch, KvCache& cache,
                       std::vector<float>& logits) const;

  const ModelConfig& config() const { return config_; }
  std::vector<LinearLayerInfo> LinearLayers() const;
  size_t weight_bytes() const;
  // Bytes of the embedding matrix, included in weight_bytes().
  size_t embedding_bytes() const;

 private:
  Model() = default;
  struct Layer;
  struct ChunkStep;
  absl::Status ValidateBatch(std::span<const SequenceStep> batch, const KvCache& cache) const;
  // Runs at most max_batch_tokens tokens through every layer.
  void RunChunk(std::span<const ChunkStep> steps, KvCache& cache, std::vector<float>& logits) const;

  ModelConfig config_;
  // [vocab, hidden] in exactly one of two forms: BF16 when the checkpoint stores it in BF16
  // (which halves its memory and the bytes a tied lm_head reads), else FP32.
  std::vector<float> embedding_;
  kernels::Bf16Matrix embedding_bf16_;
  std::vector<float> final_norm_;
  // With tied embeddings, lm_head_ reads embedding_ and reports 0 weight bytes of its own.
  std::unique_ptr<LinearLayer> lm_head_;
  std::vector<std::unique_ptr<Layer>> layers_;
  std::vector<float> rope_inv_freq_;  // head_dim / 2 inverse frequencies after rope scaling.
  ModelOptions options_;
};

// Inverse rotary frequencies theta^(-2i/d) for i < d/2, with Llama 3 scaling applied when set.
std::vector<float> RopeInverseFrequencies(const ModelConfig& config);

}  // namespace w8a8
