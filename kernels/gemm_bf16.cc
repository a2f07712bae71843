#include "kernels/gemm_bf16.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
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

// For up to kMaxSmallM rows of x, each tile of rows of w is read from memory once and used for
// every row of x, at most kRowsPerPass rows at a time. Passes after the first read it from L1.
// Passes of 4 rows against 4 rows of w load each input of x into a register for 4 FMAs. With
// 8 rows against 2 rows of w, GCC folded each load of x into both FMAs that use it, and on a
// 2-core Xeon (Ice Lake, no AMX) 128256 x 2048 then took 1.3 to 1.5x as long at m = 8 and 16
// (bench/kernel_bench.cc, Bf16LmHead).
constexpr int64_t kMaxSmallM = 16;
constexpr int64_t kRowsPerPass = 4;
// Inputs of one step: 32 BF16 weights, one 64-byte load per row of w.
constexpr int64_t kStepInputs = 32;
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

// Copies the rows of x into `out` [m, padded_k] in the order in which a step widens the
// weights. A 64-byte load contains 32 BF16 weights, two per 32-bit lane: shifting each lane left
// by 16 bits gives the even inputs as FP32, clearing its low 16 bits gives the odd ones, and
// neither needs a shuffle. So each step of 32 inputs of x is stored as its 16 even inputs,
// then its 16 odd ones. The padding up to padded_k, a multiple of 32, is zero.
void InterleaveInputs(const float* x, int64_t m, int64_t k, int64_t padded_k, float* out) {
  for (int64_t r = 0; r < m; ++r) {
    const float* in = x + r * k;
    float* row = out + r * padded_k;
    std::fill(row, row + padded_k, 0.0f);
    for (int64_t i = 0; i < k; ++i) {
      const int64_t step_begin = i / kStepInputs * kStepInputs;
      const int64_t lane = (i % kStepInputs) / 2;
      row[step_begin + (i % 2) * 16 + lane] = in[i];
    }
  }
}

// Computes y for kW rows of w from row `col` on (`rows` of them, fewer at the end) against kM
// rows of x, interleaved by InterleaveInputs. Every (row of x, row of w) pair has its own
// accumulator. Each step prefetches the same inputs kW rows further on, which the next tile
// of the thread reads. A row of w is only a few KiB, and this prefetch measured 1.1 to 1.15x
// faster at m = 8 on the 128256 x 2048 matrix, with the earlier tiles of 8 rows of x against
// 2 rows of w on a Xeon with AMX (bench/kernel_bench.cc, Bf16LmHead).
template <int kM, int kW>
W8A8_AVX512 void SmallMTile(const float* x, int64_t padded_k, const uint16_t* w, int64_t k,
                            float* y, int64_t n, int64_t col, int64_t rows) {
  static_assert(kM * kW <= 16);
  __m512 sums[kM][kW];
  const uint16_t* w_rows[kW];
#pragma GCC unroll 8
  for (int j = 0; j < kW; ++j) {
    // Rows past the end repeat the last row. Their sums are not stored.
    w_rows[j] = w + (col + std::min<int64_t>(j, rows - 1)) * k;
#pragma GCC unroll 8
    for (int r = 0; r < kM; ++r) sums[r][j] = _mm512_setzero_ps();
  }
  const __m512i high_half = _mm512_set1_epi32(static_cast<int32_t>(0xffff0000u));
  for (int64_t i = 0; i < k; i += kStepInputs) {
    const __mmask32 mask = k - i >= kStepInputs
                               ? static_cast<__mmask32>(0xffffffffu)
                               : static_cast<__mmask32>((1u << (k - i)) - 1u);
    __m512 even[kW];
    __m512 odd[kW];
#pragma GCC unroll 8
    for (int j = 0; j < kW; ++j) {
      // Past the last tile this prefetches beyond w, which cannot fault. The address is
      // computed as an integer because a pointer past the end of w would be undefined.
      const uintptr_t ahead = reinterpret_cast<uintptr_t>(w_rows[j] + i) +
                              static_cast<uintptr_t>(kW * k) * sizeof(uint16_t);
      _mm_prefetch(reinterpret_cast<const char*>(ahead), _MM_HINT_T0);
      const __m512i pairs = _mm512_maskz_loadu_epi16(mask, w_rows[j] + i);
      even[j] = _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16));
      odd[j] = _mm512_castsi512_ps(_mm512_and_si512(pairs, high_half));
    }
