#include "kernels/reference.h"

namespace w8a8::kernels::reference {

void GemmF32(const float* x, const float* w, float* y, int64_t m, int64_t n, int64_t k) {
  for (int64_t row = 0; row < m; ++row) {
    for (int64_t col = 0; col < n; ++col) {
      float sum = 0.0f;
      for (int64_t i = 0; i < k; ++i) sum += x[row * k + i] * w[col * k + i];
      y[row * n + col] = sum;
    }
  }
}

}  // namespace w8a8::kernels::reference
