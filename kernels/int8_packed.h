// Internal to the kernels: int8 weights repacked for the u8 x s8 dot-product instructions
// (AVX-512 VNNI vpdpbusd, and AVX2 vpmaddwd after widening), and the ISA-specific loops over
// them. The public entry point is Int8Matmul in gemm.h.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cpu_features.h"
#include "kernels/weight_memory.h"

namespace w8a8::kernels::internal {

// Output rows (columns of y) that one packed block interleaves.
inline constexpr int64_t kPackRows = 16;
// Inputs that one 32-bit lane of vpdpbusd multiplies and sums.
inline constexpr int64_t kPackDepth = 4;
// Consecutive blocks whose weights are interleaved step by step, so that the AVX-512 loop,
// which computes this many blocks at once, reads one sequential stream. Thread ranges start
// at multiples of it.
inline constexpr int64_t kBlockQuad = 4;
// Bytes of one step of a quad: kBlockQuad blocks x kPackRows rows x kPackDepth inputs.
inline constexpr int64_t kQuadStepBytes = kBlockQuad * kPackRows * kPackDepth;

// Weights [n, k] split into blocks of kPackRows output rows. Each scale group of a row is
// padded with zero weights to a multiple of kPackDepth inputs, so a group never shares a
// 32-bit lane with the next one. A step covers kPackDepth padded inputs. Blocks are stored in
// quads of kBlockQuad, ordered [quad][step][block in quad][row][4], so a quad is one
// contiguous stream of 256-byte steps and a block's step is one 64-byte line. Rows past n,
// up to a whole quad, are zero, and so are their compensation and scales.
//
// With one scale per row and k a multiple of 64, this is oneDNN's blocked layout BA16a64b4a of
// the [k, n] matrix (blocks of 64 columns, each a contiguous run of 64 x 4 byte steps). The
// weights are cache-line aligned (AllocateWeightBytes), so oneDNN's u8 x s8 matmul reads them
// in place (see onednn_int8_matmul.h).
struct PackedInt8Weights {
  int64_t n = 0;
  int64_t k = 0;
  int64_t group_size = 0;  // 0 for one scale per output row.
  int64_t blocks = 0;      // ceil(n / kPackRows).
  int64_t quads = 0;       // ceil(blocks / kBlockQuad).
  int64_t groups = 0;      // Scale groups per row: 1 for group_size 0, else ceil(k / group_size).
  int64_t steps = 0;       // Steps per block, the padded k divided by kPackDepth.
  std::vector<int32_t> group_steps;  // [groups]: steps in each group.
  std::vector<int32_t> group_begin;  // [groups]: first input of each group in the unpadded k.
  // [quads][steps][kBlockQuad][kPackRows][kPackDepth].
  WeightVector<int8_t> weights;
  // [quads * kBlockQuad][groups][kPackRows]: -128 * the sum of the group's weights, added to
  // each group's int32 dot product because the activations enter it as unsigned bytes x + 128.
  std::vector<int32_t> compensation;
  std::vector<float> scales;  // [quads * kBlockQuad][groups][kPackRows], zero past n.

  int64_t padded_k() const { return steps * kPackDepth; }
  // The 64-byte line of `block` at step 0; step s is s * kQuadStepBytes bytes further.
  const int8_t* BlockWeights(int64_t block) const {
    return weights.data() + (block / kBlockQuad) * steps * kQuadStepBytes +
           (block % kBlockQuad) * kPackRows * kPackDepth;
  }
};

// Repacks `weights` [n, k] with `scales` (n entries for group_size 0, else [n, groups]).
// The caller has validated the sizes.
PackedInt8Weights PackInt8Weights(const int8_t* weights, int64_t n, int64_t k,
                                  const float* scales, int64_t group_size);

// Writes each row of xq [m, k] as unsigned bytes x + 128 into `xa` [m, padded_k], laid out
// group by group like the packed weights. The padding bytes are 128 (x = 0).
void PackActivations(const PackedInt8Weights& packed, const int8_t* xq, int64_t m,
                     uint8_t* xa);

// Computes y[rows, n] for the column blocks [block_begin, block_end). Per group, the int32 dot
// products of the packed activations and weights, plus the compensation, are converted to
// FP32 and multiplied by the group scale. The sum over groups is multiplied by x_scales[row].
// `xa` has `rows` consecutive rows of padded_k bytes. Single-threaded: the caller splits the
// blocks among threads, and gives each thread a range that starts at a multiple of kBlockQuad
// blocks, so that the AVX-512 loop computes whole quads.
void RunPackedAvx512(const PackedInt8Weights& packed, const uint8_t* xa, const float* x_scales,
                     int64_t rows, int64_t block_begin, int64_t block_end, float* y);
void RunPackedAvx2(const PackedInt8Weights& packed, const uint8_t* xa, const float* x_scales,
                   int64_t rows, int64_t block_begin, int64_t block_end, float* y);

}  // namespace w8a8::kernels::internal
