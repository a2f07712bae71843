// A linear layer y = x W^T behind one interface, whatever its weights are stored as.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace w8a8 {

class Checkpoint;

class LinearLayer {
 public:
  virtual ~LinearLayer() = default;
  // y[m, out_features] = x[m, in_features] * W^T, row-major. Quantized layers quantize x on the
  // fly. Thread-safe, because a layer has no mutable state.
  virtual void Forward(const float* x, int64_t m, float* y) const = 0;
  virtual int64_t in_features() const = 0;
  virtual int64_t out_features() const = 0;
  // "fp32", "per-channel", "per-group" or "per-tensor".
  virtual std::string scheme() const = 0;
  virtual size_t weight_bytes() const = 0;

  // Whether Forward quantizes its input to int8 with one scale per row. A caller with
  // activations already quantized that way (by a fused kernel) calls ForwardQuantized instead
  // and saves a pass over memory.
  virtual bool takes_int8_per_token() const { return false; }
  // y = x W^T for x given as int8 rows `xq` [m, in_features] with x[i] = xq[i] * scales[i].
  // The default dequantizes and calls Forward.
  virtual void ForwardQuantized(const int8_t* xq, const float* scales, int64_t m,
                                float* y) const;
};

// FP32 weights [out_features, in_features], row-major.
std::unique_ptr<LinearLayer> MakeFp32Linear(std::vector<float> weight, int64_t out_features,
                                            int64_t in_features);

// Builds the unquantized layer `name` from the checkpoint tensor `tensor_name` of shape
// [out_features, in_features]. A BF16 "lm_head" stays BF16 (kernels::Bf16Matrix): a decode
// step reads half the bytes of FP32, and BF16 widens to FP32 exactly. Its scheme is "fp32",
// like every unquantized layer. Other layers and other dtypes load as FP32, because the BF16
// product is measured against GemmF32 only on the output projection.
absl::StatusOr<std::unique_ptr<LinearLayer>> LoadUnquantizedLinear(const Checkpoint& checkpoint,
                                                                   const std::string& name,
                                                                   const std::string& tensor_name,
                                                                   int64_t out_features,
                                                                   int64_t in_features);

// Builds the linear layer `name` ("model.layers.0.self_attn.q_proj", without ".weight") of
// shape [out_features, in_features] from a checkpoint. The model calls it once per layer, in
// order, so a factory can stream from a memory-mapped source. For "lm_head" of a checkpoint
// whose output projection is the embedding (tied, or no lm_head.weight), a factory that keeps
// it in full precision returns nullptr: the model then reads its own FP32 embedding instead of
// holding a second copy. A factory that quantizes it builds it from the embedding.
using LinearFactory = std::function<absl::StatusOr<std::unique_ptr<LinearLayer>>(
    const Checkpoint& checkpoint, const std::string& name, int64_t out_features,
    int64_t in_features)>;

// Loads the weight as FP32 and keeps it in full precision.
LinearFactory Fp32LinearFactory();

// Whether `name` is "lm_head" and the checkpoint has no lm_head.weight of its own, so that the
// output projection is the embedding matrix.
bool IsSharedLmHead(const Checkpoint& checkpoint, const std::string& name);

}  // namespace w8a8
