// Kernels that fuse an elementwise step with per-token int8 quantization, so the activations
// of a quantized linear layer are read from memory once. Each row is computed into a buffer
// that stays in L1/L2 cache (or into the optional float output) and quantized from there.
// The quantization is that of QuantizePerToken (gemm.h). All inputs must be finite.
// Thread-safe, and large inputs split rows among OpenMP threads.
#pragma once

#include <cstdint>

#include "kernels/cpu_features.h"

namespace w8a8::kernels {

// RMSNorm then per-token quantization. Per row of x [m, k]:
// y = x / sqrt(mean(x^2) + eps) * weight, with the sum of squares accumulated in FP64;
// q [m, k] and scales [m] quantize y. `y` [m, k] receives the float output unless null.
void RmsNormQuantize(const float* x, const float* weight, float eps, int64_t m, int64_t k,
                     int8_t* q, float* scales, float* y = nullptr);
void RmsNormQuantize(Isa isa, const float* x, const float* weight, float eps, int64_t m,
                     int64_t k, int8_t* q, float* scales, float* y = nullptr);

// The SwiGLU product then per-token quantization: h = silu(gate) * up elementwise, with
// silu(g) = g / (1 + exp(-g)), for gate and up [m, k]; q [m, k] and scales [m] quantize h.
// `h` [m, k] receives the float product unless null. The AVX-512 path evaluates exp with a
// polynomial accurate to a few units in the last place. So h may differ from the reference in
// the last bits, and q by 1 where h * (1 / scale) lies near a half-integer.
void SiluMulQuantize(const float* gate, const float* up, int64_t m, int64_t k, int8_t* q,
                     float* scales, float* h = nullptr);
void SiluMulQuantize(Isa isa, const float* gate, const float* up, int64_t m, int64_t k,
                     int8_t* q, float* scales, float* h = nullptr);

}  // namespace w8a8::kernels
