// AVX-512 VNNI loops over packed int8 weights. Only functions marked W8A8_AVX512 use AVX-512,
// so the rest of the library still runs on CPUs without it.
//
// Loop structure, for a thread's range of column blocks and all its rows:
//   for each quad of kBlockQuad column blocks (its weights, k x 64 bytes, stay in L2)
//     for each tile of up to kTileRows rows
//       micro-kernel over all of k: int32 accumulators per group, scaled into FP32 sums at
//       each group end.
// Each weight byte is read from memory once per product. For 7 to 16 rows (batched decode),
// RunChunkedQuad instead runs every tile over one chunk of k (8 KiB of the quad, in L1) before
// the next chunk, with the int32 sums kept in memory between chunks. For prefill, splitting k
// into chunks of 512 to 1024 inputs, with the partial sums kept in y between chunks, measured
// 20 to 35% slower on a Xeon with 48 KiB L1 and 2 MiB L2 per core (bench/kernel_bench.cc,
// m = 512, G = 128), because the y round trips cost more than the L2 reads they save.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/int8_packed.h"

// GCC 12 reports the deliberately undefined pass-through operand inside _mm512_cvtepi32_ps
// (avx512fintrin.h) as maybe uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define W8A8_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma")))

namespace w8a8::kernels::internal {
namespace {

// Rows of the prefill tile: 6 rows x 4 blocks of int32 accumulators, 4 weight registers and a
// broadcast register use 29 of the 32 zmm registers. Each step loads 4 weight lines and 6
// broadcasts for 24 vpdpbusd.
constexpr int kTileRows = 6;
// Quads of the decode tile (one row): 16 accumulators over 4 quads, which read 4 separate
// sequential streams. One stream per tile measured about 1.4x slower from DRAM on one core.
constexpr int kDecodeQuads = 4;

// Returns acc plus the dot products of the unsigned bytes of x with the signed bytes of w, four
// per 32-bit lane (vpdpbusd). GCC 12 copies the accumulator of _mm512_dpbusd_epi32 into a new
// register and back on every call inside a loop, and spills them with 24 accumulators. The asm
// ties the accumulator input to the output, which avoids both.
W8A8_AVX512 inline __m512i DotProductAccumulate(__m512i acc, __m512i x, __m512i w) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(w));
  return acc;
}

// Parts of k that a one-quad tile of one scale group reads side by side. The steps of a quad
// are one contiguous stream, and reading it as 4 streams at once measured 1.2 to 1.3x faster
// from DRAM at 2 to 8 rows (bench/kernel_bench.cc, then Int8PerRowPacked/cold, now
// Int8PerChannel/cold).
constexpr int kSplitStreams = 4;

// Tells GCC that memory may have changed, so that it reloads values instead of keeping them in
// registers. Without it, GCC loads a compensation vector once and copies it into each
// accumulator (a vector ALU operation per copy), and keeps the FP32 sums of a tile in
// registers that the int32 accumulators need, spilling both.
inline void MemoryBarrier() { asm volatile("" ::: "memory"); }

W8A8_AVX512 inline __m512i BroadcastFourBytes(const uint8_t* bytes) {
  int32_t word;
  std::memcpy(&word, bytes, sizeof(word));
  return _mm512_set1_epi32(word);
}

// One step of a tile: kRows broadcast activation words times the weight lines of kQuads quads,
// accumulated into dots. `lines[q]` is the step's line of quad q.
template <int kRows, int kQuads>
W8A8_AVX512 __attribute__((always_inline)) inline void AccumulateStep(
    __m512i (&dots)[kRows][kQuads * kBlockQuad], const int8_t* const (&lines)[kQuads],
    const uint8_t* x_word, int64_t padded_k) {
#pragma GCC unroll 4
  for (int q = 0; q < kQuads; ++q) {
    __m512i w[kBlockQuad];
#pragma GCC unroll 4
    for (int b = 0; b < kBlockQuad; ++b) w[b] = _mm512_loadu_si512(lines[q] + b * 64);
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const __m512i x = BroadcastFourBytes(x_word + r * padded_k);
#pragma GCC unroll 4
      for (int b = 0; b < kBlockQuad; ++b) {
        __m512i& dot = dots[r][q * kBlockQuad + b];
        dot = DotProductAccumulate(dot, x, w[b]);
      }
    }
  }
}

