// Single-row FP32 dot products, the memory-bound m = 1 case of GemmF32. Only functions marked
// W8A8_AVX512 or W8A8_AVX2 use those instruction sets.
#include <immintrin.h>

#include "kernels/gemm_f32_internal.h"

// GCC 12 reports the deliberately undefined pass-through operands inside avx512fintrin.h
// (for example in _mm512_reduce_add_ps) as uninitialized.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define W8A8_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#define W8A8_AVX2 __attribute__((target("avx2,fma")))

namespace w8a8::kernels::internal {
namespace {

// Dot products of x with kRows consecutive weight rows, 16 floats per step and a masked tail.
template <int kRows>
W8A8_AVX512 void DotRowsAvx512(const float* x, const float* w, float* y, int64_t k) {
  __m512 sums[kRows];
#pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r) sums[r] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    const __m512 xv = _mm512_loadu_ps(x + i);
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) {
      sums[r] = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w + r * k + i), sums[r]);
    }
  }
  if (i < k) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (k - i)) - 1u);
    const __m512 xv = _mm512_maskz_loadu_ps(mask, x + i);
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) {
      sums[r] = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(mask, w + r * k + i), sums[r]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r) y[r] = _mm512_reduce_add_ps(sums[r]);
}

W8A8_AVX2 inline float ReduceAdd(__m256 v) {
  const __m128 halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
  return _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)));
}

template <int kRows>
W8A8_AVX2 void DotRowsAvx2(const float* x, const float* w, float* y, int64_t k) {
  __m256 sums[kRows];
#pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r) sums[r] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    const __m256 xv = _mm256_loadu_ps(x + i);
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) {
      sums[r] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + r * k + i), sums[r]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r) {
    float sum = ReduceAdd(sums[r]);
    for (int64_t j = i; j < k; ++j) sum += x[j] * w[r * k + j];
    y[r] = sum;
  }
}

}  // namespace

void DotColumnsAvx512(const float* x, const float* w, float* y, int64_t k, int64_t col_begin,
                      int64_t col_end) {
  int64_t col = col_begin;
  for (; col + 4 <= col_end; col += 4) DotRowsAvx512<4>(x, w + col * k, y + col, k);
  for (; col < col_end; ++col) DotRowsAvx512<1>(x, w + col * k, y + col, k);
}

void DotColumnsAvx2(const float* x, const float* w, float* y, int64_t k, int64_t col_begin,
                    int64_t col_end) {
  int64_t col = col_begin;
  for (; col + 4 <= col_end; col += 4) DotRowsAvx2<4>(x, w + col * k, y + col, k);
  for (; col < col_end; ++col) DotRowsAvx2<1>(x, w + col * k, y + col, k);
}

}  // namespace w8a8::kernels::internal
