#include "core/tensor.h"

#include <bit>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status_macros.h"
#include "kernels/bf16.h"

namespace w8a8 {
namespace {

constexpr int64_t kQ8_0BlockValues = 32;
constexpr int64_t kQ8_0BlockBytes = 34;  // One F16 scale, then 32 int8 values.

uint16_t LoadU16(const std::byte* p) {
  uint16_t value;
  std::memcpy(&value, p, sizeof(value));
  return value;
}

absl::Status IntegerDTypeError(const TensorView& tensor) {
  return absl::InvalidArgumentError(
      absl::StrCat("tensor '", tensor.name, "' has integer dtype ", std::string(DTypeName(tensor.dtype)),
                   ", which has no FP32 conversion; dequantize it with its scales instead"));
}

}  // namespace

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kI8:
      return "I8";
    case DType::kI32:
      return "I32";
    case DType::kQ8_0:
      return "Q8_0";
  }
  return "unknown";
}

int64_t TensorView::num_elements() const {
  int64_t count = 1;
  for (int64_t dim : shape) count *= dim;
  return count;
}

absl::StatusOr<uint64_t> TensorBytes(DType dtype, std::span<const int64_t> shape) {
  uint64_t count = 1;
  for (int64_t dim : shape) {
    if (dim < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("shape [", absl::StrJoin(shape, ", "), "] has a negative dimension"));
    }
    if (__builtin_mul_overflow(count, static_cast<uint64_t>(dim), &count)) {
      return absl::InvalidArgumentError(
          absl::StrCat("shape [", absl::StrJoin(shape, ", "), "] overflows 64 bits"));
    }
  }
  uint64_t element_bytes = 0;
  switch (dtype) {
    case DType::kF32:
    case DType::kI32:
      element_bytes = 4;
      break;
    case DType::kF16:
    case DType::kBF16:
      element_bytes = 2;
      break;
    case DType::kI8:
      element_bytes = 1;
      break;
    case DType::kQ8_0: {
      const int64_t row = shape.empty() ? 1 : shape.back();
      if (row % kQ8_0BlockValues != 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Q8_0 rows must be a multiple of ", kQ8_0BlockValues, " values, but shape [",
            absl::StrJoin(shape, ", "), "] has rows of ", row));
      }
      uint64_t bytes = 0;
      if (__builtin_mul_overflow(count / kQ8_0BlockValues, uint64_t{kQ8_0BlockBytes}, &bytes)) {
        return absl::InvalidArgumentError(
            absl::StrCat("shape [", absl::StrJoin(shape, ", "), "] overflows 64 bits"));
      }
      return bytes;
    }
  }
  uint64_t bytes = 0;
  if (element_bytes == 0 || __builtin_mul_overflow(count, element_bytes, &bytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape [", absl::StrJoin(shape, ", "), "] overflows 64 bits"));
  }
  return bytes;
}

absl::Status ToFloat32(const TensorView& tensor, std::span<float> out) {
  if (tensor.dtype == DType::kI8 || tensor.dtype == DType::kI32) return IntegerDTypeError(tensor);
  ASSIGN_OR_RETURN(const uint64_t expected_bytes, TensorBytes(tensor.dtype, tensor.shape));
  if (expected_bytes != tensor.size_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", tensor.name, "' contains ", tensor.size_bytes, " bytes, but ",
        std::string(DTypeName(tensor.dtype)), " of shape [", absl::StrJoin(tensor.shape, ", "), "] needs ",
        expected_bytes));
  }
  const size_t count = static_cast<size_t>(tensor.num_elements());
  if (out.size() != count) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", tensor.name, "' has ", count,
                                                   " elements, but the output buffer has ",
                                                   out.size()));
  }
  const std::byte* data = tensor.data;
  switch (tensor.dtype) {
    case DType::kF32:
      if (count > 0) std::memcpy(out.data(), data, count * sizeof(float));
      return absl::OkStatus();
    case DType::kF16:
      for (size_t i = 0; i < count; ++i) out[i] = HalfToFloat(LoadU16(data + 2 * i));
      return absl::OkStatus();
    case DType::kBF16:
      for (size_t i = 0; i < count; ++i) out[i] = BFloat16ToFloat(LoadU16(data + 2 * i));
      return absl::OkStatus();
    case DType::kQ8_0: {
      const size_t blocks = count / kQ8_0BlockValues;
      for (size_t b = 0; b < blocks; ++b) {
        const std::byte* block = data + b * kQ8_0BlockBytes;
        const float scale = HalfToFloat(LoadU16(block));
        const auto* values = reinterpret_cast<const int8_t*>(block + 2);
        float* dst = out.data() + b * kQ8_0BlockValues;
        for (int64_t i = 0; i < kQ8_0BlockValues; ++i) dst[i] = scale * values[i];
      }
      return absl::OkStatus();
    }
    case DType::kI8:
    case DType::kI32:
      break;
  }
  return IntegerDTypeError(tensor);
}

absl::StatusOr<std::vector<float>> ToFloat32(const TensorView& tensor) {
  ASSIGN_OR_RETURN(const uint64_t expected_bytes, TensorBytes(tensor.dtype, tensor.shape));
  if (expected_bytes != tensor.size_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", tensor.name, "' contains ", tensor.size_bytes, " bytes, but ",
        std::string(DTypeName(tensor.dtype)), " of shape [", absl::StrJoin(tensor.shape, ", "), "] needs ",
        expected_bytes));
  }
  if (tensor.dtype == DType::kI8 || tensor.dtype == DType::kI32) {
    return IntegerDTypeError(tensor);
  }
  std::vector<float> out(static_cast<size_t>(tensor.num_elements()));
  RETURN_IF_ERROR(ToFloat32(tensor, std::span<float>(out)));
  return out;
}

float HalfToFloat(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1f;
  const uint32_t mantissa = bits & 0x3ff;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24, exact in FP32.
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign != 0 ? -magnitude : magnitude;
  }
  if (exponent == 0x1f) {
    return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  }
  // Rebias the exponent from 15 to 127.
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

uint16_t FloatToHalf(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  const auto sign = static_cast<uint16_t>((bits >> 16) & 0x8000);
  uint32_t magnitude = bits & 0x7fffffff;
  if (magnitude >= 0x7f800000) {
    // Infinity stays infinity; NaN keeps its top mantissa bits and stays a quiet NaN.
    const uint16_t nan_bits = magnitude > 0x7f800000 ? 0x200 | ((magnitude >> 13) & 0x3ff) : 0;
    return sign | 0x7c00 | nan_bits;
  }
  // 65520 is halfway between the largest half (65504) and 65536; ties go to the even
  // neighbour, which is infinity.
  if (magnitude >= 0x477ff000) return sign | 0x7c00;
  if (magnitude < 0x38800000) {
    // Below 2^-14 the result is subnormal: count units of 2^-24, rounding to nearest even
    // (the default FP rounding mode). A result of 1024 is the bit pattern of 2^-14.
    const float scaled = std::bit_cast<float>(magnitude) * 16777216.0f;
    return sign | static_cast<uint16_t>(std::lrintf(scaled));
  }
  // Round the 13 dropped mantissa bits to nearest even, then rebias the exponent.
  magnitude += 0xfff + ((magnitude >> 13) & 1);
  return sign | static_cast<uint16_t>((magnitude - 0x38000000) >> 13);
}

float BFloat16ToFloat(uint16_t bits) { return kernels::Bf16ToFloat(bits); }

uint16_t FloatToBFloat16(float value) { return kernels::FloatToBf16(value); }

}  // namespace w8a8
