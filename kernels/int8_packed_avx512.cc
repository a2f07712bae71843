// AVX-512 VNNI loops over packed int8 weights. Only functions marked W8A8_AVX512 use AVX-512,
// so the rest of the library still runs on CPUs without it.
#include <immintrin.h>

#include <cstring>

#include "kernels/int8_packed.h"

// GCC 12 reports the deliberately undefined pass-through operand inside _mm512_cvtepi32_ps
// (avx512fintrin.h) as maybe uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define W8A8_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma")))

namespace w8a8::kernels::internal {
namespace {

W8A8_AVX512 inline __m512i BroadcastFourBytes(const uint8_t* bytes) {
  int32_t word;
  std::memcpy(&word, bytes, sizeof(word));
  return _mm512_set1_epi32(word);
}

// Computes a tile of kRows rows of x by kBlocks consecutive column blocks. It keeps
// kRows * kBlocks int32 accumulators for the current group and as many FP32 accumulators over
// all groups. They and the weight and broadcast registers must fit in the 32 zmm registers.
template <int kRows, int kBlocks>
W8A8_AVX512 void RunTile(const PackedInt8Weights& packed, const uint8_t* xa,
                         const float* x_scales, int64_t block, float* y) {
  static_assert(kRows * kBlocks * 2 + kBlocks + 1 <= 32);
  const int64_t steps = packed.steps;
  const int64_t groups = packed.groups;
  const int64_t padded_k = packed.padded_k();
  const int8_t* block_weights = packed.weights.data() + block * steps * kPackRows * kPackDepth;
  const int32_t* compensation = packed.compensation.data() + block * groups * kPackRows;
  const float* scales = packed.scales.data() + block * groups * kPackRows;
  const int64_t block_stride = steps * kPackRows * kPackDepth;
  const int64_t table_stride = groups * kPackRows;

  __m512 sums[kRows][kBlocks];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 4
    for (int b = 0; b < kBlocks; ++b) sums[r][b] = _mm512_setzero_ps();
  }

  int64_t step = 0;
  for (int64_t group = 0; group < groups; ++group) {
    __m512i dots[kRows][kBlocks];
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 4
      for (int b = 0; b < kBlocks; ++b) dots[r][b] = _mm512_setzero_si512();
    }
    const int64_t group_end = step + packed.group_steps[group];
    for (; step < group_end; ++step) {
      __m512i w[kBlocks];
#pragma GCC unroll 4
      for (int b = 0; b < kBlocks; ++b) {
        w[b] = _mm512_loadu_si512(block_weights + b * block_stride + step * 64);
      }
#pragma GCC unroll 8
      for (int r = 0; r < kRows; ++r) {
        const __m512i x = BroadcastFourBytes(xa + r * padded_k + step * kPackDepth);
#pragma GCC unroll 4
        for (int b = 0; b < kBlocks; ++b) dots[r][b] = _mm512_dpbusd_epi32(dots[r][b], x, w[b]);
      }
    }
#pragma GCC unroll 4
    for (int b = 0; b < kBlocks; ++b) {
      const __m512i offset =
          _mm512_loadu_si512(compensation + b * table_stride + group * kPackRows);
      const __m512 scale = _mm512_loadu_ps(scales + b * table_stride + group * kPackRows);
#pragma GCC unroll 8
      for (int r = 0; r < kRows; ++r) {
        const __m512 dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(dots[r][b], offset));
        sums[r][b] = _mm512_fmadd_ps(dot, scale, sums[r][b]);
      }
    }
  }

  const int64_t n = packed.n;
#pragma GCC unroll 4
  for (int b = 0; b < kBlocks; ++b) {
    const int64_t column = (block + b) * kPackRows;
    const int64_t valid = n - column < kPackRows ? n - column : kPackRows;
    const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1u);
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const __m512 out = _mm512_mul_ps(sums[r][b], _mm512_set1_ps(x_scales[r]));
      _mm512_mask_storeu_ps(y + r * n + column, mask, out);
    }
  }
}

// Runs the blocks [block_begin, block_end) for kRows rows, kBlocks blocks at a time.
template <int kRows, int kBlocks>
W8A8_AVX512 void RunRows(const PackedInt8Weights& packed, const uint8_t* xa,
                         const float* x_scales, int64_t block_begin, int64_t block_end,
                         float* y) {
  int64_t block = block_begin;
  for (; block + kBlocks <= block_end; block += kBlocks) {
    RunTile<kRows, kBlocks>(packed, xa, x_scales, block, y);
  }
  for (; block < block_end; ++block) RunTile<kRows, 1>(packed, xa, x_scales, block, y);
}

}  // namespace

void RunPackedAvx512(const PackedInt8Weights& packed, const uint8_t* xa, const float* x_scales,
                     int64_t rows, int64_t block_begin, int64_t block_end, float* y) {
  // One row (decode) streams the weights once: four blocks keep four independent vpdpbusd
  // chains in flight. More rows reuse each loaded weight line for up to six rows.
  if (rows == 1) {
    RunRows<1, 4>(packed, xa, x_scales, block_begin, block_end, y);
    return;
  }
  const int64_t padded_k = packed.padded_k();
  const int64_t n = packed.n;
  int64_t row = 0;
  for (; row + 6 <= rows; row += 6) {
    RunRows<6, 2>(packed, xa + row * padded_k, x_scales + row, block_begin, block_end,
                  y + row * n);
  }
  const uint8_t* rest_xa = xa + row * padded_k;
  const float* rest_scales = x_scales + row;
  float* rest_y = y + row * n;
  switch (rows - row) {
    case 5:
      RunRows<5, 2>(packed, rest_xa, rest_scales, block_begin, block_end, rest_y);
      break;
    case 4:
      RunRows<4, 2>(packed, rest_xa, rest_scales, block_begin, block_end, rest_y);
      break;
    case 3:
      RunRows<3, 2>(packed, rest_xa, rest_scales, block_begin, block_end, rest_y);
      break;
    case 2:
      RunRows<2, 4>(packed, rest_xa, rest_scales, block_begin, block_end, rest_y);
      break;
    case 1:
      RunRows<1, 4>(packed, rest_xa, rest_scales, block_begin, block_end, rest_y);
      break;
    default:
      break;
  }
}

}  // namespace w8a8::kernels::internal
