// Element types and read-only views of tensors stored in checkpoint files.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace w8a8 {

enum class DType {
  kF32,
  kF16,
  kBF16,
  kI8,
  kI32,
  kQ8_0,  // GGUF blocks of 32 int8 values with one F16 scale (34 bytes per block).
};

// Returns the dtype's name as safetensors spells it ("F32", "BF16", ...; "Q8_0" for GGUF).
std::string_view DTypeName(DType dtype);

// A tensor inside a memory-mapped checkpoint. `shape` is row-major with the slowest dimension
// first, as PyTorch and safetensors store it: a linear layer's weight is [out_features,
// in_features]. The view does not own `data`; the Checkpoint that returned it does.
// `data` has no alignment guarantee (safetensors packs tensors without padding), so read it
// with memcpy or ToFloat32 rather than by casting the pointer.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const std::byte* data = nullptr;
  size_t size_bytes = 0;

  int64_t num_elements() const;
};

// Converts any float or Q8_0 tensor to FP32. Fails for integer dtypes.
absl::StatusOr<std::vector<float>> ToFloat32(const TensorView& tensor);
// Same, into a caller buffer of exactly num_elements() floats.
absl::Status ToFloat32(const TensorView& tensor, std::span<float> out);

// Bytes that a tensor of `dtype` and row-major `shape` occupies. Fails for a negative
// dimension, a size that overflows 64 bits, or a Q8_0 row (last dimension) that is not a
// multiple of 32. A shape of rank 0 is a scalar.
absl::StatusOr<uint64_t> TensorBytes(DType dtype, std::span<const int64_t> shape);

// IEEE 754 binary16 and bfloat16 conversions.
float HalfToFloat(uint16_t bits);
float BFloat16ToFloat(uint16_t bits);
uint16_t FloatToBFloat16(float value);  // Round to nearest even, NaN stays NaN.
uint16_t FloatToHalf(float value);  // Round to nearest even; overflow becomes infinity.

}  // namespace w8a8
