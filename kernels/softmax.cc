#include "kernels/softmax.h"

#include <immintrin.h>

#include <cmath>

#include "kernels/simd_exp.h"

// GCC 12 reports the deliberately undefined pass-through operands inside avx512fintrin.h as
// uninitialized.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace w8a8::kernels {
namespace {

__attribute__((target("avx512f"))) double ExpSumAvx512(const float* x, int64_t count,
                                                         float shift, float scale, float* out) {
  const __m512 shift_vector = _mm512_set1_ps(shift);
  const __m512 scale_vector = _mm512_set1_ps(scale);
  // Two FP64 accumulators of 8 lanes each take the 16 FP32 exponentials of a step.
  __m512d sum_low = _mm512_setzero_pd();
  __m512d sum_high = _mm512_setzero_pd();
  for (int64_t i = 0; i < count; i += 16) {
    const __mmask16 mask = count - i >= 16 ? static_cast<__mmask16>(0xffff)
                                           : static_cast<__mmask16>((1u << (count - i)) - 1u);
    const __m512 values = _mm512_maskz_loadu_ps(mask, x + i);
    const __m512 exps = _mm512_maskz_mov_ps(
        mask, internal::ExpAvx512(_mm512_mul_ps(_mm512_sub_ps(values, shift_vector),
                                                scale_vector)));
    _mm512_mask_storeu_ps(out + i, mask, exps);
    sum_low = _mm512_add_pd(sum_low, _mm512_cvtps_pd(_mm512_castps512_ps256(exps)));
    const __m256 high_half = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(exps), 1));
    sum_high = _mm512_add_pd(sum_high, _mm512_cvtps_pd(high_half));
  }
  return _mm512_reduce_add_pd(_mm512_add_pd(sum_low, sum_high));
}

double ExpSumScalar(const float* x, int64_t count, float shift, float scale, float* out) {
  double sum = 0.0;
  for (int64_t i = 0; i < count; ++i) {
    const float argument = (x[i] - shift) * scale;
    out[i] = static_cast<float>(std::exp(static_cast<double>(argument)));
    sum += out[i];
  }
  return sum;
}

}  // namespace

double ExpSum(const float* x, int64_t count, float shift, float scale, float* out) {
  return ExpSum(ActiveIsa(), x, count, shift, scale, out);
}

double ExpSum(Isa isa, const float* x, int64_t count, float shift, float scale, float* out) {
  if (isa == Isa::kAvx512Vnni) return ExpSumAvx512(x, count, shift, scale, out);
  return ExpSumScalar(x, count, shift, scale, out);
}

}  // namespace w8a8::kernels
