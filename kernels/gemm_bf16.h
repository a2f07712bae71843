// Products with BF16 weights in FP32 arithmetic. A BF16 value is the upper 16 bits of an FP32
// value, so every weight converts exactly and only the summation order differs from GemmF32
// on the converted weights.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cpu_features.h"
#include "kernels/weight_memory.h"

namespace w8a8::kernels {

// A [rows, cols] BF16 matrix, such as an output projection (a tied embedding or a separate
// lm_head), stored for products with few rows of activations.
//
// Each tile of 32 rows is one contiguous block. Inside it, the values come in pairs of
// columns: for pair p, the 32 rows each give columns 2p and 2p + 1 as two adjacent BF16
// values, which is 128 bytes, two 64-byte lines. One 64-byte load then contains 16 rows x 2
// columns. Widening a 32-bit lane to FP32 by a 16-bit shift gives column 2p of 16 rows, and
// clearing its low half gives column 2p + 1. So the product runs as outer products: one input
// of x, broadcast, times 16 rows of the matrix, added to 16 outputs. No horizontal sum is
// needed, and each input of x is loaded once for 32 rows of the matrix.
// Rows past the last row and the column past an odd last column are zero.
class Bf16Matrix {
 public:
  Bf16Matrix() = default;
  // Packs the row-major BF16 values [rows, cols] at `values`, which need no alignment (such as
  // a tensor in a mapped checkpoint file). Throws std::bad_alloc.
  Bf16Matrix(const void* values, int64_t rows, int64_t cols);

  bool empty() const { return rows_ == 0; }
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  // Bytes of the packed values, padding included.
  size_t bytes() const { return packed_.size() * sizeof(uint16_t); }

  // Converts row `row`, which must be in [0, rows), to FP32 in out[0, cols).
  void Row(int64_t row, float* out) const;

  // Computes y[m, rows] = x[m, cols] * matrix^T with FP32 x and y, both row-major. Thread-safe,
  // and threads with OpenMP over the tiles of rows.
  // On kAvx512Vnni with AmxBf16Usable(), m >= 8 and cols a multiple of 32 or one less (every
  // Llama shape), AMX tiles multiply x, split into two BF16 parts, by the matrix. Each tile of
  // the matrix is read from memory once for all rows of x. The two parts keep x to within
  // 2^-16 of its magnitude, where the other paths use x exactly. So an output may differ from
  // the exact product by 2^-16 of the sum of the magnitudes of its terms, plus the FP32
  // rounding of a sum of 2 * cols products (the other paths: of cols products).
  // NOTE: with AMX, a row of y depends slightly on m: rows of x multiplied in a batch of 8 or
  // more differ by up to that bound from the same rows multiplied alone.
  // Otherwise on kAvx512Vnni the matrix is read from memory once per block of rows of x. A
  // block is as many rows as fit in 512 KiB of inputs (64 rows at 2048 columns), at least 16.
  // Each tile runs the block in passes of up to 8 rows, and the passes after the first read
  // the tile from cache. On the kAvx2 and kScalar paths, m <= 16 runs a plain loop and larger
  // m converts blocks of 1024 rows to FP32 for GemmF32.
  // `allow_amx` false keeps the AVX-512 path (for comparing the two).
  void Multiply(const float* x, int64_t m, float* y) const;
  void Multiply(Isa isa, const float* x, int64_t m, float* y, bool allow_amx = true) const;

 private:
  int64_t rows_ = 0;
  int64_t cols_ = 0;
  int64_t pairs_ = 0;  // (cols + 1) / 2
  WeightVector<uint16_t> packed_;
};

}  // namespace w8a8::kernels
