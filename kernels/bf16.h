// Conversions between FP32 values and BF16 bit patterns, used by the kernels and by the
// checkpoint code in core/.
#pragma once

#include <bit>
#include <cstdint>

namespace w8a8::kernels {

// Returns the FP32 value of the BF16 bit pattern `bits`, which it represents exactly.
inline float Bf16ToFloat(uint16_t bits) {
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

// Rounds `value` to the nearest BF16 value, ties to even. A NaN stays NaN (made quiet), where
// rounding its bits could carry into the sign and give zero.
inline uint16_t FloatToBf16(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  const uint32_t rounded = bits + 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(rounded >> 16);
}

}  // namespace w8a8::kernels
