// Internal to the kernels: per-row building blocks of quantization and the fused kernels, one
// set per ISA. All are single-threaded and read and write only the given rows.
#pragma once

#include <cstdint>

#include "kernels/cpu_features.h"

namespace w8a8::kernels::internal {

struct RowKernels {
  // Returns max |x[i]|.
  float (*max_abs)(const float* x, int64_t count);
  // q[i] = round-half-even(x[i] * inverse), clamped to [-127, 127].
  void (*quantize)(const float* x, int64_t count, float inverse, int8_t* q);
  // Returns sum x[i]^2, accumulated in FP64.
  double (*sum_squares)(const float* x, int64_t count);
  // out[i] = x[i] * factor * weight[i]; returns max |out[i]|.
  float (*scale_multiply)(const float* x, const float* weight, float factor, int64_t count,
                          float* out);
  // out[i] = silu(gate[i]) * up[i]; returns max |out[i]|.
  float (*silu_multiply)(const float* gate, const float* up, int64_t count, float* out);
};

// The kernels for `isa`, which the CPU must support.
const RowKernels& RowKernelsFor(Isa isa);

// Below this max |x|, 1 / (max |x| / 127) would overflow FP32 (127 / FLT_MAX is 3.7e-37), so
// such rows are treated as all zero.
inline constexpr float kMinQuantizedMax = 1e-36f;

// The symmetric scale for a row or tensor with the given max |x|: max_abs / 127, or 1 when
// max_abs is below kMinQuantizedMax (all q are then 0).
inline float ScaleForMax(float max_abs) {
  return max_abs >= kMinQuantizedMax ? max_abs / 127.0f : 1.0f;
}

}  // namespace w8a8::kernels::internal
