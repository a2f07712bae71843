#include <algorithm>
#include <cstring>

#include "kernels/int8_packed.h"

namespace w8a8::kernels::internal {

PackedInt8Weights PackInt8Weights(const int8_t* weights, int64_t n, int64_t k,
                                  const float* scales, int64_t group_size) {
  PackedInt8Weights packed;
  packed.n = n;
  packed.k = k;
  packed.group_size = group_size;
  packed.blocks = (n + kPackRows - 1) / kPackRows;
  packed.quads = (packed.blocks + kBlockQuad - 1) / kBlockQuad;
  const int64_t span = group_size == 0 ? k : group_size;
  packed.groups = (k + span - 1) / span;
  for (int64_t group = 0; group < packed.groups; ++group) {
    const int64_t begin = group * span;
    const int64_t length = std::min(span, k - begin);
    packed.group_begin.push_back(static_cast<int32_t>(begin));
    packed.group_steps.push_back(static_cast<int32_t>((length + kPackDepth - 1) / kPackDepth));
    packed.steps += packed.group_steps.back();
  }

  const int64_t groups = packed.groups;
  const int64_t padded_blocks = packed.quads * kBlockQuad;
  packed.weights.assign(packed.quads * packed.steps * kQuadStepBytes, 0);
  packed.compensation.assign(padded_blocks * groups * kPackRows, 0);
  packed.scales.assign(padded_blocks * groups * kPackRows, 0.0f);
  for (int64_t row = 0; row < n; ++row) {
    const int64_t block = row / kPackRows;
    const int64_t lane = row % kPackRows;
    int8_t* block_weights = const_cast<int8_t*>(packed.BlockWeights(block));
    int64_t step = 0;
    for (int64_t group = 0; group < groups; ++group) {
      const int64_t begin = packed.group_begin[group];
      const int64_t end = std::min(k, begin + span);
      int32_t sum = 0;
      for (int64_t i = begin; i < end; ++i) {
        const int64_t offset = i - begin;
        const int64_t at = (step + offset / kPackDepth) * kQuadStepBytes +
                           lane * kPackDepth + offset % kPackDepth;
        block_weights[at] = weights[row * k + i];
        sum += weights[row * k + i];
      }
      const int64_t table_index = (block * groups + group) * kPackRows + lane;
      packed.compensation[table_index] = -128 * sum;
      packed.scales[table_index] = group_size == 0 ? scales[row] : scales[row * groups + group];
      step += packed.group_steps[group];
    }
  }
  return packed;
}

void PackActivations(const PackedInt8Weights& packed, const int8_t* xq, int64_t m,
                     uint8_t* xa) {
  const int64_t k = packed.k;
  const int64_t padded_k = packed.padded_k();
  const int64_t span = packed.group_size == 0 ? k : packed.group_size;
  for (int64_t row = 0; row < m; ++row) {
    const int8_t* source = xq + row * k;
    uint8_t* target = xa + row * padded_k;
    int64_t at = 0;
    for (int64_t group = 0; group < packed.groups; ++group) {
      const int64_t begin = packed.group_begin[group];
      const int64_t length = std::min(span, k - begin);
      const int64_t padded_length = packed.group_steps[group] * kPackDepth;
      // x + 128 as an unsigned byte is x with its sign bit flipped.
      for (int64_t i = 0; i < length; ++i) {
        target[at + i] = static_cast<uint8_t>(source[begin + i]) ^ 0x80u;
      }
      std::memset(target + at + length, 0x80, static_cast<size_t>(padded_length - length));
      at += padded_length;
    }
  }
}

}  // namespace w8a8::kernels::internal
