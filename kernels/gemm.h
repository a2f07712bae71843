// Matrix products and activation quantization for linear layers, FP32 and int8.
// Every kernel has a plain C++ reference; the fastest implementation the CPU supports is picked
// once, in cpu_features.cc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cpu_features.h"

namespace w8a8::kernels {

// y[m, n] = x[m, k] * w[n, k]^T, all row-major FP32. Thread-safe, and threads with OpenMP.
// On kAvx2 and kAvx512Vnni, m = 1 streams w once with FMA, and m > 1 goes through oneDNN's f32
// matmul (measured faster than the portable loop), with primitives cached per shape. kScalar
// runs a portable blocked loop. Results equal a sequential sum up to floating-point rounding,
// not bit for bit.
void GemmF32(const float* x, const float* w, float* y, int64_t m, int64_t n, int64_t k);
// The same on a given ISA path, which the CPU must support (see SupportedIsas()).
void GemmF32(Isa isa, const float* x, const float* w, float* y, int64_t m, int64_t n,
             int64_t k);

// Symmetric int8 quantization of activations, dynamic: one scale per row (token), or one for
// the whole matrix. scale = max|x| / 127 and q = round-half-even(x * (1 / scale)), clamped to
// [-127, 127], so -128 never occurs. When max|x| < 1e-36 (all-zero rows included), 1 / scale
// would overflow, so scale is 1 and q is 0. Every ISA path gives the same bits as the
// reference. Inputs must be finite. Thread-safe, and large inputs split rows among OpenMP
// threads.
void QuantizePerToken(const float* x, int64_t m, int64_t k, int8_t* q, float* scales);
void QuantizePerTensor(const float* x, int64_t m, int64_t k, int8_t* q, float* scale);
void QuantizePerToken(Isa isa, const float* x, int64_t m, int64_t k, int8_t* q, float* scales);
void QuantizePerTensor(Isa isa, const float* x, int64_t m, int64_t k, int8_t* q, float* scale);

// An int8 weight matrix [n, k] with its scales, prepared once for repeated products. Run() is
// const and thread-safe. It blocks until y is written and threads with OpenMP. Every int8
// value -128..127 is valid in both operands.
// Paths: kScalar runs the reference. kAvx2 and kAvx512Vnni repack the weights into blocks of
// 16 rows for a u8 x s8 dot-product loop (activations + 128, minus 128 * the weight sums).
// Per-channel weights on kAvx512Vnni run that loop for m <= 16 and oneDNN's int8 matmul for
// larger m, unless oneDNN has only its reference implementation for that m. With k a multiple
// of 64 (every Llama shape), oneDNN reads the packed weights in place, so they are stored
// once. With another k it keeps its own copy (see memory_bytes()).
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
  // The same on a given ISA path; fails if the CPU does not support `isa`.
  static absl::StatusOr<std::unique_ptr<Int8Matmul>> Create(std::span<const int8_t> weights,
                                                            int64_t n, int64_t k,
                                                            std::span<const float> scales,
                                                            int64_t group_size, Isa isa);
  // y[m, n] = sum_k xq[m, k] * w[n, k], accumulated in int32 (per group for grouped weights),
  // times x_scales[m] (one entry per row; for per-tensor activations pass m copies) and the
  // weight scales.
  virtual void Run(const int8_t* xq, const float* x_scales, int64_t m, float* y) const = 0;
  virtual int64_t n() const = 0;
  virtual int64_t k() const = 0;
  virtual int64_t group_size() const = 0;
  // The ISA path this matrix was prepared for.
  virtual Isa isa() const = 0;
  // Bytes of the prepared weights, compensation terms and scales in this object.
  virtual size_t memory_bytes() const = 0;
};

}  // namespace w8a8::kernels
