// Plain C++ reference implementations of the kernels in gemm.h and fused.h. They define the
// expected results in tests and serve as the kScalar path. No SIMD intrinsics, no threads.
#pragma once

#include <cstdint>

namespace w8a8::kernels::reference {

// y[m, n] = x[m, k] * w[n, k]^T in FP32, summed in order over k.
void GemmF32(const float* x, const float* w, float* y, int64_t m, int64_t n, int64_t k);

}  // namespace w8a8::kernels::reference