// Accumulates all `steps` steps of one quad into dots, as kSplitStreams parts of k side by
// side. The int32 sums do not depend on the order, so this is exact.
template <int kRows>
W8A8_AVX512 __attribute__((always_inline)) inline void AccumulateSplit(
    __m512i (&dots)[kRows][kBlockQuad], const int8_t* line, const uint8_t* x_word,
    int64_t steps, int64_t padded_k) {
  const int64_t part_steps = steps / kSplitStreams;
  const int8_t* part_lines[kSplitStreams][1];
  const uint8_t* part_words[kSplitStreams];
#pragma GCC unroll 4
  for (int p = 0; p < kSplitStreams; ++p) {
    part_lines[p][0] = line + p * part_steps * kQuadStepBytes;
    part_words[p] = x_word + p * part_steps * kPackDepth;
  }
  for (int64_t i = 0; i < part_steps; ++i) {
#pragma GCC unroll 4
    for (int p = 0; p < kSplitStreams; ++p) {
      AccumulateStep<kRows, 1>(dots, part_lines[p], part_words[p], padded_k);
      part_lines[p][0] += kQuadStepBytes;
      part_words[p] += kPackDepth;
    }
  }
  // The steps left over when kSplitStreams does not divide `steps`.
  const int8_t* tail_line[1] = {line + kSplitStreams * part_steps * kQuadStepBytes};
  const uint8_t* tail_word = x_word + kSplitStreams * part_steps * kPackDepth;
  for (int64_t i = kSplitStreams * part_steps; i < steps; ++i) {
    AccumulateStep<kRows, 1>(dots, tail_line, tail_word, padded_k);
    tail_line[0] += kQuadStepBytes;
    tail_word += kPackDepth;
  }
}

// Computes y for a tile of kRows rows by the kQuads quads of column blocks from `block` on.
// The FP32 sums live in `sums`, [kRows][kQuads * kBlockQuad][kPackRows] scratch passed by
// pointer (and the function is kept out of line) so that the int32 accumulators keep the
// registers.
template <int kRows, int kQuads>
W8A8_AVX512 __attribute__((noinline)) void RunTile(const PackedInt8Weights& packed,
                                                   const uint8_t* xa, const float* x_scales,
                                                   int64_t block, int64_t column_end, float* y,
                                                   float* sums) {
  constexpr int kBlocks = kQuads * kBlockQuad;
  static_assert(kRows * kBlocks + kBlockQuad + 1 <= 32);
  const int64_t n = packed.n;
  const int64_t padded_k = packed.padded_k();
  const int64_t groups = packed.groups;
  const int64_t table_stride = groups * kPackRows;
  const int32_t* compensation = packed.compensation.data() + block * table_stride;
  const float* scales = packed.scales.data() + block * table_stride;
  const int8_t* lines[kQuads];
#pragma GCC unroll 4
  for (int q = 0; q < kQuads; ++q) lines[q] = packed.BlockWeights(block + q * kBlockQuad);

#pragma GCC unroll 24
  for (int i = 0; i < kRows * kBlocks; ++i) {
    _mm512_store_ps(sums + i * kPackRows, _mm512_setzero_ps());
  }

  const uint8_t* x_word = xa;
  for (int64_t group = 0; group < groups; ++group) {
    // Each accumulator starts at the group's compensation, -128 * the sum of its weights.
    __m512i dots[kRows][kBlocks];
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 16
      for (int b = 0; b < kBlocks; ++b) {
        dots[r][b] = _mm512_loadu_si512(compensation + b * table_stride + group * kPackRows);
      }
      MemoryBarrier();
    }
    const int64_t group_steps = packed.group_steps[group];
    if constexpr (kQuads == 1) {
      if (groups == 1) AccumulateSplit<kRows>(dots, lines[0], x_word, group_steps, padded_k);
    }
    if (kQuads > 1 || groups > 1) {
      for (int64_t i = 0; i < group_steps; ++i) {
        AccumulateStep<kRows, kQuads>(dots, lines, x_word, padded_k);
#pragma GCC unroll 4
        for (int q = 0; q < kQuads; ++q) lines[q] += kQuadStepBytes;
        x_word += kPackDepth;
      }
    }
#pragma GCC unroll 16
    for (int b = 0; b < kBlocks; ++b) {
      const __m512 scale = _mm512_loadu_ps(scales + b * table_stride + group * kPackRows);
#pragma GCC unroll 8
      for (int r = 0; r < kRows; ++r) {
        float* sum = sums + (r * kBlocks + b) * kPackRows;
        _mm512_store_ps(sum, _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots[r][b]), scale,
                                             _mm512_load_ps(sum)));
      }
    }
    MemoryBarrier();
  }

  // Columns of y that this tile writes in each block: none at or past column_end, so a quad
  // that sticks out of n, or of the caller's range, leaves those columns alone.
