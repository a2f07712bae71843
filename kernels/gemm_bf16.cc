#include "kernels/gemm_bf16.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/gemm.h"

// GCC 12 reports the deliberately undefined pass-through operands inside avx512fintrin.h as
// uninitialized.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define W8A8_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))

namespace w8a8::kernels {
namespace {

// Up to kMaxSmallM rows of x, each tile of kWeightRows rows of w is read from memory once
// and used for every row of x, kRowsPerPass rows at a time from L1.
constexpr int64_t kMaxSmallM = 16;
constexpr int64_t kRowsPerPass = 4;
constexpr int64_t kWeightRows = 4;
// Rows of w converted at once for the GemmF32 path: 1024 rows of 8192 inputs are 32 MiB.
constexpr int64_t kConvertRows = 1024;

float Bf16Value(uint16_t value) {
  const uint32_t bits = static_cast<uint32_t>(value) << 16;
  float result;
  std::memcpy(&result, &bits, sizeof(result));
  return result;
}

void SmallMScalar(const float* x, const uint16_t* w, float* y, int64_t m, int64_t n, int64_t k) {
#pragma omp parallel for schedule(static)
  for (int64_t col = 0; col < n; ++col) {
    const uint16_t* row = w + col * k;
    for (int64_t r = 0; r < m; ++r) {
      float sum = 0.0f;
      for (int64_t i = 0; i < k; ++i) sum += x[r * k + i] * Bf16Value(row[i]);
      y[r * n + col] = sum;
    }
  }
}

W8A8_AVX512 inline __m512 LoadBf16(const uint16_t* in, __mmask16 mask) {
  const __m256i half = _mm256_maskz_loadu_epi16(mask, in);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}

// kWeightRows rows of w (or fewer at the end) against kM <= kRowsPerPass rows of x. Every
// (row of x, row of w) pair has its own accumulator, so kWeightRows * kM chains run at once.
template <int kM>
W8A8_AVX512 void SmallMTile(const float* x, const uint16_t* w, float* y, int64_t n, int64_t k,
                            int64_t col, int64_t rows) {
  __m512 sums[kM][kWeightRows];
  for (int r = 0; r < kM; ++r) {
    for (int64_t j = 0; j < kWeightRows; ++j) sums[r][j] = _mm512_setzero_ps();
  }
  for (int64_t i = 0; i < k; i += 16) {
    const __mmask16 mask =
        k - i >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (k - i)) - 1);
    __m512 inputs[kM];
    for (int r = 0; r < kM; ++r) inputs[r] = _mm512_maskz_loadu_ps(mask, x + r * k + i);
    for (int64_t j = 0; j < kWeightRows; ++j) {
      // Rows past the end repeat the last row. Their sums are not stored.
      const __m512 weights = LoadBf16(w + (col + std::min(j, rows - 1)) * k + i, mask);
      for (int r = 0; r < kM; ++r) sums[r][j] = _mm512_fmadd_ps(inputs[r], weights, sums[r][j]);
    }
  }
  for (int r = 0; r < kM; ++r) {
    for (int64_t j = 0; j < rows; ++j) y[r * n + col + j] = _mm512_reduce_add_ps(sums[r][j]);
  }
}

W8A8_AVX512 void SmallMAvx512(const float* x, const uint16_t* w, float* y, int64_t m, int64_t n,
                              int64_t k) {
  const int64_t tiles = (n + kWeightRows - 1) / kWeightRows;
#pragma omp parallel for schedule(static)
  for (int64_t tile = 0; tile < tiles; ++tile) {
    const int64_t col = tile * kWeightRows;
    const int64_t rows = std::min(kWeightRows, n - col);
    for (int64_t first = 0; first < m; first += kRowsPerPass) {
      const float* x_rows = x + first * k;
      float* y_rows = y + first * n;
      switch (std::min(kRowsPerPass, m - first)) {
        case 1:
          SmallMTile<1>(x_rows, w, y_rows, n, k, col, rows);
          break;
        case 2:
          SmallMTile<2>(x_rows, w, y_rows, n, k, col, rows);
          break;
        case 3:
          SmallMTile<3>(x_rows, w, y_rows, n, k, col, rows);
          break;
        default:
          SmallMTile<4>(x_rows, w, y_rows, n, k, col, rows);
          break;
      }
    }
  }
}

// Converts blocks of kConvertRows rows of w and multiplies each with GemmF32 into a block of
// columns of y.
void ConvertedGemm(Isa isa, const float* x, const uint16_t* w, float* y, int64_t m, int64_t n,
                   int64_t k) {
  thread_local std::vector<float> weights;
  thread_local std::vector<float> block_output;
  for (int64_t col = 0; col < n; col += kConvertRows) {
    const int64_t rows = std::min(kConvertRows, n - col);
    weights.resize(static_cast<size_t>(rows * k));
    block_output.resize(static_cast<size_t>(m * rows));
    // The buffers are thread_local, so the workers get the caller's through a plain pointer.
    float* converted = weights.data();
    const int64_t chunks = (rows * k + 4095) / 4096;
#pragma omp parallel for schedule(static)
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const int64_t begin = chunk * 4096;
      const int64_t count = std::min<int64_t>(4096, rows * k - begin);
      Bf16ToFloat(w + col * k + begin, count, converted + begin);
    }
    GemmF32(isa, x, weights.data(), block_output.data(), m, rows, k);
    for (int64_t r = 0; r < m; ++r) {
      std::memcpy(y + r * n + col, block_output.data() + r * rows, sizeof(float) * rows);
    }
  }
}

W8A8_AVX512 void Bf16ToFloatAvx512(const uint16_t* in, int64_t count, float* out) {
  for (int64_t i = 0; i < count; i += 16) {
    const __mmask16 mask = count - i >= 16 ? static_cast<__mmask16>(0xffff)
                                           : static_cast<__mmask16>((1u << (count - i)) - 1);
    _mm512_mask_storeu_ps(out + i, mask, LoadBf16(in + i, mask));
  }
}

}  // namespace

void Bf16ToFloat(const uint16_t* in, int64_t count, float* out) {
  if (ActiveIsa() == Isa::kAvx512Vnni) {
    Bf16ToFloatAvx512(in, count, out);
    return;
  }
  for (int64_t i = 0; i < count; ++i) out[i] = Bf16Value(in[i]);
}

void GemmBf16Weights(const float* x, const uint16_t* w, float* y, int64_t m, int64_t n, int64_t k) {
  GemmBf16Weights(ActiveIsa(), x, w, y, m, n, k);
}

void GemmBf16Weights(Isa isa, const float* x, const uint16_t* w, float* y, int64_t m, int64_t n,
                     int64_t k) {
  if (m <= 0 || n <= 0) return;
  if (m > kMaxSmallM) {
    ConvertedGemm(isa, x, w, y, m, n, k);
  } else if (isa == Isa::kAvx512Vnni) {
    SmallMAvx512(x, w, y, m, n, k);
  } else {
    // NOTE: AVX2 uses the plain loop for m <= 4.
    SmallMScalar(x, w, y, m, n, k);
  }
}

}  // namespace w8a8::kernels
