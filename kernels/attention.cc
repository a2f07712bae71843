// Causal grouped-query attention: the plain C++ definition and two AVX-512 versions. One
// handles 16 queries at once, one per lane, so that the softmax runs lane-wise without
// reductions. The other, for decode, puts 16 keys in the lanes.
#include "kernels/attention.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

// GCC 12 reports the deliberately undefined pass-through operands inside avx512fintrin.h as
// uninitialized.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "kernels/simd_exp.h"

#define W8A8_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))

namespace w8a8::kernels {
namespace {

constexpr int64_t kLanes = 16;

void AttentionScalar(const AttentionShape& shape, const PagedKv& kv, int64_t kv_head,
                     const float* q, int64_t q_stride, int64_t tokens, int64_t first_position,
                     float* out, int64_t out_stride) {
  const int64_t group = shape.num_heads / shape.num_kv_heads;
  const int64_t head_dim = shape.head_dim;
  const int64_t block_size = kv.block_size;
  const int64_t head_offset = kv_head * block_size * head_dim;
  thread_local std::vector<float> scores;
  scores.resize(static_cast<size_t>(first_position + tokens));
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t context = first_position + t + 1;
    for (int64_t g = 0; g < group; ++g) {
      const int64_t head = kv_head * group + g;
      const float* query = q + t * q_stride + head * head_dim;
      // Walk the block table block by block, so no division runs per position.
      float max_score = -std::numeric_limits<float>::infinity();
      for (int64_t first = 0; first < context; first += block_size) {
        const int64_t block = kv.block_table[first / block_size];
        const float* keys = kv.keys + block * kv.block_stride + head_offset;
        const int64_t count = std::min(block_size, context - first);
        for (int64_t slot = 0; slot < count; ++slot) {
          const float* key = keys + slot * head_dim;
          float dot = 0.0f;
          for (int64_t d = 0; d < head_dim; ++d) dot += query[d] * key[d];
          const float score = dot * shape.scale;
          scores[static_cast<size_t>(first + slot)] = score;
          max_score = std::max(max_score, score);
        }
      }
      float sum = 0.0f;
      for (int64_t p = 0; p < context; ++p) {
        scores[static_cast<size_t>(p)] = std::exp(scores[static_cast<size_t>(p)] - max_score);
        sum += scores[static_cast<size_t>(p)];
      }
      const float inv_sum = 1.0f / sum;
      float* result = out + t * out_stride + head * head_dim;
      std::fill(result, result + head_dim, 0.0f);
      for (int64_t first = 0; first < context; first += block_size) {
        const int64_t block = kv.block_table[first / block_size];
        const float* values = kv.values + block * kv.block_stride + head_offset;
        const int64_t count = std::min(block_size, context - first);
        for (int64_t slot = 0; slot < count; ++slot) {
          const float* value = values + slot * head_dim;
          const float weight = scores[static_cast<size_t>(first + slot)] * inv_sum;
          for (int64_t d = 0; d < head_dim; ++d) result[d] += weight * value[d];
        }
      }
    }
  }
}

// The largest group of query heads that the decode kernel below takes.
constexpr int64_t kDecodeMaxQueries = 4;

// Returns the mask of the first min(lanes, 16) lanes, for lanes >= 1.
inline __mmask16 FirstLanes(int64_t lanes) {
  return lanes >= kLanes ? static_cast<__mmask16>(0xffff)
                         : static_cast<__mmask16>((1u << lanes) - 1u);
}

// Attention of one token (decode) with kGroup <= kDecodeMaxQueries query heads per KV head.
// The tile kernel below puts queries in lanes, so here it would leave most of its 16 lanes
// idle. This one puts 16 keys in the lanes, which costs one vector exp per query head per
// chunk of keys. Every position up to first_position is visible, so no causal mask is needed.
// kGroup is a template argument so that the per-head accumulators stay in registers.
template <int64_t kGroup>
W8A8_AVX512 void AttentionDecodeAvx512(const AttentionShape& shape, const PagedKv& kv,
                                       int64_t kv_head, const float* q, int64_t first_position,
                                       float* out) {
  constexpr int64_t group = kGroup;
  const int64_t head_dim = shape.head_dim;
  const int64_t block_size = kv.block_size;
  const int64_t head_offset = kv_head * block_size * head_dim;
  const int64_t context = first_position + 1;
  // The scaled queries and the unnormalized outputs, head_dim floats per query head.
  thread_local std::vector<float> buffer;
  buffer.resize(static_cast<size_t>(2 * group * head_dim));
  float* queries = buffer.data();
  float* outputs = queries + group * head_dim;
  for (int64_t g = 0; g < group; ++g) {
    const float* query = q + (kv_head * group + g) * head_dim;
    for (int64_t d = 0; d < head_dim; ++d) queries[g * head_dim + d] = query[d] * shape.scale;
  }
  std::memset(outputs, 0, sizeof(float) * static_cast<size_t>(group * head_dim));
  const __m512 minus_infinity = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 running_max[group];
  float normalizer[group];
  for (int64_t g = 0; g < group; ++g) {
    running_max[g] = minus_infinity;
    normalizer[g] = 0.0f;
  }

  for (int64_t first = 0; first < context; first += block_size) {
    const int64_t block = kv.block_table[first / block_size];
    const float* block_keys = kv.keys + block * kv.block_stride + head_offset;
    const float* block_values = kv.values + block * kv.block_stride + head_offset;
    const int64_t in_block = std::min(block_size, context - first);
    for (int64_t chunk = 0; chunk < in_block; chunk += kLanes) {
      const int64_t count = std::min(kLanes, in_block - chunk);
      const __mmask16 valid = FirstLanes(count);
      const float* keys = block_keys + chunk * head_dim;
      const float* values = block_values + chunk * head_dim;

      // scores[g][j] = q_g . k_j, 16 dimensions at a time. Lanes past `count` stay 0.
      alignas(64) float scores[group][kLanes] = {};
      for (int64_t j = 0; j < count; ++j) {
        __m512 dots[group];
        for (int64_t g = 0; g < group; ++g) dots[g] = _mm512_setzero_ps();
        for (int64_t d = 0; d < head_dim; d += kLanes) {
          const __mmask16 part = FirstLanes(head_dim - d);
          const __m512 key = _mm512_maskz_loadu_ps(part, keys + j * head_dim + d);
          for (int64_t g = 0; g < group; ++g) {
            dots[g] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(part, queries + g * head_dim + d),
                                      key, dots[g]);
          }
        }
        for (int64_t g = 0; g < group; ++g) scores[g][j] = _mm512_reduce_add_ps(dots[g]);
      }

      // Online softmax per query head: the new maximum, the correction of what came before,
      // and the weights of this chunk, with zeros past `count`.
      alignas(64) float weights[group][kLanes];
      __m512 correction[group];
      for (int64_t g = 0; g < group; ++g) {
        const __m512 chunk_scores =
            _mm512_mask_blend_ps(valid, minus_infinity, _mm512_load_ps(scores[g]));
        const __m512 new_max =
            _mm512_max_ps(running_max[g], _mm512_set1_ps(_mm512_reduce_max_ps(chunk_scores)));
        correction[g] = internal::ExpAvx512(_mm512_sub_ps(running_max[g], new_max));
        const __m512 chunk_weights =
            _mm512_maskz_mov_ps(valid, internal::ExpAvx512(_mm512_sub_ps(chunk_scores, new_max)));
        normalizer[g] = normalizer[g] * _mm512_cvtss_f32(correction[g]) +
                        _mm512_reduce_add_ps(chunk_weights);
        _mm512_store_ps(weights[g], chunk_weights);
        running_max[g] = new_max;
      }

      // outputs[g] = outputs[g] * correction[g] + sum_j weights[g][j] v_j.
      for (int64_t d = 0; d < head_dim; d += kLanes) {
        const __mmask16 part = FirstLanes(head_dim - d);
        __m512 sums[group];
        for (int64_t g = 0; g < group; ++g) {
          sums[g] = _mm512_mul_ps(_mm512_maskz_loadu_ps(part, outputs + g * head_dim + d),
                                  correction[g]);
        }
        for (int64_t j = 0; j < count; ++j) {
          const __m512 value = _mm512_maskz_loadu_ps(part, values + j * head_dim + d);
          for (int64_t g = 0; g < group; ++g) {
            sums[g] = _mm512_fmadd_ps(_mm512_set1_ps(weights[g][j]), value, sums[g]);
          }
        }
        for (int64_t g = 0; g < group; ++g) {
          _mm512_mask_storeu_ps(outputs + g * head_dim + d, part, sums[g]);
        }
      }
    }
  }

