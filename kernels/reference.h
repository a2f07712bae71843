// Plain C++ reference implementations of the kernels in gemm.h and fused.h. They define the
// expected results in tests, and Int8Matmul's kScalar path runs Int8Matmul below. No SIMD
// intrinsics, no threads.
#pragma once

#include <cstdint>

namespace w8a8::kernels::reference {

// y[m, n] = x[m, k] * w[n, k]^T in FP32, summed in order over k.
void GemmF32(const float* x, const float* w, float* y, int64_t m, int64_t n, int64_t k);

// Symmetric int8 quantization of `count` values with the given max |x|: scale = max_abs / 127
// (1 when max_abs < 1e-36, so 1 / scale stays finite) and q = round-half-even(x * (1 / scale)),
// clamped to [-127, 127]. Returns the scale.
float QuantizeWithMax(const float* x, int64_t count, float max_abs, int8_t* q);
void QuantizePerToken(const float* x, int64_t m, int64_t k, int8_t* q, float* scales);
void QuantizePerTensor(const float* x, int64_t m, int64_t k, int8_t* q, float* scale);

// Exact int32 dot products of xq [m, k] with weights [n, k], per scale group of group_size
// inputs (group_size 0: one group of k). `sums` is [m, n, groups].
void Int8GroupSums(const int8_t* xq, int64_t m, const int8_t* weights, int64_t n, int64_t k,
                   int64_t group_size, int32_t* sums);
// y[m, n] = x_scales[m] * sum over groups of (FP32 group sum * weight scale), the groups added
// in order. `scales` is as in Int8Matmul::Create.
void Int8Matmul(const int8_t* xq, const float* x_scales, int64_t m, const int8_t* weights,
                int64_t n, int64_t k, const float* scales, int64_t group_size, float* y);

// Per row: y = x / sqrt(mean(x^2) + eps) * weight, then QuantizePerToken(y). `y` may be null.
void RmsNormQuantize(const float* x, const float* weight, float eps, int64_t m, int64_t k,
                     int8_t* q, float* scales, float* y);
// h = silu(gate) * up with silu(g) = g / (1 + exp(-g)), then QuantizePerToken(h). `h` may be
// null.
void SiluMulQuantize(const float* gate, const float* up, int64_t m, int64_t k, int8_t* q,
                     float* scales, float* h);

}  // namespace w8a8::kernels::reference