#pragma GCC unroll 16
  for (int b = 0; b < kBlocks; ++b) {
    const int64_t column = (block + b) * kPackRows;
    const int64_t valid = std::clamp<int64_t>(column_end - column, 0, kPackRows);
    // This block and the ones after it lie past column_end, possibly past the end of y.
    if (valid == 0) break;
    const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1u);
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const __m512 sum = _mm512_load_ps(sums + (r * kBlocks + b) * kPackRows);
      _mm512_mask_storeu_ps(y + r * n + column, mask,
                            _mm512_mul_ps(sum, _mm512_set1_ps(x_scales[r])));
    }
  }
}

// Runs the last `rows` (fewer than kRows) rows of a quad.
template <int kRows>
W8A8_AVX512 void RunRemainingRows(const PackedInt8Weights& packed, const uint8_t* xa,
                                  const float* x_scales, int64_t rows, int64_t block,
                                  int64_t column_end, float* y, float* sums) {
  if constexpr (kRows > 1) {
    if (rows == kRows - 1) {
      RunTile<kRows - 1, 1>(packed, xa, x_scales, block, column_end, y, sums);
    } else {
      RunRemainingRows<kRows - 1>(packed, xa, x_scales, rows, block, column_end, y, sums);
    }
  }
}

// Row counts from kTileRows + 1 up to this take RunChunkedQuad, which reads a quad's weights
// from memory once for all rows. With tiles over all of k, the first tile would read the quad
// from DRAM and every further tile again from L2, and no weights would stream in meanwhile.
constexpr int kChunkedMaxRows = 16;
// Steps of one chunk in each of the kSplitStreams parts: 4 x 8 steps of 256 bytes, 8 KiB of
// weights that stay in L1 while each tile of rows reads them. Chunks of 16 and 32 steps
// measured up to 1.1x and 1.2x slower at m = 8 and 16 on a Xeon with 48 KiB of L1.
constexpr int64_t kChunkSteps = 8;

// Adds `steps` steps of kParts parts of k, `part_stride` steps apart, to the int32
// accumulators of kRows rows x one quad held in `acc` ([kRows][kBlockQuad][kPackRows]). For
// each part p with bit p set in `prefetch_parts`, each step also prefetches the step
// kChunkSteps further on, the part's next chunk, unless that lies past `weights_end`.
template <int kRows, int kParts>
W8A8_AVX512 __attribute__((noinline)) void AccumulateChunk(int32_t* acc, const int8_t* line,
                                                           const uint8_t* x_word,
                                                           int64_t part_stride, int64_t steps,
                                                           int64_t padded_k,
                                                           unsigned prefetch_parts,
                                                           const int8_t* weights_end) {
  __m512i dots[kRows][kBlockQuad];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 4
    for (int b = 0; b < kBlockQuad; ++b) {
      dots[r][b] = _mm512_load_si512(acc + (r * kBlockQuad + b) * kPackRows);
    }
  }
  const int8_t* part_lines[kParts][1];
  const uint8_t* part_words[kParts];
