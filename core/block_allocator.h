// A pool of fixed-size KV-cache blocks handed out to sequences by id.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"

namespace w8a8 {

// Tracks which of `num_blocks` KV-cache block ids are free. The ids index a KvCache of the same
// size. Allocation is all-or-nothing, so a failed request leaves the pool unchanged.
//
// Not thread-safe: the engine thread owns the allocator and is its only caller. No call blocks.
class BlockAllocator {
 public:
  explicit BlockAllocator(int64_t num_blocks);

  // Appends `count` free block ids to `table`. Returns RESOURCE_EXHAUSTED, with `table`
  // unchanged, when fewer than `count` blocks are free, and INVALID_ARGUMENT for a negative
  // count.
  absl::Status Allocate(int64_t count, std::vector<int32_t>& table);

  // Returns every id of `blocks` to the pool. Returns INVALID_ARGUMENT, and frees nothing,
  // when an id is out of range, not allocated, or listed twice.
  absl::Status Free(std::span<const int32_t> blocks);

  int64_t num_blocks() const { return static_cast<int64_t>(allocated_.size()); }
  int64_t num_free() const { return static_cast<int64_t>(free_.size()); }
  int64_t num_used() const { return num_blocks() - num_free(); }

  // Blocks needed to hold `tokens` positions, `block_size` positions per block.
  static int64_t BlocksForTokens(int64_t tokens, int64_t block_size);

 private:
  // Free ids as a stack: the most recently freed block is handed out first.
  std::vector<int32_t> free_;
  std::vector<bool> allocated_;
};

}  // namespace w8a8
