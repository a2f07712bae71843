#include "kernels/gemm_bf16.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/gemm.h"

// GCC 12 reports the deliberately undefined pass-through operands inside avx512fintrin.h as
// uninitialized.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define W8A8_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#define W8A8_AMX_BF16 __attribute__((target("amx-tile,amx-bf16")))

namespace w8a8::kernels {
namespace {

// Rows of the matrix per tile, and BF16 values per pair of columns in a tile.
constexpr int64_t kTileRows = 32;
constexpr int64_t kPairValues = 2 * kTileRows;
// Rows of x per pass over one tile. 8 rows x 32 rows of the matrix are 16 accumulators, so
// they fit the 32 vector registers with the widened weights and the broadcast inputs. Passes
// over 2, 4 or 8 tiles take 4, 2 or 1 rows, for the same 16 accumulators.
constexpr int64_t kPassRows = 8;
// Rows of x that share one read of the matrix from memory: as many as fit in this many bytes
// (part of the L2 cache, which also stores the tile), at least 16.
constexpr int64_t kBlockBytes = 512 * 1024;
// On the kAvx2 and kScalar paths, m up to this runs the plain loop, and larger m converts
// blocks of kConvertRows rows for GemmF32 (1024 rows of 8192 columns are 32 MiB).
constexpr int64_t kPlainMaxM = 16;
constexpr int64_t kConvertRows = 1024;

// Distance of the software prefetch of the weights into L1. Passes over one or two tiles
// (m >= 3) always prefetch. Without it, a pass of 8 rows of x over the 128256 x 2048 matrix
// took 1.3x as long (34 against 25.5 ms on 2 threads of a Xeon without AMX,
// bench/kernel_bench.cc Bf16LmHead/m=8); 1 KiB and 4 KiB were no faster, and prefetching into
// L2 only was slower. Passes over 4 or 8 tiles (m <= 2) prefetch only where AMX is usable. On
// the Xeon without AMX the hardware prefetchers kept up, and the prefetch made m = 1 slower
// (20 against 18 ms). On a Xeon with AMX it made m = 1 and 2 faster (medians of four runs
// 17.9 against 20.7 ms and 16.1 against 19.2 ms), and one-sequence decode of the Llama-3.2-1B
// shape 1.02 to 1.09x as fast (four runs). AmxBf16Usable() is the test for that later
// generation. NOTE: a CPU with AMX whose tile state Linux does not grant to this process keeps
// the loop without the prefetch. The address may lie past the end of the matrix, where a
// prefetch cannot fault.
constexpr uintptr_t kPrefetchBytes = 2048;

// Computes y for the 32 rows of tile `tile` against m rows of x, without vector intrinsics.
// NOTE: kAvx2 runs this loop too, at whatever width the compiler vectorizes it for the
// baseline ISA.
void PlainTile(const float* x, int64_t m, int64_t k, int64_t pairs, const uint16_t* tile_values,
               float* y, int64_t n, int64_t tile) {
  const int64_t first_row = tile * kTileRows;
  const int64_t valid = std::min(kTileRows, n - first_row);
  for (int64_t r = 0; r < m; ++r) {
    float sums[kTileRows] = {};
    const float* in = x + r * k;
    for (int64_t p = 0; p < pairs; ++p) {
      const uint16_t* values = tile_values + p * kPairValues;
      const float even = in[2 * p];
      // The column past an odd last column is zero in the matrix, but x has no input there.
      const float odd = 2 * p + 1 < k ? in[2 * p + 1] : 0.0f;
      for (int64_t row = 0; row < kTileRows; ++row) {
        sums[row] += even * Bf16ToFloat(values[2 * row]) + odd * Bf16ToFloat(values[2 * row + 1]);
      }
    }
    std::memcpy(y + r * n + first_row, sums, sizeof(float) * static_cast<size_t>(valid));
  }
}

// Computes y for kT tiles from `tile` on (`count` of them, fewer at the end) against kM rows
// of x. Each (row of x, 16 rows of the matrix) has one accumulator. kPrefetch adds the
// software prefetch of the weights.
template <int kM, int kT, bool kPrefetch>
W8A8_AVX512 void Avx512Tiles(const float* x, int64_t k, int64_t pairs, const uint16_t* packed,
                             float* y, int64_t n, int64_t tile, int64_t count) {
  static_assert(kM * kT * 2 <= 16);
  __m512 sums[kM][kT][2];
  const uint16_t* tiles[kT];
#pragma GCC unroll 8
  for (int j = 0; j < kT; ++j) {
    // Tiles past the end repeat the last one. Their sums are not stored.
    tiles[j] = packed + (tile + std::min<int64_t>(j, count - 1)) * pairs * kPairValues;
#pragma GCC unroll 8
    for (int r = 0; r < kM; ++r) {
      sums[r][j][0] = _mm512_setzero_ps();
      sums[r][j][1] = _mm512_setzero_ps();
    }
  }
  const __m512i high_half = _mm512_set1_epi32(static_cast<int32_t>(0xffff0000u));
  const int64_t full_pairs = k / 2;
  for (int64_t p = 0; p < full_pairs; ++p) {
    __m512 even[kT][2];
    __m512 odd[kT][2];
#pragma GCC unroll 8
    for (int j = 0; j < kT; ++j) {
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        if constexpr (kPrefetch) {
          const uintptr_t ahead =
              reinterpret_cast<uintptr_t>(tiles[j] + p * kPairValues + h * 32) + kPrefetchBytes;
          _mm_prefetch(reinterpret_cast<const char*>(ahead), _MM_HINT_T0);
        }
        const __m512i values = _mm512_load_si512(tiles[j] + p * kPairValues + h * 32);
        even[j][h] = _mm512_castsi512_ps(_mm512_slli_epi32(values, 16));
        odd[j][h] = _mm512_castsi512_ps(_mm512_and_si512(values, high_half));
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < kM; ++r) {
      const __m512 x_even = _mm512_set1_ps(x[r * k + 2 * p]);
      const __m512 x_odd = _mm512_set1_ps(x[r * k + 2 * p + 1]);
#pragma GCC unroll 8
      for (int j = 0; j < kT; ++j) {
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
          sums[r][j][h] = _mm512_fmadd_ps(x_even, even[j][h], sums[r][j][h]);
          sums[r][j][h] = _mm512_fmadd_ps(x_odd, odd[j][h], sums[r][j][h]);
        }
      }
    }
  }
  if (k % 2 != 0) {
    // The last column alone, because its pair partner is zero and x has no input there.
#pragma GCC unroll 8
    for (int j = 0; j < kT; ++j) {
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const __m512i values = _mm512_load_si512(tiles[j] + full_pairs * kPairValues + h * 32);
        const __m512 even = _mm512_castsi512_ps(_mm512_slli_epi32(values, 16));
#pragma GCC unroll 8
        for (int r = 0; r < kM; ++r) {
          sums[r][j][h] =
              _mm512_fmadd_ps(_mm512_set1_ps(x[r * k + k - 1]), even, sums[r][j][h]);
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < kT; ++j) {
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const int64_t first_row = (tile + j) * kTileRows + h * 16;
      const int64_t valid = std::min<int64_t>(16, n - first_row);
      // Repeats of the last tile start past the end, so they store nothing.
      if (valid <= 0) continue;
      const __mmask16 mask = valid >= 16 ? static_cast<__mmask16>(0xffff)
                                         : static_cast<__mmask16>((1u << valid) - 1u);
#pragma GCC unroll 8
      for (int r = 0; r < kM; ++r) {
        _mm512_mask_storeu_ps(y + r * n + first_row, mask, sums[r][j][h]);
      }
    }
  }
}

// Runs `rows` rows of x on the tile function of exactly that many rows, trying kM = 1, 2, ...
// in turn. Avx512Groups passes at most kPassRows / kT rows.
template <int kT, bool kPrefetch, int kM = 1>
W8A8_AVX512 void Avx512Pass(const float* x, int64_t k, int64_t pairs, const uint16_t* packed,
                            float* y, int64_t n, int64_t tile, int64_t count, int64_t rows) {
  if constexpr (kM <= kPassRows && kM * kT * 2 <= 16) {
    if (rows == kM) return Avx512Tiles<kM, kT, kPrefetch>(x, k, pairs, packed, y, n, tile, count);
    return Avx512Pass<kT, kPrefetch, kM + 1>(x, k, pairs, packed, y, n, tile, count, rows);
  } else {
    // Unreachable: no row count that Avx512Groups passes gets this far.
    std::abort();
  }
}

// Splits the groups of kT tiles among threads. Each group runs every row of x in a block, in
// passes of at most kPassRows / kT rows. The sizes of the passes differ by at most one, so no
// pass is left with too few accumulators to hide the latency of the FMAs.
template <int kT, bool kPrefetch>
W8A8_AVX512 void Avx512Groups(const float* x, int64_t m, int64_t k, int64_t pairs,
                              const uint16_t* packed, float* y, int64_t n) {
  const int64_t tiles = (n + kTileRows - 1) / kTileRows;
  const int64_t groups = (tiles + kT - 1) / kT;
  constexpr int64_t kRows = kPassRows / kT;
  const int64_t block_rows =
      std::max<int64_t>(2 * kPassRows, kBlockBytes / (static_cast<int64_t>(sizeof(float)) * k) /
                                           kPassRows * kPassRows);
  for (int64_t first = 0; first < m; first += block_rows) {
    const int64_t block = std::min(block_rows, m - first);
    const int64_t passes = (block + kRows - 1) / kRows;
#pragma omp parallel for schedule(static)
    for (int64_t group = 0; group < groups; ++group) {
      const int64_t tile = group * kT;
      const int64_t count = std::min<int64_t>(kT, tiles - tile);
      int64_t row = first;
      for (int64_t pass = 0; pass < passes; ++pass) {
        const int64_t left = first + block - row;
        const int64_t rows = (left + passes - pass - 1) / (passes - pass);
        Avx512Pass<kT, kPrefetch>(x + row * k, k, pairs, packed, y + row * n, n, tile, count, rows);
        row += rows;
      }
    }
  }
}

// Runs Avx512Groups<kT> with the software prefetch when `prefetch` is true.
template <int kT>
W8A8_AVX512 void Avx512GroupsPrefetchIf(bool prefetch, const float* x, int64_t m, int64_t k,
                                        int64_t pairs, const uint16_t* packed, float* y,
                                        int64_t n) {
  if (prefetch) {
    Avx512Groups<kT, true>(x, m, k, pairs, packed, y, n);
  } else {
    Avx512Groups<kT, false>(x, m, k, pairs, packed, y, n);
  }
}

W8A8_AVX512 void Avx512Multiply(const float* x, int64_t m, int64_t k, int64_t pairs,
                                const uint16_t* packed, float* y, int64_t n) {
  // Fewer rows of x leave registers for more tiles, which are more accumulators to hide the
  // FMA latency and more streams of weights per thread. At m = 8 and 16, passes of 4 rows
  // over 2 tiles took 1.1 to 1.9x as long as passes of 8 rows over one tile on the Xeon above
  // (Bf16LmHead/m=8 and 16).
  // See kPrefetchBytes for why AmxBf16Usable() decides the prefetch over 4 and 8 tiles.
  const bool prefetch_many_tiles = AmxBf16Usable();
  if (m == 1) {
    Avx512GroupsPrefetchIf<8>(prefetch_many_tiles, x, m, k, pairs, packed, y, n);
  } else if (m == 2) {
    Avx512GroupsPrefetchIf<4>(prefetch_many_tiles, x, m, k, pairs, packed, y, n);
  } else if (m <= 4) {
    Avx512Groups<2, true>(x, m, k, pairs, packed, y, n);
  } else {
    Avx512Groups<1, true>(x, m, k, pairs, packed, y, n);
  }
}

// AMX: each tile instruction multiplies up to 16 rows of x by 16 rows of the matrix over 32
// columns. A tile of B contains, for 16 pairs of columns, 16 rows of the matrix as two adjacent
// BF16 values each, which is half of a tile of this layout read with a stride of 128 bytes.
// The inputs are split into two BF16 parts, x = high + low with high = BF16(x) and low =
// BF16(x - high), and both go through the same accumulators. Each part has 8 significant
// bits, so the two leave out at most 2^-16 of |x|. Products of BF16 values are exact in FP32,
// so each term x * w is off by at most 2^-16 of its magnitude before the FP32 sums, against
// 2^-24 for GemmF32 and 2^-8 for a product on BF16 inputs alone. AMX adds in FP32 and flushes
// subnormal values to zero, so parts below 2^-126 are lost. An infinite input gives NaN (its
// low part is inf - inf). A third part would keep all 24 bits of x, but the product then
// took 1.04 to 1.45x as long at m = 8 to 512 (Bf16LmHead in bench/kernel_bench.cc, 2 threads
// of a Xeon with AMX).
constexpr int64_t kAmxRows = 16;   // rows of x per tile of A, and of C, at most
constexpr int64_t kAmxPairs = 16;  // pairs of columns per tile of B
constexpr int64_t kAmxParts = 2;   // BF16 parts of each input of x
// Bytes from one pair of columns to the next in a tile, and values of its first 16 rows.
constexpr int64_t kPairStride = kPairValues * static_cast<int64_t>(sizeof(uint16_t));
constexpr int64_t kHalfValues = kPairValues / 2;
// From this m on, the product runs on AMX where it can. On the same Xeon (Bf16LmHead against
// Bf16LmHeadNoAmx, three runs), the AVX-512 product took 1.02 to 1.05x as long as AMX at
// m = 8 and 1.5x as long at m = 16. At m = 5 to 7 the two were within noise of each other,
// and at m = 4 AMX was slower, so fewer rows keep the exact inputs of the AVX-512 path.
constexpr int64_t kAmxMinRows = 8;
// Each step prefetches the weights this far ahead into L2. On the same Xeon, with one tile per
// pass, AMX took 23 to 24 ms at m = 4, 8 and 16 without the prefetch. With it, m = 4 and 8 took
// 18.4 to 19.1 ms and m = 16 20.4 to 23.2 ms. Prefetching 1, 4 or 8 KiB ahead, or into L1, was
// no faster. The address may lie past the end of the matrix, where a prefetch cannot fault.
constexpr int64_t kAmxPrefetchBytes = 2048;

// The 64-byte operand of ldtilecfg: palette 1, then bytes per row and rows of each tile.
struct alignas(64) AmxTileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

// Computes y, threading with OpenMP over pairs of tiles of the matrix. `parts` contains the two
// parts of x one after the other, each as `part_values` row-major BF16 values with 2 * pairs
// columns, zero past column k and, for m > 16, past row m up to a multiple of 16 rows. Tile
// registers 0 to 3 accumulate the two halves of two tiles of the matrix, 4 and 5 hold the
// parts of x, and 6 and 7 the two halves of the first tile's step and then of the second's.
// Two tiles per pass read two streams of weights, and x is loaded once for both. On the Xeon
// with AMX, against one tile per pass (Bf16LmHead, three runs alternated), m = 64 took 46 to
// 51 ms against 54 to 58, and m = 512 303 to 310 ms against 438 to 455. At m = 8 and 16 the
// two were within noise (18 to 24 ms), and 16-sequence decode of the Llama-3.2-1B shape went
// from 193 to 209 tokens/s (medians of three runs). Each pair of tiles runs every block of up
// to 16 rows of x in turn, and the blocks after the first read the pair from cache (256 KiB at
// k = 2048). NOTE: at k = 8192 a pair is 1 MiB and shares L2 with the blocks of x, which was
// not measured. An odd last tile pairs with itself, and its second copy stores nothing.
W8A8_AMX_BF16 void AmxMultiply(const uint16_t* parts, int64_t part_values, int64_t m,
                               int64_t pairs, const uint16_t* packed, float* y, int64_t n) {
  const int64_t tiles = (n + kTileRows - 1) / kTileRows;
  const int64_t tile_pairs = (tiles + 1) / 2;
  const int64_t block_rows = std::min(kAmxRows, m);
  const int64_t blocks = (m + block_rows - 1) / block_rows;
  const int64_t x_stride = 2 * pairs * static_cast<int64_t>(sizeof(uint16_t));
  AmxTileConfig config;
  for (int t = 0; t < 8; ++t) {
    config.bytes_per_row[t] = 64;
    config.rows[t] = static_cast<uint8_t>(t >= 6 ? kAmxPairs : block_rows);
  }
#pragma omp parallel
  {
    _tile_loadconfig(&config);
    alignas(64) float sums[4][kAmxRows][16];
#pragma omp for schedule(static)
    for (int64_t tile_pair = 0; tile_pair < tile_pairs; ++tile_pair) {
      const int64_t first_tile = 2 * tile_pair;
      const uint16_t* first_values = packed + first_tile * pairs * kPairValues;
      const uint16_t* second_values =
          packed + std::min(first_tile + 1, tiles - 1) * pairs * kPairValues;
      for (int64_t block = 0; block < blocks; ++block) {
        const uint16_t* high = parts + block * block_rows * 2 * pairs;
        const uint16_t* low = high + part_values;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t p = 0; p < pairs; p += kAmxPairs) {
          const uint16_t* first_step = first_values + p * kPairValues;
          const uint16_t* second_step = second_values + p * kPairValues;
          if (block == 0) {
            // Later blocks read the tiles from cache.
            const char* first_ahead = reinterpret_cast<const char*>(first_step) + kAmxPrefetchBytes;
            const char* second_ahead =
                reinterpret_cast<const char*>(second_step) + kAmxPrefetchBytes;
            for (int line = 0; line < 32; ++line) {
              _mm_prefetch(first_ahead + 64 * line, _MM_HINT_T1);
              _mm_prefetch(second_ahead + 64 * line, _MM_HINT_T1);
            }
          }
          _tile_loadd(4, high + 2 * p, x_stride);
          _tile_loadd(5, low + 2 * p, x_stride);
          // GCC's tile intrinsics paste their register numbers into the asm text, so they
          // must be literals, and the steps of the two tiles are written out.
          _tile_loadd(6, first_step, kPairStride);
          _tile_loadd(7, first_step + kHalfValues, kPairStride);
          _tile_dpbf16ps(0, 4, 6);
          _tile_dpbf16ps(1, 4, 7);
          _tile_dpbf16ps(0, 5, 6);
          _tile_dpbf16ps(1, 5, 7);
          _tile_loadd(6, second_step, kPairStride);
          _tile_loadd(7, second_step + kHalfValues, kPairStride);
          _tile_dpbf16ps(2, 4, 6);
          _tile_dpbf16ps(3, 4, 7);
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(3, 5, 7);
        }
        _tile_stored(0, sums[0], 16 * sizeof(float));
        _tile_stored(1, sums[1], 16 * sizeof(float));
        _tile_stored(2, sums[2], 16 * sizeof(float));
        _tile_stored(3, sums[3], 16 * sizeof(float));
        const int64_t rows = std::min(block_rows, m - block * block_rows);
        for (int64_t half = 0; half < 4; ++half) {
          // Halves 0 and 1 belong to the first tile, 2 and 3 to the second.
          const int64_t first_row = first_tile * kTileRows + half * 16;
          const int64_t valid = std::min<int64_t>(16, n - first_row);
          if (valid <= 0) continue;
          for (int64_t r = 0; r < rows; ++r) {
            std::memcpy(y + (block * block_rows + r) * n + first_row, sums[half][r],
                        sizeof(float) * static_cast<size_t>(valid));
          }
        }
      }
    }
    _tile_release();
  }
}

}  // namespace

