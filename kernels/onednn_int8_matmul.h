// Internal to the kernels: Int8Matmul with per-channel weight scales through oneDNN's int8
// matmul primitive.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "absl/status/statusor.h"
#include "kernels/gemm.h"

namespace w8a8::kernels::internal {

// oneDNN 2.6 multiplies s8 activations by s8 weights into an int32 accumulator and applies the
// per-column weight scales as output scales, writing FP32. A binary multiply post-op with the
// per-row activation scales makes oneDNN 2.6 fall back to its reference implementation, so
// those scales are applied in a separate pass over y. The weights are reordered once into the
// layout oneDNN picks; primitives are created on first use for each m and cached (thread-safe).
absl::StatusOr<std::unique_ptr<Int8Matmul>> CreateOneDnnInt8Matmul(
    std::span<const int8_t> weights, int64_t n, int64_t k, std::span<const float> scales);

}  // namespace w8a8::kernels::internal