#pragma GCC unroll 4
  for (int p = 0; p < kParts; ++p) {
    part_lines[p][0] = line + p * part_stride * kQuadStepBytes;
    part_words[p] = x_word + p * part_stride * kPackDepth;
  }
  for (int64_t i = 0; i < steps; ++i) {
#pragma GCC unroll 4
    for (int p = 0; p < kParts; ++p) {
      if ((prefetch_parts >> p) & 1u) {
        if (weights_end - part_lines[p][0] > (kChunkSteps + 1) * kQuadStepBytes) {
          const int8_t* ahead = part_lines[p][0] + kChunkSteps * kQuadStepBytes;
#pragma GCC unroll 4
          for (int b = 0; b < kBlockQuad; ++b) {
            _mm_prefetch(reinterpret_cast<const char*>(ahead + b * 64), _MM_HINT_T0);
          }
        }
      }
      AccumulateStep<kRows, 1>(dots, part_lines[p], part_words[p], padded_k);
      part_lines[p][0] += kQuadStepBytes;
      part_words[p] += kPackDepth;
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 4
    for (int b = 0; b < kBlockQuad; ++b) {
      _mm512_store_si512(acc + (r * kBlockQuad + b) * kPackRows, dots[r][b]);
    }
  }
}

// Runs AccumulateChunk for every tile of up to kTileRows rows, one after another over the same
// weights: the first tile reads them from memory, the others from L1. Tile t prefetches the
// next chunk of the parts p with p mod tiles = t, so the weights keep streaming in while the
// tiles after the first compute. In single runs from DRAM this was 1.0 to 1.16x as fast at
// m = 8 and 1.13 to 1.27x at m = 16 as the same chunks without software prefetch.
template <int kParts>
W8A8_AVX512 void AccumulateChunkAllRows(int32_t* acc, int64_t rows, const int8_t* line,
                                        const uint8_t* x_word, int64_t part_stride,
                                        int64_t steps, int64_t padded_k,
                                        const int8_t* weights_end) {
  // AccumulateChunk<r, kParts> at index r, for tiles of 1 to kTileRows rows.
  static_assert(kTileRows == 6);
  static constexpr decltype(&AccumulateChunk<1, kParts>) chunk_by_rows[] = {
      nullptr,
      &AccumulateChunk<1, kParts>,
      &AccumulateChunk<2, kParts>,
      &AccumulateChunk<3, kParts>,
      &AccumulateChunk<4, kParts>,
      &AccumulateChunk<5, kParts>,
      &AccumulateChunk<6, kParts>};
  const int64_t tiles = (rows + kTileRows - 1) / kTileRows;
  for (int64_t row = 0; row < rows; row += kTileRows) {
    const int64_t tile = row / kTileRows;
    unsigned prefetch_parts = 0;
    for (int p = 0; p < kParts; ++p) {
      if (p % tiles == tile) prefetch_parts |= 1u << p;
    }
    int32_t* tile_acc = acc + row * kBlockQuad * kPackRows;
    const uint8_t* tile_word = x_word + row * padded_k;
    chunk_by_rows[std::min<int64_t>(kTileRows, rows - row)](
        tile_acc, line, tile_word, part_stride, steps, padded_k, prefetch_parts, weights_end);
  }
}

