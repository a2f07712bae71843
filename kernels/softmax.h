// Exponentials for softmax over a vocabulary, vectorized where the CPU allows.
#pragma once

#include <cstdint>

#include "kernels/cpu_features.h"

namespace w8a8::kernels {

// Writes out[i] = exp((x[i] - shift) * scale) for i < count and returns the sum of out,
// accumulated in FP64. Single-threaded. The argument is computed in FP32. The AVX-512 path
// evaluates exp with a polynomial accurate to a few units in the last place and clamps the
// argument to [-87, 88], so values that would be smaller than exp(-87) = 1.6e-38 come out as
// exp(-87). The other paths call std::exp in FP64 and round the result to FP32.
double ExpSum(const float* x, int64_t count, float shift, float scale, float* out);
double ExpSum(Isa isa, const float* x, int64_t count, float shift, float scale, float* out);

}  // namespace w8a8::kernels
