// Dynamic int8 quantization of activations (gemm.h) and the fused kernels (fused.h).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/fused.h"
#include "kernels/gemm.h"
#include "kernels/parallel.h"
#include "kernels/row_kernels.h"

namespace w8a8::kernels {
namespace {

using internal::RowKernels;
using internal::RowKernelsFor;
using internal::ScaleForMax;

// Rows are split among threads only when there is enough work to pay for waking them.
bool WorthThreading(int64_t m, int64_t k) { return m > 1 && m * k >= kMinThreadedElements; }

// A per-thread row buffer for fused kernels called without a float output.
float* RowBuffer(int64_t k) {
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < k) buffer.resize(k);
  return buffer.data();
}

}  // namespace

void QuantizePerToken(const float* x, int64_t m, int64_t k, int8_t* q, float* scales) {
  QuantizePerToken(ActiveIsa(), x, m, k, q, scales);
}

void QuantizePerToken(Isa isa, const float* x, int64_t m, int64_t k, int8_t* q, float* scales) {
  const RowKernels& kernels = RowKernelsFor(isa);
  ParallelFor(m, WorthThreading(m, k), [&](int64_t row) {
    const float scale = ScaleForMax(kernels.max_abs(x + row * k, k));
    scales[row] = scale;
    kernels.quantize(x + row * k, k, 1.0f / scale, q + row * k);
  });
}

void QuantizePerTensor(const float* x, int64_t m, int64_t k, int8_t* q, float* scale) {
  QuantizePerTensor(ActiveIsa(), x, m, k, q, scale);
}

void QuantizePerTensor(Isa isa, const float* x, int64_t m, int64_t k, int8_t* q, float* scale) {
  const RowKernels& kernels = RowKernelsFor(isa);
  float max_abs = 0.0f;
  if (WorthThreading(m, k) && RegionThreads(m) > 1) {
#pragma omp parallel for schedule(static) reduction(max : max_abs)
    for (int64_t row = 0; row < m; ++row) {
      max_abs = std::max(max_abs, kernels.max_abs(x + row * k, k));
    }
  } else {
    for (int64_t row = 0; row < m; ++row) {
      max_abs = std::max(max_abs, kernels.max_abs(x + row * k, k));
    }
  }
  const float tensor_scale = ScaleForMax(max_abs);
  *scale = tensor_scale;
  const float inverse = 1.0f / tensor_scale;
  ParallelFor(m, WorthThreading(m, k),
              [&](int64_t row) { kernels.quantize(x + row * k, k, inverse, q + row * k); });
}

void RmsNormQuantize(const float* x, const float* weight, float eps, int64_t m, int64_t k,
                     int8_t* q, float* scales, float* y) {
  RmsNormQuantize(ActiveIsa(), x, weight, eps, m, k, q, scales, y);
}

void RmsNormQuantize(Isa isa, const float* x, const float* weight, float eps, int64_t m,
                     int64_t k, int8_t* q, float* scales, float* y) {
  const RowKernels& kernels = RowKernelsFor(isa);
  ParallelFor(m, WorthThreading(m, k), [&](int64_t row) {
    const float* x_row = x + row * k;
    float* normalized = y != nullptr ? y + row * k : RowBuffer(k);
    const double mean_square = kernels.sum_squares(x_row, k) / static_cast<double>(k);
    const float inverse_rms = static_cast<float>(1.0 / std::sqrt(mean_square + eps));
    const float scale =
        ScaleForMax(kernels.scale_multiply(x_row, weight, inverse_rms, k, normalized));
    scales[row] = scale;
    kernels.quantize(normalized, k, 1.0f / scale, q + row * k);
  });
}

void SiluMulQuantize(const float* gate, const float* up, int64_t m, int64_t k, int8_t* q,
                     float* scales, float* h) {
  SiluMulQuantize(ActiveIsa(), gate, up, m, k, q, scales, h);
}

void SiluMulQuantize(Isa isa, const float* gate, const float* up, int64_t m, int64_t k,
                     int8_t* q, float* scales, float* h) {
  const RowKernels& kernels = RowKernelsFor(isa);
  ParallelFor(m, WorthThreading(m, k), [&](int64_t row) {
    float* product = h != nullptr ? h + row * k : RowBuffer(k);
    const float scale =
        ScaleForMax(kernels.silu_multiply(gate + row * k, up + row * k, k, product));
    scales[row] = scale;
    kernels.quantize(product, k, 1.0f / scale, q + row * k);
  });
}

}  // namespace w8a8::kernels