  for (int64_t g = 0; g < group; ++g) {
    const float inverse = 1.0f / normalizer[g];
    float* result = out + (kv_head * group + g) * head_dim;
    for (int64_t d = 0; d < head_dim; ++d) result[d] = outputs[g * head_dim + d] * inverse;
  }
}

// Lane i of a tile is query begin + i, that is token (begin + i) / group and query head
// kv_head * group + (begin + i) % group. The queries are stored transposed, [head_dim][16], so
// one FMA with a broadcast key element advances 16 dot products, and the running maximum,
// normalizer and output of the online softmax are lane-wise too. Lanes past the last query
// repeat it, so every lane contains finite numbers. Their results are not written.
W8A8_AVX512 void AttentionAvx512(const AttentionShape& shape, const PagedKv& kv, int64_t kv_head,
                                 const float* q, int64_t q_stride, int64_t tokens,
                                 int64_t first_position, float* out, int64_t out_stride) {
  const int64_t group = shape.num_heads / shape.num_kv_heads;
  const int64_t head_dim = shape.head_dim;
  const int64_t block_size = kv.block_size;
  const int64_t head_offset = kv_head * block_size * head_dim;
  const int64_t queries = tokens * group;
  // Transposed queries, transposed outputs, and 16 padded key rows for a partial chunk.
  thread_local std::vector<float> buffer;
  buffer.resize(static_cast<size_t>(3 * kLanes * head_dim));
  float* query_t = buffer.data();
  float* output_t = query_t + kLanes * head_dim;
  float* padded_keys = output_t + kLanes * head_dim;
  const __m512 minus_infinity = _mm512_set1_ps(-std::numeric_limits<float>::infinity());

  for (int64_t begin = 0; begin < queries; begin += kLanes) {
    const int64_t lanes = std::min(kLanes, queries - begin);
    alignas(64) float lane_positions[kLanes];
    for (int64_t i = 0; i < kLanes; ++i) {
      const int64_t index = begin + std::min(i, lanes - 1);
      const int64_t token = index / group;
      const float* query = q + token * q_stride + (kv_head * group + index % group) * head_dim;
      lane_positions[i] = static_cast<float>(first_position + token);
      for (int64_t d = 0; d < head_dim; ++d) query_t[d * kLanes + i] = query[d] * shape.scale;
    }
    std::memset(output_t, 0, sizeof(float) * static_cast<size_t>(kLanes * head_dim));
    const __m512 positions = _mm512_load_ps(lane_positions);
    // The last lane has the latest position of the tile.
    const int64_t context = static_cast<int64_t>(lane_positions[kLanes - 1]) + 1;
    __m512 running_max = minus_infinity;
    __m512 normalizer = _mm512_setzero_ps();

    for (int64_t first = 0; first < context; first += block_size) {
      const int64_t block = kv.block_table[first / block_size];
      const float* block_keys = kv.keys + block * kv.block_stride + head_offset;
      const float* block_values = kv.values + block * kv.block_stride + head_offset;
      const int64_t in_block = std::min(block_size, context - first);
      for (int64_t chunk = 0; chunk < in_block; chunk += kLanes) {
        const int64_t count = std::min(kLanes, in_block - chunk);
        const float* keys = block_keys + chunk * head_dim;
        if (count < kLanes) {
          // Rows past `count` may hold anything (even NaN): compute on copies of row 0.
          for (int64_t j = 0; j < kLanes; ++j) {
            std::memcpy(padded_keys + j * head_dim, keys + (j < count ? j : 0) * head_dim,
                        sizeof(float) * static_cast<size_t>(head_dim));
          }
          keys = padded_keys;
        }
        __m512 scores[kLanes];
        for (int64_t j = 0; j < kLanes; ++j) scores[j] = _mm512_setzero_ps();
        for (int64_t d = 0; d < head_dim; ++d) {
          const __m512 query = _mm512_loadu_ps(query_t + d * kLanes);
          for (int64_t j = 0; j < kLanes; ++j) {
            scores[j] = _mm512_fmadd_ps(query, _mm512_set1_ps(keys[j * head_dim + d]), scores[j]);
          }
        }
        // Causal mask: key position first + chunk + j is visible to lanes at or after it.
        __mmask16 visible[kLanes];
        __m512 chunk_max = minus_infinity;
        for (int64_t j = 0; j < kLanes; ++j) {
          const float key_position = static_cast<float>(first + chunk + j);
          visible[j] = j < count
                           ? _mm512_cmp_ps_mask(_mm512_set1_ps(key_position), positions, _CMP_LE_OQ)
                           : static_cast<__mmask16>(0);
          scores[j] = _mm512_mask_blend_ps(visible[j], minus_infinity, scores[j]);
          chunk_max = _mm512_max_ps(chunk_max, scores[j]);
        }
        // Position 0 is visible to every lane in the first chunk, so new_max is finite from then
        // on.
        const __m512 new_max = _mm512_max_ps(running_max, chunk_max);
        const __m512 correction = internal::ExpAvx512(_mm512_sub_ps(running_max, new_max));
        normalizer = _mm512_mul_ps(normalizer, correction);
        for (int64_t j = 0; j < count; ++j) {
          scores[j] = _mm512_maskz_mov_ps(visible[j],
                                          internal::ExpAvx512(_mm512_sub_ps(scores[j], new_max)));
          normalizer = _mm512_add_ps(normalizer, scores[j]);
        }
        running_max = new_max;
        const float* values = block_values + chunk * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) {
          __m512 sum = _mm512_mul_ps(_mm512_loadu_ps(output_t + d * kLanes), correction);
          for (int64_t j = 0; j < count; ++j) {
            sum = _mm512_fmadd_ps(scores[j], _mm512_set1_ps(values[j * head_dim + d]), sum);
          }
          _mm512_storeu_ps(output_t + d * kLanes, sum);
        }
      }
    }

    const __m512 inverse = _mm512_div_ps(_mm512_set1_ps(1.0f), normalizer);
    for (int64_t d = 0; d < head_dim; ++d) {
      _mm512_storeu_ps(output_t + d * kLanes,
                       _mm512_mul_ps(_mm512_loadu_ps(output_t + d * kLanes), inverse));
    }
    for (int64_t i = 0; i < lanes; ++i) {
      const int64_t index = begin + i;
      float* result =
          out + (index / group) * out_stride + (kv_head * group + index % group) * head_dim;
      for (int64_t d = 0; d < head_dim; ++d) result[d] = output_t[d * kLanes + i];
    }
  }
}

}  // namespace

