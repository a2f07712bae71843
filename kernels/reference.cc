#include "kernels/reference.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace w8a8::kernels::reference {
namespace {

float MaxAbs(const float* x, int64_t count) {
  float max_abs = 0.0f;
  for (int64_t i = 0; i < count; ++i) max_abs = std::max(max_abs, std::fabs(x[i]));
  return max_abs;
}

}  // namespace

void GemmF32(const float* x, const float* w, float* y, int64_t m, int64_t n, int64_t k) {
  for (int64_t row = 0; row < m; ++row) {
    for (int64_t col = 0; col < n; ++col) {
      float sum = 0.0f;
      for (int64_t i = 0; i < k; ++i) sum += x[row * k + i] * w[col * k + i];
      y[row * n + col] = sum;
    }
  }
}

float QuantizeWithMax(const float* x, int64_t count, float max_abs, int8_t* q) {
  // 1e-36 keeps 1 / scale finite (127 / FLT_MAX is 3.7e-37); smaller rows quantize to zeros.
  const float scale = max_abs >= 1e-36f ? max_abs / 127.0f : 1.0f;
  const float inverse = 1.0f / scale;
  for (int64_t i = 0; i < count; ++i) {
    const float rounded = std::nearbyint(x[i] * inverse);
    q[i] = static_cast<int8_t>(std::clamp(rounded, -127.0f, 127.0f));
  }
  return scale;
}

void QuantizePerToken(const float* x, int64_t m, int64_t k, int8_t* q, float* scales) {
  for (int64_t row = 0; row < m; ++row) {
    scales[row] = QuantizeWithMax(x + row * k, k, MaxAbs(x + row * k, k), q + row * k);
  }
}

void QuantizePerTensor(const float* x, int64_t m, int64_t k, int8_t* q, float* scale) {
  *scale = QuantizeWithMax(x, m * k, MaxAbs(x, m * k), q);
}

void Int8GroupSums(const int8_t* xq, int64_t m, const int8_t* weights, int64_t n, int64_t k,
                   int64_t group_size, int32_t* sums) {
  const int64_t span = group_size == 0 ? k : group_size;
  const int64_t groups = (k + span - 1) / span;
  for (int64_t row = 0; row < m; ++row) {
    for (int64_t col = 0; col < n; ++col) {
      for (int64_t group = 0; group < groups; ++group) {
        const int64_t begin = group * span;
        const int64_t end = std::min(k, begin + span);
        int32_t sum = 0;
        for (int64_t i = begin; i < end; ++i) {
          sum += int32_t{xq[row * k + i]} * int32_t{weights[col * k + i]};
        }
        sums[(row * n + col) * groups + group] = sum;
      }
    }
  }
}

void Int8Matmul(const int8_t* xq, const float* x_scales, int64_t m, const int8_t* weights,
                int64_t n, int64_t k, const float* scales, int64_t group_size, float* y) {
  const int64_t span = group_size == 0 ? k : group_size;
  const int64_t groups = (k + span - 1) / span;
  std::vector<int32_t> sums(m * n * groups);
  Int8GroupSums(xq, m, weights, n, k, group_size, sums.data());
  for (int64_t row = 0; row < m; ++row) {
    for (int64_t col = 0; col < n; ++col) {
      float total = 0.0f;
      for (int64_t group = 0; group < groups; ++group) {
        const float weight_scale = group_size == 0 ? scales[col] : scales[col * groups + group];
        total += static_cast<float>(sums[(row * n + col) * groups + group]) * weight_scale;
      }
      y[row * n + col] = total * x_scales[row];
    }
  }
}

void RmsNormQuantize(const float* x, const float* weight, float eps, int64_t m, int64_t k,
                     int8_t* q, float* scales, float* y) {
  std::vector<float> normalized(k);
  for (int64_t row = 0; row < m; ++row) {
    const float* x_row = x + row * k;
    double sum_squares = 0.0;
    for (int64_t i = 0; i < k; ++i) sum_squares += double{x_row[i]} * double{x_row[i]};
    const float inverse_rms =
        static_cast<float>(1.0 / std::sqrt(sum_squares / static_cast<double>(k) + eps));
    for (int64_t i = 0; i < k; ++i) normalized[i] = x_row[i] * inverse_rms * weight[i];
    scales[row] = QuantizeWithMax(normalized.data(), k, MaxAbs(normalized.data(), k),
                                  q + row * k);
    if (y != nullptr) std::copy(normalized.begin(), normalized.end(), y + row * k);
  }
}

void SiluMulQuantize(const float* gate, const float* up, int64_t m, int64_t k, int8_t* q,
                     float* scales, float* h) {
  std::vector<float> product(k);
  for (int64_t row = 0; row < m; ++row) {
    for (int64_t i = 0; i < k; ++i) {
      const float g = gate[row * k + i];
      product[i] = g / (1.0f + std::exp(-g)) * up[row * k + i];
    }
    scales[row] = QuantizeWithMax(product.data(), k, MaxAbs(product.data(), k), q + row * k);
    if (h != nullptr) std::copy(product.begin(), product.end(), h + row * k);
  }
}

}  // namespace w8a8::kernels::reference