Bf16Matrix::Bf16Matrix(const void* values, int64_t rows, int64_t cols)
    : rows_(rows), cols_(cols), pairs_((cols + 1) / 2) {
  const int64_t tiles = (rows + kTileRows - 1) / kTileRows;
  packed_.resize(static_cast<size_t>(tiles * pairs_ * kPairValues));
  uint16_t* packed = packed_.data();
  const int64_t pairs = pairs_;
  const auto* bytes = static_cast<const unsigned char*>(values);
#pragma omp parallel for schedule(static)
  for (int64_t tile = 0; tile < tiles; ++tile) {
    uint16_t* out = packed + tile * pairs * kPairValues;
    for (int64_t p = 0; p < pairs; ++p) {
      for (int64_t r = 0; r < kTileRows; ++r) {
        const int64_t row = tile * kTileRows + r;
        for (int64_t h = 0; h < 2; ++h) {
          const int64_t col = 2 * p + h;
          uint16_t value = 0;
          if (row < rows && col < cols) {
            std::memcpy(&value, bytes + (row * cols + col) * 2, sizeof(value));
          }
          *out++ = value;
        }
      }
    }
  }
}

void Bf16Matrix::Row(int64_t row, float* out) const {
  if (cols_ == 0) return;
  const uint16_t* values =
      packed_.data() + row / kTileRows * pairs_ * kPairValues + row % kTileRows * 2;
  for (int64_t col = 0; col < cols_; ++col) {
    out[col] = Bf16ToFloat(values[col / 2 * kPairValues + col % 2]);
  }
}

