// AVX2 loops over packed int8 weights, for CPUs without AVX-512 VNNI. AVX2 has no u8 x s8
// dot product that cannot saturate, so both operands are widened to int16 and multiplied with
// vpmaddwd. Only functions marked W8A8_AVX2 use AVX2.
#include <immintrin.h>

#include <cstring>

#include "kernels/int8_packed.h"

#define W8A8_AVX2 __attribute__((target("avx2,fma")))

namespace w8a8::kernels::internal {
namespace {

// Sums the two adjacent int32 lanes that belong to each output row: `low` holds rows 0-3 and
// `high` rows 4-7 of a half block, two lanes per row, and the result holds rows 0-7 in order.
W8A8_AVX2 inline __m256i SumLanePairs(__m256i low, __m256i high) {
  // hadd gives rows [0, 1, 4, 5 | 2, 3, 6, 7] by 128-bit lane, so 64-bit elements 1 and 2 swap.
  const __m256i sums = _mm256_hadd_epi32(low, high);
  return _mm256_permute4x64_epi64(sums, 0b11011000);
}

// One row of x against one block of kPackRows output rows.
W8A8_AVX2 void RunBlockRow(const PackedInt8Weights& packed, const uint8_t* xa, float x_scale,
                           int64_t block, float* y) {
  const int64_t groups = packed.groups;
  const int8_t* weights = packed.BlockWeights(block);
  const int32_t* compensation = packed.compensation.data() + block * groups * kPackRows;
  const float* scales = packed.scales.data() + block * groups * kPackRows;

  __m256 sums_low = _mm256_setzero_ps();   // Rows 0-7 of the block.
  __m256 sums_high = _mm256_setzero_ps();  // Rows 8-15.
  int64_t step = 0;
  for (int64_t group = 0; group < groups; ++group) {
    // dots[i] contains rows 4i..4i+3, two int32 lanes each.
    __m256i dots[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                       _mm256_setzero_si256()};
    const int64_t group_end = step + packed.group_steps[group];
    for (; step < group_end; ++step) {
      int32_t word;
      std::memcpy(&word, xa + step * kPackDepth, sizeof(word));
      const __m128i x16 = _mm_cvtepu8_epi16(_mm_cvtsi32_si128(word));
      const __m256i x = _mm256_broadcastq_epi64(x16);
      const int8_t* line = weights + step * kQuadStepBytes;
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
        const __m128i w8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(line + 16 * i));
        const __m256i w = _mm256_cvtepi8_epi16(w8);
        dots[i] = _mm256_add_epi32(dots[i], _mm256_madd_epi16(w, x));
      }
    }
    const __m256i rows_low = _mm256_add_epi32(
        SumLanePairs(dots[0], dots[1]),
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(compensation + group * kPackRows)));
    const __m256i rows_high = _mm256_add_epi32(
        SumLanePairs(dots[2], dots[3]),
        _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(compensation + group * kPackRows + 8)));
    sums_low = _mm256_fmadd_ps(_mm256_cvtepi32_ps(rows_low),
                               _mm256_loadu_ps(scales + group * kPackRows), sums_low);
    sums_high = _mm256_fmadd_ps(_mm256_cvtepi32_ps(rows_high),
                                _mm256_loadu_ps(scales + group * kPackRows + 8), sums_high);
  }

  alignas(32) float out[kPackRows];
  const __m256 scale = _mm256_set1_ps(x_scale);
  _mm256_store_ps(out, _mm256_mul_ps(sums_low, scale));
  _mm256_store_ps(out + 8, _mm256_mul_ps(sums_high, scale));
  const int64_t column = block * kPackRows;
  const int64_t valid = packed.n - column < kPackRows ? packed.n - column : kPackRows;
  std::memcpy(y + column, out, static_cast<size_t>(valid) * sizeof(float));
}

}  // namespace

void RunPackedAvx2(const PackedInt8Weights& packed, const uint8_t* xa, const float* x_scales,
                   int64_t rows, int64_t block_begin, int64_t block_end, float* y) {
  // Blocks outside, rows inside: a block's weights stay in L1/L2 while every row reuses them.
  for (int64_t block = block_begin; block < block_end; ++block) {
    for (int64_t row = 0; row < rows; ++row) {
      RunBlockRow(packed, xa + row * packed.padded_k(), x_scales[row], block, y + row * packed.n);
    }
  }
}

}  // namespace w8a8::kernels::internal
