// Matrix products and activation quantization for linear layers, FP32 and int8.
// Every kernel has a plain C++ reference; the fastest implementation the CPU supports is picked
// once, in cpu_features.cc.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"

namespace w8a8::kernels {

// y[m, n] = x[m, k] * w[n, k]^T, all row-major FP32.
void GemmF32(const float* x, const float* w, float* y, int64_t m, int64_t n, int64_t k);

// Symmetric int8 quantization of activations, dynamic: one scale per row (token), or one for
// the whole matrix. scale = max|x| / 127 (1 for an all-zero row); q = round(x / scale).
void QuantizePerToken(const float* x, int64_t m, int64_t k, int8_t* q, float* scales);
void QuantizePerTensor(const float* x, int64_t m, int64_t k, int8_t* q, float* scale);

// An int8 weight matrix [n, k] with its scales, prepared once for repeated products.
class Int8Matmul {
 public:
  virtual ~Int8Matmul() = default;
  // `group_size` 0: one scale per output row (`scales` has n entries; per-tensor passes n
  // copies). Otherwise one scale per group of `group_size` consecutive inputs of a row
  // (`scales` is [n, ceil(k / group_size)]); the last group of a row may be shorter.
  static absl::StatusOr<std::unique_ptr<Int8Matmul>> Create(std::span<const int8_t> weights,
                                                            int64_t n, int64_t k,
                                                            std::span<const float> scales,
                                                            int64_t group_size);
  // y[m, n] = sum_k xq[m, k] * w[n, k], accumulated in int32 (per group for grouped weights),
  // times x_scales[m] (one entry per row; for per-tensor activations pass m copies) and the
  // weight scales.
  virtual void Run(const int8_t* xq, const float* x_scales, int64_t m, float* y) const = 0;
  virtual int64_t n() const = 0;
  virtual int64_t k() const = 0;
  virtual int64_t group_size() const = 0;
};

}  // namespace w8a8::kernels
