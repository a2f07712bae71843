#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu_features.h"

namespace w8a8::kernels {
namespace {

struct Case {
  int64_t num_heads;
  int64_t num_kv_heads;
  int64_t head_dim;
  int64_t block_size;
  int64_t first_position;  // Tokens already in the cache before the new ones.
  int64_t tokens;          // New tokens, whose keys and values are in the cache too.
};

std::string Describe(Isa isa, const Case& c) {
  return std::string(IsaName(isa)) + " heads=" + std::to_string(c.num_heads) + "/" +
         std::to_string(c.num_kv_heads) + " head_dim=" + std::to_string(c.head_dim) +
         " block=" + std::to_string(c.block_size) + " first=" + std::to_string(c.first_position) +
         " tokens=" + std::to_string(c.tokens);
}

// A paged cache for one sequence whose blocks are scattered over a larger pool in reverse
// order. Every slot past the sequence's last position contains NaN, which no kernel may read as
// a value.
struct SequenceCache {
  std::vector<float> keys;
  std::vector<float> values;
  std::vector<int32_t> block_table;
  int64_t block_stride;
};

SequenceCache MakeCache(const Case& c, std::mt19937& engine) {
  const int64_t context = c.first_position + c.tokens;
  const int64_t blocks = (context + c.block_size - 1) / c.block_size;
  const int64_t pool = 2 * blocks + 1;
  SequenceCache cache;
  cache.block_stride = c.num_kv_heads * c.block_size * c.head_dim;
  cache.keys.assign(static_cast<size_t>(pool * cache.block_stride),
                    std::numeric_limits<float>::quiet_NaN());
  cache.values = cache.keys;
  for (int64_t b = 0; b < blocks; ++b)
    cache.block_table.push_back(static_cast<int32_t>(pool - 1 - 2 * b));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t p = 0; p < context; ++p) {
    const int64_t block = cache.block_table[static_cast<size_t>(p / c.block_size)];
    for (int64_t h = 0; h < c.num_kv_heads; ++h) {
      for (int64_t d = 0; d < c.head_dim; ++d) {
        const int64_t index =
            block * cache.block_stride + (h * c.block_size + p % c.block_size) * c.head_dim + d;
        cache.keys[static_cast<size_t>(index)] = normal(engine);
        cache.values[static_cast<size_t>(index)] = normal(engine);
      }
    }
  }
  return cache;
}

// Attention in double precision from the definition.
std::vector<double> Reference(const Case& c, const SequenceCache& cache,
                              const std::vector<float>& q, float scale) {
  const int64_t group = c.num_heads / c.num_kv_heads;
  const int64_t features = c.num_heads * c.head_dim;
  std::vector<double> out(static_cast<size_t>(c.tokens * features), 0.0);
  auto at = [&](const std::vector<float>& data, int64_t position, int64_t kv_head, int64_t d) {
    const int64_t block = cache.block_table[static_cast<size_t>(position / c.block_size)];
    return double{data[static_cast<size_t>(
        block * cache.block_stride +
        (kv_head * c.block_size + position % c.block_size) * c.head_dim + d)]};
  };
  for (int64_t t = 0; t < c.tokens; ++t) {
    const int64_t context = c.first_position + t + 1;
    for (int64_t h = 0; h < c.num_heads; ++h) {
      std::vector<double> scores(static_cast<size_t>(context));
      for (int64_t p = 0; p < context; ++p) {
        double dot = 0.0;
        for (int64_t d = 0; d < c.head_dim; ++d) {
          dot += double{q[static_cast<size_t>(t * features + h * c.head_dim + d)]} *
                 at(cache.keys, p, h / group, d);
        }
        scores[static_cast<size_t>(p)] = dot * scale;
      }
      const double max_score = *std::max_element(scores.begin(), scores.end());
      double sum = 0.0;
      for (double& score : scores) sum += (score = std::exp(score - max_score));
      for (int64_t p = 0; p < context; ++p) {
        for (int64_t d = 0; d < c.head_dim; ++d) {
          out[static_cast<size_t>(t * features + h * c.head_dim + d)] +=
              scores[static_cast<size_t>(p)] / sum * at(cache.values, p, h / group, d);
        }
      }
    }
  }
  return out;
}

void ExpectMatchesReference(Isa isa, const Case& c, uint32_t seed) {
  std::mt19937 engine(seed);
  const SequenceCache cache = MakeCache(c, engine);
  const int64_t features = c.num_heads * c.head_dim;
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> q(static_cast<size_t>(c.tokens * features));
  for (float& value : q) value = normal(engine);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const std::vector<double> expected = Reference(c, cache, q, scale);

  const AttentionShape shape{c.num_heads, c.num_kv_heads, c.head_dim, scale};
  const PagedKv kv{cache.keys.data(), cache.values.data(), cache.block_stride, c.block_size,
                   cache.block_table.data()};
  // Outputs are written with a wider row stride than the queries' to check both strides.
  const int64_t out_stride = features + 3;
  std::vector<float> out(static_cast<size_t>(c.tokens * out_stride), -7.0f);
  for (int64_t kv_head = 0; kv_head < c.num_kv_heads; ++kv_head) {
    CausalAttentionKvHead(isa, shape, kv, kv_head, q.data(), features, c.tokens, c.first_position,
                          out.data(), out_stride);
  }
  const std::string context = Describe(isa, c);
  for (int64_t t = 0; t < c.tokens; ++t) {
    for (int64_t i = 0; i < out_stride; ++i) {
      const float actual = out[static_cast<size_t>(t * out_stride + i)];
      if (i >= features) {
        ASSERT_EQ(actual, -7.0f) << context << ": wrote past the heads at token " << t;
        continue;
      }
      ASSERT_NEAR(actual, expected[static_cast<size_t>(t * features + i)], 2e-5)
          << context << " token " << t << " feature " << i;
    }
  }
}

const Case kCases[] = {
    // Llama-3.2-1B heads: decode of one token, a short prompt, and a prompt with history.
    {32, 8, 64, 16, 37, 1},
    {32, 8, 64, 16, 0, 50},
    {32, 8, 64, 16, 21, 19},
    // Multi-head attention, a group of 3, odd head_dim, blocks not a multiple of 16 and
    // larger than 16, one position only.
    {4, 4, 48, 5, 3, 9},
    {6, 2, 13, 7, 0, 23},
    {3, 1, 8, 40, 30, 17},
    {2, 1, 16, 16, 0, 1},
    // Decode of one token with up to 4 query heads per KV head, which puts keys in the lanes.
    // The cases are stories260K and Llama-3.2-1B heads over several blocks, head_dim not a
    // multiple of 16, blocks of 7 and 40 positions, and a context of exactly one block. A
    // group of 5 takes the kernel with queries in the lanes.
    {8, 4, 8, 16, 100, 1},
    {32, 8, 64, 16, 300, 1},
    {6, 2, 13, 7, 40, 1},
    {4, 4, 48, 40, 0, 1},
    {3, 1, 20, 40, 39, 1},
    {10, 2, 8, 16, 20, 1},
};

TEST(AttentionTest, EveryIsaMatchesDoublePrecisionReference) {
  uint32_t seed = 1;
  for (Isa isa : SupportedIsas()) {
    for (const Case& c : kCases) ExpectMatchesReference(isa, c, seed++);
  }
}

TEST(AttentionTest, TokensAttendOnlyToEarlierPositions) {
  // Changing the key and value of the last position changes only the last token's output.
  const Case c{4, 2, 16, 4, 2, 6};
  for (Isa isa : SupportedIsas()) {
    std::mt19937 engine(99);
    SequenceCache cache = MakeCache(c, engine);
    const int64_t features = c.num_heads * c.head_dim;
    std::vector<float> q(static_cast<size_t>(c.tokens * features), 0.5f);
    const AttentionShape shape{c.num_heads, c.num_kv_heads, c.head_dim, 0.25f};
    auto run = [&]() {
      const PagedKv kv{cache.keys.data(), cache.values.data(), cache.block_stride, c.block_size,
                       cache.block_table.data()};
      std::vector<float> out(static_cast<size_t>(c.tokens * features));
      for (int64_t h = 0; h < c.num_kv_heads; ++h) {
        CausalAttentionKvHead(isa, shape, kv, h, q.data(), features, c.tokens, c.first_position,
                              out.data(), features);
      }
      return out;
    };
    const std::vector<float> before = run();
    const int64_t last = c.first_position + c.tokens - 1;
    const int64_t block = cache.block_table[static_cast<size_t>(last / c.block_size)];
    for (int64_t h = 0; h < c.num_kv_heads; ++h) {
      for (int64_t d = 0; d < c.head_dim; ++d) {
        const size_t index = static_cast<size_t>(
            block * cache.block_stride + (h * c.block_size + last % c.block_size) * c.head_dim + d);
        cache.keys[index] += 3.0f;
        cache.values[index] -= 5.0f;
      }
    }
    const std::vector<float> after = run();
    const size_t last_row = static_cast<size_t>((c.tokens - 1) * features);
    for (size_t i = 0; i < last_row; ++i)
      ASSERT_EQ(before[i], after[i]) << IsaName(isa) << " " << i;
    for (size_t i = last_row; i < before.size(); ++i) {
      ASSERT_NE(before[i], after[i]) << IsaName(isa) << " " << i;
    }
  }
}

}  // namespace
}  // namespace w8a8::kernels