void Bf16Matrix::Multiply(const float* x, int64_t m, float* y) const {
  Multiply(ActiveIsa(), x, m, y);
}

void Bf16Matrix::Multiply(Isa isa, const float* x, int64_t m, float* y, bool allow_amx) const {
  if (m <= 0 || rows_ == 0) return;
  if (cols_ == 0) {
    std::fill(y, y + m * rows_, 0.0f);
    return;
  }
  if (isa == Isa::kAvx512Vnni) {
    if (allow_amx && m >= kAmxMinRows && pairs_ % kAmxPairs == 0 && AmxBf16Usable()) {
      // The BF16 parts of x, padded with zeros to whole tiles of A.
      const int64_t padded_rows = m < kAmxRows ? m : (m + kAmxRows - 1) / kAmxRows * kAmxRows;
      const int64_t padded_cols = 2 * pairs_;
      const int64_t part_values = padded_rows * padded_cols;
      thread_local std::vector<uint16_t> parts;
      parts.assign(static_cast<size_t>(kAmxParts * part_values), 0);
      for (int64_t r = 0; r < m; ++r) {
        for (int64_t c = 0; c < cols_; ++c) {
          float rest = x[r * cols_ + c];
          for (int64_t part = 0; part < kAmxParts; ++part) {
            const uint16_t rounded = FloatToBf16(rest);
            parts[static_cast<size_t>(part * part_values + r * padded_cols + c)] = rounded;
            rest -= Bf16ToFloat(rounded);
          }
        }
      }
      AmxMultiply(parts.data(), part_values, m, pairs_, packed_.data(), y, rows_);
      return;
    }
    Avx512Multiply(x, m, cols_, pairs_, packed_.data(), y, rows_);
    return;
  }
  if (m <= kPlainMaxM) {
    const int64_t tiles = (rows_ + kTileRows - 1) / kTileRows;
#pragma omp parallel for schedule(static)
    for (int64_t tile = 0; tile < tiles; ++tile) {
      PlainTile(x, m, cols_, pairs_, packed_.data() + tile * pairs_ * kPairValues, y, rows_, tile);
    }
    return;
  }
  // Converts blocks of rows and multiplies each with GemmF32 into a block of columns of y.
  thread_local std::vector<float> weights;
  thread_local std::vector<float> block_output;
  for (int64_t first = 0; first < rows_; first += kConvertRows) {
    const int64_t rows = std::min(kConvertRows, rows_ - first);
    weights.resize(static_cast<size_t>(rows * cols_));
    block_output.resize(static_cast<size_t>(m * rows));
    // The buffers are thread_local, so the workers get the caller's through a plain pointer.
    float* converted = weights.data();
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < rows; ++row) Row(first + row, converted + row * cols_);
    GemmF32(isa, x, converted, block_output.data(), m, rows, cols_);
    for (int64_t r = 0; r < m; ++r) {
      std::memcpy(y + r * rows_ + first, block_output.data() + r * rows,
                  sizeof(float) * static_cast<size_t>(rows));
    }
  }
}

}  // namespace w8a8::kernels
