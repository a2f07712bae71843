// Products with BF16 weights in FP32 arithmetic. A BF16 value is the upper 16 bits of an FP32
// value, so every weight converts exactly and only the summation order differs from GemmF32
// on the converted weights.
#pragma once

#include <cstdint>

#include "kernels/cpu_features.h"

namespace w8a8::kernels {

// y[m, n] = x[m, k] * w[n, k]^T with FP32 x and y and BF16 w, all row-major. Thread-safe, and
// threads with OpenMP. For m <= 16, each row of w is read from memory once and converted in
// registers. For larger m, blocks of rows of w are converted to FP32 and multiplied by GemmF32.
void GemmBf16Weights(const float* x, const uint16_t* w, float* y, int64_t m, int64_t n, int64_t k);
void GemmBf16Weights(Isa isa, const float* x, const uint16_t* w, float* y, int64_t m, int64_t n,
                     int64_t k);

// out[i] = the FP32 value of the BF16 value in[i], for i < count.
void Bf16ToFloat(const uint16_t* in, int64_t count, float* out);

}  // namespace w8a8::kernels
