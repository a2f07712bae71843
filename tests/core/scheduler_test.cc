#include "core/scheduler.h"

#include <vector>

#include "gtest/gtest.h"

namespace w8a8 {
namespace {

SchedulerLimits Limits(int64_t max_running, int64_t max_batch_tokens, int64_t block_size) {
  return {.max_running_sequences = max_running,
          .max_batch_tokens = max_batch_tokens,
          .block_size = block_size};
}

// A running sequence past its prompt: `computed` tokens cached, one sampled token pending.
RunningSequence Decoding(uint64_t id, int64_t computed, int64_t blocks) {
  return {.id = id, .num_tokens = computed + 1, .num_computed = computed, .num_blocks = blocks};
}

TEST(SchedulerTest, DecodesComeBeforePrefill) {
  const std::vector<RunningSequence> running = {
      {.id = 1, .num_tokens = 40, .num_computed = 8, .num_blocks = 3},  // Prompt in progress.
      Decoding(2, 20, 2),
  };
  const Schedule schedule = ScheduleStep(running, {}, 10, Limits(4, 64, 16));

  ASSERT_EQ(schedule.chunks.size(), 2u);
  EXPECT_EQ(schedule.chunks[0].id, 2u);
  EXPECT_EQ(schedule.chunks[0].num_tokens, 1);
  EXPECT_EQ(schedule.chunks[1].id, 1u);
  EXPECT_EQ(schedule.chunks[1].num_tokens, 32);
  EXPECT_EQ(schedule.chunks[1].new_blocks, 0);
  EXPECT_EQ(schedule.num_decode_tokens, 1);
  EXPECT_EQ(schedule.num_prefill_tokens, 32);
  EXPECT_TRUE(schedule.preempted.empty());
}

TEST(SchedulerTest, TokenBudgetChunksPrompts) {
  const std::vector<WaitingSequence> waiting = {{.id = 1, .num_tokens = 100},
                                                {.id = 2, .num_tokens = 10}};
  const Schedule schedule = ScheduleStep({}, waiting, 100, Limits(4, 64, 16));

  // The first prompt takes the whole budget, so the second waits for the next step.
  ASSERT_EQ(schedule.chunks.size(), 1u);
  EXPECT_EQ(schedule.chunks[0].id, 1u);
  EXPECT_EQ(schedule.chunks[0].num_tokens, 64);
  EXPECT_TRUE(schedule.chunks[0].admitted);
  // Blocks for the whole 100-token prompt are taken at admission.
  EXPECT_EQ(schedule.chunks[0].new_blocks, 7);
  EXPECT_EQ(schedule.num_prefill_tokens, 64);
}

TEST(SchedulerTest, ChunkedPrefillContinuesNextStep) {
  // The state after the step above: 64 of 100 prompt tokens computed.
  const std::vector<RunningSequence> running = {
      {.id = 1, .num_tokens = 100, .num_computed = 64, .num_blocks = 7}};
  const std::vector<WaitingSequence> waiting = {{.id = 2, .num_tokens = 10}};
  const Schedule schedule = ScheduleStep(running, waiting, 93, Limits(4, 64, 16));

  ASSERT_EQ(schedule.chunks.size(), 2u);
  EXPECT_EQ(schedule.chunks[0].id, 1u);
  EXPECT_EQ(schedule.chunks[0].num_tokens, 36);
  EXPECT_FALSE(schedule.chunks[0].admitted);
  EXPECT_EQ(schedule.chunks[1].id, 2u);
  EXPECT_EQ(schedule.chunks[1].num_tokens, 10);
  EXPECT_TRUE(schedule.chunks[1].admitted);
  EXPECT_EQ(schedule.num_prefill_tokens, 46);
}

TEST(SchedulerTest, MaxRunningLimitsAdmission) {
  const std::vector<RunningSequence> running = {Decoding(1, 5, 1), Decoding(2, 5, 1)};
  const std::vector<WaitingSequence> waiting = {{.id = 3, .num_tokens = 4},
                                                {.id = 4, .num_tokens = 4}};
  const Schedule schedule = ScheduleStep(running, waiting, 100, Limits(3, 64, 16));

  ASSERT_EQ(schedule.chunks.size(), 3u);
  EXPECT_EQ(schedule.chunks[2].id, 3u);
  EXPECT_TRUE(schedule.chunks[2].admitted);
  EXPECT_EQ(schedule.num_decode_tokens, 2);
}

TEST(SchedulerTest, AdmissionNeedsWholePromptBlocks) {
  // 40 tokens need 3 blocks of 16, and only 2 are free.
  const std::vector<WaitingSequence> waiting = {{.id = 1, .num_tokens = 40},
                                                {.id = 2, .num_tokens = 4}};
  const Schedule schedule = ScheduleStep({}, waiting, 2, Limits(4, 64, 16));

  // The small prompt behind it does not overtake it.
  EXPECT_TRUE(schedule.chunks.empty());
}

TEST(SchedulerTest, AdmissionFitsExactBlocks) {
  const std::vector<WaitingSequence> waiting = {{.id = 1, .num_tokens = 32}};
  const Schedule schedule = ScheduleStep({}, waiting, 2, Limits(4, 64, 16));

  ASSERT_EQ(schedule.chunks.size(), 1u);
  EXPECT_EQ(schedule.chunks[0].new_blocks, 2);
}

TEST(SchedulerTest, DecodeAllocatesBlockAtBoundary) {
  // 16 cached tokens fill one block, so position 16 needs a second block.
  const std::vector<RunningSequence> running = {Decoding(1, 16, 1), Decoding(2, 10, 1)};
  const Schedule schedule = ScheduleStep(running, {}, 5, Limits(4, 64, 16));

  ASSERT_EQ(schedule.chunks.size(), 2u);
  EXPECT_EQ(schedule.chunks[0].new_blocks, 1);
  EXPECT_EQ(schedule.chunks[1].new_blocks, 0);
}

TEST(SchedulerTest, PoolExhaustionPreemptsNewest) {
  // Both sequences cross a block boundary, and one block is free.
  const std::vector<RunningSequence> running = {Decoding(1, 16, 1), Decoding(2, 32, 2)};
  const std::vector<WaitingSequence> waiting = {{.id = 3, .num_tokens = 1}};
  const Schedule schedule = ScheduleStep(running, waiting, 1, Limits(4, 64, 16));

  // The oldest takes the free block; the newest cannot grow and preempts itself.
  ASSERT_EQ(schedule.chunks.size(), 1u);
  EXPECT_EQ(schedule.chunks[0].id, 1u);
  EXPECT_EQ(schedule.chunks[0].new_blocks, 1);
  ASSERT_EQ(schedule.preempted.size(), 1u);
  EXPECT_EQ(schedule.preempted[0], 2u);
  // Nothing is admitted in a step that preempted, even though blocks are free again.
  EXPECT_EQ(schedule.num_prefill_tokens, 0);
}

TEST(SchedulerTest, PreemptionFreesBlocksForOlder) {
  // No block is free. The oldest needs one, so the newest gives up its two blocks.
  const std::vector<RunningSequence> running = {Decoding(1, 16, 1), Decoding(2, 20, 2),
                                                Decoding(3, 20, 2)};
  const Schedule schedule = ScheduleStep(running, {}, 0, Limits(4, 64, 16));

  ASSERT_EQ(schedule.preempted.size(), 1u);
  EXPECT_EQ(schedule.preempted[0], 3u);
  ASSERT_EQ(schedule.chunks.size(), 2u);
  EXPECT_EQ(schedule.chunks[0].id, 1u);
  EXPECT_EQ(schedule.chunks[0].new_blocks, 1);
  EXPECT_EQ(schedule.chunks[1].id, 2u);
  EXPECT_EQ(schedule.chunks[1].new_blocks, 0);
}

TEST(SchedulerTest, PreemptionCanTakePromptInProgress) {
  // The newest sequence is still in its prompt and holds 4 blocks; the decoder needs one.
  const std::vector<RunningSequence> running = {
      Decoding(1, 16, 1), {.id = 2, .num_tokens = 64, .num_computed = 32, .num_blocks = 4}};
  const Schedule schedule = ScheduleStep(running, {}, 0, Limits(4, 64, 16));

  ASSERT_EQ(schedule.preempted.size(), 1u);
  EXPECT_EQ(schedule.preempted[0], 2u);
  ASSERT_EQ(schedule.chunks.size(), 1u);
  EXPECT_EQ(schedule.chunks[0].id, 1u);
}

TEST(SchedulerTest, EmptySnapshotSchedulesNothing) {
  const Schedule schedule = ScheduleStep({}, {}, 10, Limits(4, 64, 16));
  EXPECT_TRUE(schedule.chunks.empty());
  EXPECT_TRUE(schedule.preempted.empty());
}

TEST(SchedulerTest, BudgetCountsDecodesFirst) {
  // Three decodes leave 1 token of a budget of 4 for the waiting prompt.
  const std::vector<RunningSequence> running = {Decoding(1, 3, 1), Decoding(2, 3, 1),
                                                Decoding(3, 3, 1)};
  const std::vector<WaitingSequence> waiting = {{.id = 4, .num_tokens = 20}};
  const Schedule schedule = ScheduleStep(running, waiting, 10, Limits(8, 4, 16));

  ASSERT_EQ(schedule.chunks.size(), 4u);
  EXPECT_EQ(schedule.chunks[3].id, 4u);
  EXPECT_EQ(schedule.chunks[3].num_tokens, 1);
  EXPECT_EQ(schedule.chunks[3].new_blocks, 2);
}

}  // namespace
}  // namespace w8a8
