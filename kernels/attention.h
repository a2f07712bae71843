// Causal grouped-query attention over a paged KV cache: the query heads that share one KV head,
// for consecutive tokens of one sequence. The caller splits the work (sequences, KV heads,
// token ranges) among threads; each call is single-threaded and writes only its own outputs.
#pragma once

#include <cstdint>

#include "kernels/cpu_features.h"

namespace w8a8::kernels {

// The cache layout of one layer: block b contains keys (and, at the same offset in `values`,
// values) [kv_head][block_size][head_dim] at keys + b * block_stride.
struct PagedKv {
  const float* keys = nullptr;
  const float* values = nullptr;
  int64_t block_stride = 0;  // Floats from one block to the next.
  int64_t block_size = 0;    // Positions per block.
  const int32_t* block_table = nullptr;  // The sequence's block ids, in position order.
};

struct AttentionShape {
  int64_t num_heads = 0;     // Query heads.
  int64_t num_kv_heads = 0;  // Must divide num_heads.
  int64_t head_dim = 0;
  float scale = 1.0f;        // Applied to q.k before the softmax, usually 1/sqrt(head_dim).
};

// For each token t < tokens at position first_position + t and each query head h of KV head
// `kv_head` (h = kv_head * group + g), writes
//   out[t * out_stride + h * head_dim + d] = sum_p softmax_p(scale * q.k_p) v_p[d]
// over the cache positions p <= first_position + t, where q is
// q[t * q_stride + h * head_dim ...]. The keys and values of every such position must already
// be in the cache. Slots past the newest position are never read as values, so their contents
// do not matter. The AVX-512 path evaluates exp with a polynomial, so results differ from the
// scalar path in the last bits.
void CausalAttentionKvHead(Isa isa, const AttentionShape& shape, const PagedKv& kv,
                           int64_t kv_head, const float* q, int64_t q_stride, int64_t tokens,
                           int64_t first_position, float* out, int64_t out_stride);

}  // namespace w8a8::kernels
