#include "core/block_allocator.h"

#include <algorithm>
#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace w8a8 {
namespace {

TEST(BlockAllocatorTest, AllocatesDistinctIdsInRange) {
  BlockAllocator allocator(8);
  std::vector<int32_t> table;
  ASSERT_TRUE(allocator.Allocate(3, table).ok());
  ASSERT_TRUE(allocator.Allocate(5, table).ok());

  ASSERT_EQ(table.size(), 8u);
  const std::set<int32_t> distinct(table.begin(), table.end());
  EXPECT_EQ(distinct.size(), 8u);
  EXPECT_EQ(*distinct.begin(), 0);
  EXPECT_EQ(*distinct.rbegin(), 7);
  EXPECT_EQ(allocator.num_free(), 0);
  EXPECT_EQ(allocator.num_used(), 8);
}

TEST(BlockAllocatorTest, ExhaustionLeavesPoolUnchanged) {
  BlockAllocator allocator(4);
  std::vector<int32_t> table;
  ASSERT_TRUE(allocator.Allocate(3, table).ok());

  const absl::Status status = allocator.Allocate(2, table);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(status.message().find("1 of 4 are free"), std::string::npos) << status;
  EXPECT_EQ(table.size(), 3u);
  EXPECT_EQ(allocator.num_free(), 1);
}

TEST(BlockAllocatorTest, FreedBlocksAreReused) {
  BlockAllocator allocator(2);
  std::vector<int32_t> first;
  ASSERT_TRUE(allocator.Allocate(2, first).ok());
  ASSERT_TRUE(allocator.Free(first).ok());
  EXPECT_EQ(allocator.num_free(), 2);

  std::vector<int32_t> second;
  ASSERT_TRUE(allocator.Allocate(2, second).ok());
  std::sort(first.begin(), first.end());
  std::sort(second.begin(), second.end());
  EXPECT_EQ(first, second);
}

TEST(BlockAllocatorTest, DoubleFreeIsRejected) {
  BlockAllocator allocator(4);
  std::vector<int32_t> table;
  ASSERT_TRUE(allocator.Allocate(2, table).ok());
  ASSERT_TRUE(allocator.Free(table).ok());

  const absl::Status status = allocator.Free(table);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("not allocated"), std::string::npos) << status;
  EXPECT_EQ(allocator.num_free(), 4);
}

TEST(BlockAllocatorTest, BadFreeListFreesNothing) {
  BlockAllocator allocator(4);
  std::vector<int32_t> table;
  ASSERT_TRUE(allocator.Allocate(2, table).ok());

  const std::vector<int32_t> out_of_range = {table[0], 9};
  EXPECT_EQ(allocator.Free(out_of_range).code(), absl::StatusCode::kInvalidArgument);
  const std::vector<int32_t> negative = {-1};
  EXPECT_EQ(allocator.Free(negative).code(), absl::StatusCode::kInvalidArgument);
  const std::vector<int32_t> repeated = {table[0], table[0]};
  EXPECT_EQ(allocator.Free(repeated).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(allocator.num_used(), 2);
}

TEST(BlockAllocatorTest, NegativeCountIsRejected) {
  BlockAllocator allocator(4);
  std::vector<int32_t> table;
  EXPECT_EQ(allocator.Allocate(-1, table).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(allocator.Allocate(0, table).ok());
  EXPECT_TRUE(table.empty());
}

TEST(BlockAllocatorTest, BlocksForTokensRoundsUp) {
  EXPECT_EQ(BlockAllocator::BlocksForTokens(0, 16), 0);
  EXPECT_EQ(BlockAllocator::BlocksForTokens(1, 16), 1);
  EXPECT_EQ(BlockAllocator::BlocksForTokens(16, 16), 1);
  EXPECT_EQ(BlockAllocator::BlocksForTokens(17, 16), 2);
  EXPECT_EQ(BlockAllocator::BlocksForTokens(33, 16), 3);
}

}  // namespace
}  // namespace w8a8
