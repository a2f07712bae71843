// Internal to the kernels: the ISA-specific pieces of GemmF32 (gemm.h).
#pragma once

#include <cstdint>

namespace w8a8::kernels::internal {

// y[col] = dot(x, w[col]) for col in [col_begin, col_end), x one row of k floats. Each weight
// row is read once, four rows at a time. Single-threaded; the caller splits the columns.
void DotColumnsAvx512(const float* x, const float* w, float* y, int64_t k, int64_t col_begin,
                      int64_t col_end);
void DotColumnsAvx2(const float* x, const float* w, float* y, int64_t k, int64_t col_begin,
                    int64_t col_end);

// y[m, n] = x[m, k] * w[n, k]^T through oneDNN's f32 matmul, with w read in place as the
// transposed [k, n] operand. Primitives are created once per (m, n, k) and cached; thread-safe.
// Returns false if oneDNN cannot run this shape, so the caller falls back.
bool OneDnnGemmF32(const float* x, const float* w, float* y, int64_t m, int64_t n, int64_t k);

}  // namespace w8a8::kernels::internal
