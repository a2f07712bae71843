#include "core/block_allocator.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace w8a8 {

BlockAllocator::BlockAllocator(int64_t num_blocks)
    : allocated_(static_cast<size_t>(std::max<int64_t>(num_blocks, 0)), false) {
  free_.reserve(allocated_.size());
  // Pushed in reverse so that block 0 is handed out first.
  for (int64_t id = num_blocks - 1; id >= 0; --id) {
    free_.push_back(static_cast<int32_t>(id));
  }
}

absl::Status BlockAllocator::Allocate(int64_t count, std::vector<int32_t>& table) {
  if (count < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid block count ", count, ": it must be >= 0"));
  }
  if (count > num_free()) {
    return absl::ResourceExhaustedError(absl::StrCat("requested ", count, " KV-cache blocks but ",
                                                     num_free(), " of ", num_blocks(),
                                                     " are free"));
  }
  for (int64_t i = 0; i < count; ++i) {
    const int32_t id = free_.back();
    free_.pop_back();
    allocated_[static_cast<size_t>(id)] = true;
    table.push_back(id);
  }
  return absl::OkStatus();
}

absl::Status BlockAllocator::Free(std::span<const int32_t> blocks) {
  // Validate everything first so that a bad list frees nothing.
  std::vector<int32_t> sorted(blocks.begin(), blocks.end());
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < sorted.size(); ++i) {
    const int32_t id = sorted[i];
    if (id < 0 || id >= num_blocks()) {
      return absl::InvalidArgumentError(absl::StrCat("block id ", id, " is out of range [0, ",
                                                     num_blocks(), ")"));
    }
    if (!allocated_[static_cast<size_t>(id)]) {
      return absl::InvalidArgumentError(
          absl::StrCat("block id ", id, " is not allocated, so it cannot be freed"));
    }
    if (i > 0 && sorted[i - 1] == id) {
      return absl::InvalidArgumentError(
          absl::StrCat("block id ", id, " is listed twice in one Free call"));
    }
  }
  for (const int32_t id : blocks) {
    allocated_[static_cast<size_t>(id)] = false;
    free_.push_back(id);
  }
  return absl::OkStatus();
}

int64_t BlockAllocator::BlocksForTokens(int64_t tokens, int64_t block_size) {
  if (tokens <= 0 || block_size <= 0) return 0;
  return (tokens + block_size - 1) / block_size;
}

}  // namespace w8a8
