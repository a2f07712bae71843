#include <algorithm>
#include <cstdint>

#include "kernels/gemm.h"

namespace w8a8::kernels {
namespace {

// Rows of x that share one pass over a row of w.
constexpr int64_t kRowBlock = 4;

// y[rows, col] for up to kRowBlock consecutive rows of x against one row of w.
void DotRows(const float* x, const float* w_row, float* y, int64_t rows, int64_t n, int64_t k,
             int64_t col) {
  float sums[kRowBlock] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (rows == kRowBlock) {
    const float* x0 = x;
    const float* x1 = x + k;
    const float* x2 = x + 2 * k;
    const float* x3 = x + 3 * k;
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t i = 0; i < k; ++i) {
      const float weight = w_row[i];
      s0 += x0[i] * weight;
      s1 += x1[i] * weight;
      s2 += x2[i] * weight;
      s3 += x3[i] * weight;
    }
    sums[0] = s0;
    sums[1] = s1;
    sums[2] = s2;
    sums[3] = s3;
  } else {
    for (int64_t r = 0; r < rows; ++r) {
      const float* x_row = x + r * k;
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (int64_t i = 0; i < k; ++i) s += x_row[i] * w_row[i];
      sums[r] = s;
    }
  }
  for (int64_t r = 0; r < rows; ++r) y[r * n + col] = sums[r];
}

}  // namespace

void GemmF32(const float* x, const float* w, float* y, int64_t m, int64_t n, int64_t k) {
  // Each thread owns a range of output columns, so every row of w is read by one thread only.
  // For m > kRowBlock the rows of w are reread once per block of rows of x.
#pragma omp parallel for schedule(static) if (n * k * m >= (int64_t{1} << 16))
  for (int64_t col = 0; col < n; ++col) {
    const float* w_row = w + col * k;
    for (int64_t row = 0; row < m; row += kRowBlock) {
      const int64_t rows = std::min(kRowBlock, m - row);
      DotRows(x + row * k, w_row, y + row * n, rows, n, k, col);
    }
  }
}

}  // namespace w8a8::kernels