#pragma GCC unroll 8
    for (int r = 0; r < kM; ++r) {
      const __m512 x_even = _mm512_load_ps(x + r * padded_k + i);
      const __m512 x_odd = _mm512_load_ps(x + r * padded_k + i + 16);
#pragma GCC unroll 8
      for (int j = 0; j < kW; ++j) {
        sums[r][j] = _mm512_fmadd_ps(x_even, even[j], sums[r][j]);
        sums[r][j] = _mm512_fmadd_ps(x_odd, odd[j], sums[r][j]);
      }
    }
  }
  // Indexing sums by the runtime `rows` would make GCC keep them in memory, so every loop over
  // them is unrolled and the stores read a plain array.
  float totals[kM][kW];
#pragma GCC unroll 8
  for (int r = 0; r < kM; ++r) {
#pragma GCC unroll 8
    for (int j = 0; j < kW; ++j) totals[r][j] = _mm512_reduce_add_ps(sums[r][j]);
  }
  for (int r = 0; r < kM; ++r) {
    for (int64_t j = 0; j < rows; ++j) y[r * n + col + j] = totals[r][j];
  }
}

// Runs `count` rows of x against one tile of w on the tile of exactly that many rows, trying
// kM = 1, 2, ... in turn. SmallMAvx512 picks kW so that count * kW <= 16.
template <int kW, int kM = 1>
W8A8_AVX512 void SmallMPass(const float* x, int64_t padded_k, const uint16_t* w, int64_t k,
                            float* y, int64_t n, int64_t col, int64_t rows, int64_t count) {
  if constexpr (kM * kW <= 16 && kM <= kRowsPerPass) {
    if (count == kM) return SmallMTile<kM, kW>(x, padded_k, w, k, y, n, col, rows);
    return SmallMPass<kW, kM + 1>(x, padded_k, w, k, y, n, col, rows, count);
  } else {
    // Unreachable: no count that SmallMAvx512 passes gets this far.
    std::abort();
  }
}

// Splits the tiles of kW rows of w among threads. Each tile runs every row of x, kRowsPerPass
// at a time.
template <int kW>
W8A8_AVX512 void SmallMColumns(const float* x, int64_t padded_k, const uint16_t* w, float* y,
                               int64_t m, int64_t n, int64_t k) {
  const int64_t tiles = (n + kW - 1) / kW;
#pragma omp parallel for schedule(static)
  for (int64_t tile = 0; tile < tiles; ++tile) {
    const int64_t col = tile * kW;
    const int64_t rows = std::min<int64_t>(kW, n - col);
    for (int64_t first = 0; first < m; first += kRowsPerPass) {
      SmallMPass<kW>(x + first * padded_k, padded_k, w, k, y + first * n, n, col, rows,
                     std::min(kRowsPerPass, m - first));
    }
  }
}

W8A8_AVX512 void SmallMAvx512(const float* x, const uint16_t* w, float* y, int64_t m, int64_t n,
                              int64_t k) {
  const int64_t padded_k = (k + kStepInputs - 1) / kStepInputs * kStepInputs;
  // 64-byte aligned, as the aligned loads of x in SmallMTile require (and no load straddles two
  // cache lines). The buffer is thread_local, so the workers get the caller's through a plain
  // pointer.
  thread_local std::vector<float> interleaved;
  constexpr int64_t kLineFloats = 16;
  interleaved.resize(static_cast<size_t>(m * padded_k + kLineFloats));
  const uintptr_t address = reinterpret_cast<uintptr_t>(interleaved.data());
  float* xi = interleaved.data() + (kLineFloats - address / sizeof(float) % kLineFloats) %
                                       kLineFloats;
  InterleaveInputs(x, m, k, padded_k, xi);
  // At most 16 accumulators and 2 * kW widened weight registers per tile, so that all stay in
  // the 32 vector registers. More rows of w are more weight streams per thread.
  if (m == 1) {
    SmallMColumns<8>(xi, padded_k, w, y, m, n, k);
  } else {
    SmallMColumns<4>(xi, padded_k, w, y, m, n, k);
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
