// Per-row kernels for quantization and the fused kernels: plain C++, AVX2 and AVX-512. Only
// functions marked W8A8_AVX2 or W8A8_AVX512 use those instruction sets.
#include "kernels/row_kernels.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>

// GCC 12 reports the deliberately undefined pass-through operands inside avx512fintrin.h
// (for example in _mm512_cvtepi32_ps) as uninitialized.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "kernels/simd_exp.h"

#define W8A8_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#define W8A8_AVX2 __attribute__((target("avx2,fma")))

namespace w8a8::kernels::internal {
namespace {

// ---- Plain C++, the definition the SIMD versions match.

float MaxAbsScalar(const float* x, int64_t count) {
  float max_abs = 0.0f;
  for (int64_t i = 0; i < count; ++i) max_abs = std::max(max_abs, std::fabs(x[i]));
  return max_abs;
}

int8_t QuantizeValue(float x, float inverse) {
  const float rounded = std::nearbyint(x * inverse);
  return static_cast<int8_t>(std::clamp(rounded, -127.0f, 127.0f));
}

void QuantizeScalar(const float* x, int64_t count, float inverse, int8_t* q) {
  for (int64_t i = 0; i < count; ++i) q[i] = QuantizeValue(x[i], inverse);
}

double SumSquaresScalar(const float* x, int64_t count) {
  double sum = 0.0;
  for (int64_t i = 0; i < count; ++i) sum += double{x[i]} * double{x[i]};
  return sum;
}

float ScaleMultiplyScalar(const float* x, const float* weight, float factor, int64_t count,
                          float* out) {
  float max_abs = 0.0f;
  for (int64_t i = 0; i < count; ++i) {
    out[i] = x[i] * factor * weight[i];
    max_abs = std::max(max_abs, std::fabs(out[i]));
  }
  return max_abs;
}

float SiluMultiplyScalar(const float* gate, const float* up, int64_t count, float* out) {
  float max_abs = 0.0f;
  for (int64_t i = 0; i < count; ++i) {
    out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
    max_abs = std::max(max_abs, std::fabs(out[i]));
  }
  return max_abs;
}

// ---- AVX2.

W8A8_AVX2 float MaxAbsAvx2(const float* x, int64_t count) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 max_abs = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, max_abs);
  float result = 0.0f;
  for (float lane : lanes) result = std::max(result, lane);
  for (; i < count; ++i) result = std::max(result, std::fabs(x[i]));
  return result;
}

W8A8_AVX2 void QuantizeAvx2(const float* x, int64_t count, float inverse, int8_t* q) {
  const __m256 factor = _mm256_set1_ps(inverse);
  const __m256i low = _mm256_set1_epi32(-127);
  const __m256i high = _mm256_set1_epi32(127);
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    // vcvtps2dq rounds half to even under the default MXCSR rounding mode, like nearbyint.
    __m256i values = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), factor));
    values = _mm256_min_epi32(_mm256_max_epi32(values, low), high);
    // Narrow 8 int32 to 8 int8: packs work within 128-bit lanes, so gather the two lanes'
    // halves first.
    const __m256i words = _mm256_packs_epi32(values, values);
    const __m256i ordered = _mm256_permute4x64_epi64(words, 0b00001000);
    const __m128i bytes = _mm_packs_epi16(_mm256_castsi256_si128(ordered),
                                          _mm256_castsi256_si128(ordered));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + i), bytes);
  }
  for (; i < count; ++i) q[i] = QuantizeValue(x[i], inverse);
}

W8A8_AVX2 double SumSquaresAvx2(const float* x, int64_t count) {
  __m256d sums = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 4 <= count; i += 4) {
    const __m256d values = _mm256_cvtps_pd(_mm_loadu_ps(x + i));
    sums = _mm256_fmadd_pd(values, values, sums);
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, sums);
  double sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  for (; i < count; ++i) sum += double{x[i]} * double{x[i]};
  return sum;
}

W8A8_AVX2 float ScaleMultiplyAvx2(const float* x, const float* weight, float factor,
                                  int64_t count, float* out) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 factors = _mm256_set1_ps(factor);
  __m256 max_abs = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256 values =
        _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), factors), _mm256_loadu_ps(weight + i));
    _mm256_storeu_ps(out + i, values);
    max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign, values));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, max_abs);
  float result = 0.0f;
  for (float lane : lanes) result = std::max(result, lane);
  return std::max(result, ScaleMultiplyScalar(x + i, weight + i, factor, count - i, out + i));
}

// ---- AVX-512.

W8A8_AVX512 inline __mmask16 TailMask(int64_t remaining) {
  return static_cast<__mmask16>((1u << remaining) - 1u);
}

