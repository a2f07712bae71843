// Internal to the kernels: Int8Matmul with per-channel weight scales through oneDNN's int8
// matmul primitive.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "absl/status/statusor.h"
#include "kernels/gemm.h"

namespace w8a8::kernels::internal {

// oneDNN 2.6 multiplies the activations, shifted to unsigned bytes x + 128, by s8 weights into
// int32 sums. vpdpbusd takes unsigned activations natively, so oneDNN needs no compensation
// buffer of its own beside the weights, with or without AMX. A pass over y then adds -128 times
// each weight row's sum and applies the weight and activation scales, with the same FP32
// rounding as the packed loop and the reference. Primitives are created on first use for each
// m and cached (thread-safe).
class OneDnnInt8Matmul : public Int8Matmul {
 public:
  // Returns false when oneDNN has only its reference implementation for m rows of these
  // weights. With AMX and s8 activations, oneDNN 2.6 did so for up to 5 rows on the narrow
  // matrices tried (50 to 100 columns). Creates and caches the primitive for m.
  virtual bool Accelerated(int64_t m) const = 0;
  // Returns true when the matmul reads the buffer passed as `shared_layout` to
  // CreateOneDnnInt8Matmul instead of a copy of its own.
  virtual bool SharesWeights() const = 0;
};

// The weights take the layout oneDNN picks for a 16-row product. When that layout is
// BA16a64b4a of the [k, n] matrix and `shared_layout` contains exactly its bytes (the packed
// per-channel layout of int8_packed.h for k a multiple of 64), the matmul reads
// `shared_layout`, which must outlive it and stay unchanged. Otherwise it reorders `weights`
// [n, k] into a buffer of its own. `compensation` has n entries, -128 times the sum of each
// row of `weights`, as PackInt8Weights computes them.
absl::StatusOr<std::unique_ptr<OneDnnInt8Matmul>> CreateOneDnnInt8Matmul(
    std::span<const int8_t> weights, int64_t n, int64_t k, std::span<const float> scales,
    std::span<const int32_t> compensation, std::span<const int8_t> shared_layout = {});

}  // namespace w8a8::kernels::internal