// Computes y for up to kChunkedMaxRows rows by the quad of column blocks from `block` on. Each
// scale group is read in chunks, and all tiles of rows go through a chunk before the next one,
// so the weights stream from memory once and without pauses longer than a chunk. The int32
// sums wait in `acc` ([rows][kBlockQuad][kPackRows]) between chunks. The FP32 sums in `sums`
// (same shape) collect the groups in order, with the same roundings as RunTile.
W8A8_AVX512 void RunChunkedQuad(const PackedInt8Weights& packed, const uint8_t* xa,
                                const float* x_scales, int64_t rows, int64_t block,
                                int64_t column_end, float* y, int32_t* acc, float* sums) {
  const int64_t n = packed.n;
  const int64_t padded_k = packed.padded_k();
  const int64_t groups = packed.groups;
  const int64_t table_stride = groups * kPackRows;
  const int32_t* compensation = packed.compensation.data() + block * table_stride;
  const float* scales = packed.scales.data() + block * table_stride;
  const int64_t accumulators = rows * kBlockQuad;
  for (int64_t i = 0; i < accumulators; ++i) {
    _mm512_store_ps(sums + i * kPackRows, _mm512_setzero_ps());
  }

  const int8_t* line = packed.BlockWeights(block);
  const int8_t* weights_end = packed.weights.data() + packed.weights.size();
  const uint8_t* x_word = xa;
  for (int64_t group = 0; group < groups; ++group) {
    for (int64_t i = 0; i < accumulators; ++i) {
      const int64_t b = i % kBlockQuad;
      _mm512_store_si512(acc + i * kPackRows,
                         _mm512_loadu_si512(compensation + b * table_stride + group * kPackRows));
    }
    const int64_t group_steps = packed.group_steps[group];
    // One group as kSplitStreams parts read side by side, chunk by chunk, then the steps left
    // over when kSplitStreams does not divide the group.
    const int64_t part_steps = group_steps / kSplitStreams;
    for (int64_t done = 0; done < part_steps; done += kChunkSteps) {
      const int64_t steps = std::min(kChunkSteps, part_steps - done);
      AccumulateChunkAllRows<kSplitStreams>(acc, rows, line + done * kQuadStepBytes,
                                            x_word + done * kPackDepth, part_steps, steps,
                                            padded_k, weights_end);
    }
    const int64_t split = kSplitStreams * part_steps;
    if (split < group_steps) {
      AccumulateChunkAllRows<1>(acc, rows, line + split * kQuadStepBytes,
                                x_word + split * kPackDepth, 0, group_steps - split, padded_k,
                                weights_end);
    }
    line += group_steps * kQuadStepBytes;
    x_word += group_steps * kPackDepth;

    for (int64_t b = 0; b < kBlockQuad; ++b) {
      const __m512 scale = _mm512_loadu_ps(scales + b * table_stride + group * kPackRows);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = r * kBlockQuad + b;
        float* sum = sums + i * kPackRows;
        _mm512_store_ps(sum, _mm512_fmadd_ps(
                                 _mm512_cvtepi32_ps(_mm512_load_si512(acc + i * kPackRows)),
                                 scale, _mm512_load_ps(sum)));
      }
    }
  }

  for (int64_t b = 0; b < kBlockQuad; ++b) {
    const int64_t column = (block + b) * kPackRows;
    const int64_t valid = std::clamp<int64_t>(column_end - column, 0, kPackRows);
    // This block and the rest of the quad lie past column_end, possibly past the end of y.
    if (valid == 0) break;
    const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1u);
    for (int64_t r = 0; r < rows; ++r) {
      const __m512 sum = _mm512_load_ps(sums + (r * kBlockQuad + b) * kPackRows);
      _mm512_mask_storeu_ps(y + r * n + column, mask,
                            _mm512_mul_ps(sum, _mm512_set1_ps(x_scales[r])));
    }
  }
}

}  // namespace

void RunPackedAvx512(const PackedInt8Weights& packed, const uint8_t* xa, const float* x_scales,
                     int64_t rows, int64_t block_begin, int64_t block_end, float* y) {
  alignas(64) float sums[kTileRows * kBlockQuad * kPackRows];
  const int64_t n = packed.n;
  const int64_t padded_k = packed.padded_k();
  const int64_t column_end = std::min(n, block_end * kPackRows);
  int64_t block = block_begin;
  if (rows > kTileRows && rows <= kChunkedMaxRows) {
    alignas(64) int32_t acc[kChunkedMaxRows * kBlockQuad * kPackRows];
    alignas(64) float chunked_sums[kChunkedMaxRows * kBlockQuad * kPackRows];
    for (; block < block_end; block += kBlockQuad) {
      RunChunkedQuad(packed, xa, x_scales, rows, block, column_end, y, acc, chunked_sums);
    }
    return;
  }
  if (rows == 1) {
    constexpr int64_t kDecodeBlocks = kDecodeQuads * kBlockQuad;
    for (; block + kDecodeBlocks <= block_end; block += kDecodeBlocks) {
      RunTile<1, kDecodeQuads>(packed, xa, x_scales, block, column_end, y, sums);
    }
  }
  for (; block < block_end; block += kBlockQuad) {
    int64_t row = 0;
    for (; row + kTileRows <= rows; row += kTileRows) {
      RunTile<kTileRows, 1>(packed, xa + row * padded_k, x_scales + row, block, column_end,
                            y + row * n, sums);
    }
    if (row < rows) {
      RunRemainingRows<kTileRows>(packed, xa + row * padded_k, x_scales + row, rows - row,
                                  block, column_end, y + row * n, sums);
    }
  }
}

}  // namespace w8a8::kernels::internal