void CausalAttentionKvHead(Isa isa, const AttentionShape& shape, const PagedKv& kv, int64_t kv_head,
                           const float* q, int64_t q_stride, int64_t tokens, int64_t first_position,
                           float* out, int64_t out_stride) {
  if (tokens <= 0) return;
  if (isa == Isa::kAvx512Vnni) {
    if (tokens == 1) {
      switch (shape.num_heads / shape.num_kv_heads) {
        case 1:
          return AttentionDecodeAvx512<1>(shape, kv, kv_head, q, first_position, out);
        case 2:
          return AttentionDecodeAvx512<2>(shape, kv, kv_head, q, first_position, out);
        case 3:
          return AttentionDecodeAvx512<3>(shape, kv, kv_head, q, first_position, out);
        case 4:
          return AttentionDecodeAvx512<4>(shape, kv, kv_head, q, first_position, out);
        default:
          break;
      }
    }
    AttentionAvx512(shape, kv, kv_head, q, q_stride, tokens, first_position, out, out_stride);
  } else {
    // NOTE: AVX2 uses the plain loops, which the compiler vectorizes only for SSE.
    AttentionScalar(shape, kv, kv_head, q, q_stride, tokens, first_position, out, out_stride);
  }
}

}  // namespace w8a8::kernels
