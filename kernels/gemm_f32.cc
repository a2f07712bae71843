#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "kernels/gemm.h"
#include "kernels/gemm_f32_internal.h"
#include "kernels/parallel.h"

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

// The kScalar path: portable C++ that the compiler vectorizes for the baseline ISA.
void GemmF32Portable(const float* x, const float* w, float* y, int64_t m, int64_t n,
                     int64_t k) {
  // Each thread owns a range of output columns, so every row of w is read by one thread only.
  // For m > kRowBlock the rows of w are reread once per block of rows of x.
  ParallelFor(n, n * k * m >= kMinThreadedMacs, [&](int64_t col) {
    const float* w_row = w + col * k;
    for (int64_t row = 0; row < m; row += kRowBlock) {
      const int64_t rows = std::min(kRowBlock, m - row);
      DotRows(x + row * k, w_row, y + row * n, rows, n, k, col);
    }
  });
}

// One row of x on AVX2 or AVX-512: threads split the weight rows into contiguous ranges.
void GemmF32Decode(Isa isa, const float* x, const float* w, float* y, int64_t n, int64_t k) {
  const int64_t threads = n * k >= kMinThreadedMacs ? omp_get_max_threads() : 1;
  ParallelRegion(threads, [&](int64_t index, int64_t count) {
    // Ranges start at multiples of 4 rows, which the kernels process together.
    const int64_t quads = (n + 3) / 4;
    const int64_t begin = std::min(n, quads * index / count * 4);
    const int64_t end = std::min(n, quads * (index + 1) / count * 4);
    if (isa == Isa::kAvx512Vnni) {
      internal::DotColumnsAvx512(x, w, y, k, begin, end);
    } else {
      internal::DotColumnsAvx2(x, w, y, k, begin, end);
    }
  });
}

}  // namespace

void GemmF32(const float* x, const float* w, float* y, int64_t m, int64_t n, int64_t k) {
  GemmF32(ActiveIsa(), x, w, y, m, n, k);
}

void GemmF32(Isa isa, const float* x, const float* w, float* y, int64_t m, int64_t n,
             int64_t k) {
  if (m <= 0 || n <= 0) return;
  if (isa == Isa::kScalar || k == 0) {
    GemmF32Portable(x, w, y, m, n, k);
    return;
  }
  if (m == 1) {
    GemmF32Decode(isa, x, w, y, n, k);
    return;
  }
  if (m * n * k < kMinThreadedMacs) {
    // oneDNN runs even a small product on all threads, so a small one runs here row by row
    // on the calling thread.
    for (int64_t row = 0; row < m; ++row) GemmF32Decode(isa, x + row * k, w, y + row * n, n, k);
    return;
  }
  if (!internal::OneDnnGemmF32(x, w, y, m, n, k)) GemmF32Portable(x, w, y, m, n, k);
}

}  // namespace w8a8::kernels