W8A8_AVX512 float MaxAbsAvx512(const float* x, int64_t count) {
  __m512 max_abs = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    max_abs = _mm512_max_ps(max_abs, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
  }
  if (i < count) {
    max_abs = _mm512_max_ps(max_abs, _mm512_abs_ps(_mm512_maskz_loadu_ps(TailMask(count - i),
                                                                         x + i)));
  }
  return _mm512_reduce_max_ps(max_abs);
}

W8A8_AVX512 inline __m128i QuantizeVector(__m512 x, __m512 factor) {
  // vcvtps2dq rounds half to even under the default MXCSR rounding mode, like nearbyint.
  __m512i values = _mm512_cvtps_epi32(_mm512_mul_ps(x, factor));
  values = _mm512_min_epi32(_mm512_max_epi32(values, _mm512_set1_epi32(-127)),
                            _mm512_set1_epi32(127));
  return _mm512_cvtsepi32_epi8(values);
}

W8A8_AVX512 void QuantizeAvx512(const float* x, int64_t count, float inverse, int8_t* q) {
  const __m512 factor = _mm512_set1_ps(inverse);
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i),
                     QuantizeVector(_mm512_loadu_ps(x + i), factor));
  }
  if (i < count) {
    const __mmask16 mask = TailMask(count - i);
    _mm_mask_storeu_epi8(q + i, mask, QuantizeVector(_mm512_maskz_loadu_ps(mask, x + i), factor));
  }
}

W8A8_AVX512 double SumSquaresAvx512(const float* x, int64_t count) {
  __m512d sums = _mm512_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m512d values = _mm512_cvtps_pd(_mm256_loadu_ps(x + i));
    sums = _mm512_fmadd_pd(values, values, sums);
  }
  double sum = _mm512_reduce_add_pd(sums);
  for (; i < count; ++i) sum += double{x[i]} * double{x[i]};
  return sum;
}

W8A8_AVX512 float ScaleMultiplyAvx512(const float* x, const float* weight, float factor,
                                      int64_t count, float* out) {
  const __m512 factors = _mm512_set1_ps(factor);
  __m512 max_abs = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i < count; i += 16) {
    const __mmask16 mask = count - i >= 16 ? static_cast<__mmask16>(0xffff) : TailMask(count - i);
    const __m512 values = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(mask, x + i), factors),
                                        _mm512_maskz_loadu_ps(mask, weight + i));
    _mm512_mask_storeu_ps(out + i, mask, values);
    max_abs = _mm512_max_ps(max_abs, _mm512_abs_ps(values));
  }
  return _mm512_reduce_max_ps(max_abs);
}

W8A8_AVX512 float SiluMultiplyAvx512(const float* gate, const float* up, int64_t count,
                                     float* out) {
  const __m512 one = _mm512_set1_ps(1.0f);
  __m512 max_abs = _mm512_setzero_ps();
  for (int64_t i = 0; i < count; i += 16) {
    const __mmask16 mask = count - i >= 16 ? static_cast<__mmask16>(0xffff) : TailMask(count - i);
    const __m512 g = _mm512_maskz_loadu_ps(mask, gate + i);
    const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, ExpAvx512(_mm512_sub_ps(
                                                                _mm512_setzero_ps(), g))));
    const __m512 values = _mm512_mul_ps(silu, _mm512_maskz_loadu_ps(mask, up + i));
    _mm512_mask_storeu_ps(out + i, mask, values);
    max_abs = _mm512_max_ps(max_abs, _mm512_abs_ps(values));
  }
  return _mm512_reduce_max_ps(max_abs);
}

constexpr RowKernels kScalarKernels = {MaxAbsScalar, QuantizeScalar, SumSquaresScalar,
                                       ScaleMultiplyScalar, SiluMultiplyScalar};
// NOTE: AVX2 SiLU uses the plain loop with std::exp, which the compiler does not vectorize.
constexpr RowKernels kAvx2Kernels = {MaxAbsAvx2, QuantizeAvx2, SumSquaresAvx2,
                                     ScaleMultiplyAvx2, SiluMultiplyScalar};
constexpr RowKernels kAvx512Kernels = {MaxAbsAvx512, QuantizeAvx512, SumSquaresAvx512,
                                       ScaleMultiplyAvx512, SiluMultiplyAvx512};

}  // namespace

const RowKernels& RowKernelsFor(Isa isa) {
  switch (isa) {
    case Isa::kAvx2:
      return kAvx2Kernels;
    case Isa::kAvx512Vnni:
      return kAvx512Kernels;
    case Isa::kScalar:
      break;
  }
  return kScalarKernels;
}

}  // namespace w8a8::kernels::internal
