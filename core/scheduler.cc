#include "core/scheduler.h"

#include <algorithm>

#include "core/block_allocator.h"

namespace w8a8 {
namespace {

// Blocks a running sequence must add to hold `num_tokens` more positions.
int64_t NewBlocksFor(const RunningSequence& sequence, int64_t num_tokens, int64_t block_size) {
  const int64_t needed =
      BlockAllocator::BlocksForTokens(sequence.num_computed + num_tokens, block_size);
  return std::max<int64_t>(needed - sequence.num_blocks, 0);
}

}  // namespace

Schedule ScheduleStep(std::span<const RunningSequence> running,
                      std::span<const WaitingSequence> waiting, int64_t free_blocks,
                      const SchedulerLimits& limits) {
  Schedule schedule;
  int64_t budget = limits.max_batch_tokens;

  // A running sequence is either scheduled, preempted, or still open (neither, yet).
  enum class Fate { kOpen, kScheduled, kPreempted };
  std::vector<Fate> fates(running.size(), Fate::kOpen);

  // Preempts the newest open sequence and returns its index.
  auto preempt_newest = [&]() -> size_t {
    for (size_t i = running.size(); i-- > 0;) {
      if (fates[i] == Fate::kOpen) {
        fates[i] = Fate::kPreempted;
        free_blocks += running[i].num_blocks;
        schedule.preempted.push_back(running[i].id);
        return i;
      }
    }
    return running.size();
  };

  // Rule 1: one decode token per sequence with a single token left to compute.
  for (size_t i = 0; i < running.size(); ++i) {
    const RunningSequence& sequence = running[i];
    if (fates[i] != Fate::kOpen || sequence.num_tokens - sequence.num_computed != 1) continue;
    if (budget < 1) break;
    const int64_t new_blocks = NewBlocksFor(sequence, 1, limits.block_size);
    bool preempted_itself = false;
    while (new_blocks > free_blocks) {
      if (preempt_newest() == i) {
        preempted_itself = true;
        break;
      }
    }
    if (preempted_itself) continue;
    fates[i] = Fate::kScheduled;
    free_blocks -= new_blocks;
    budget -= 1;
    schedule.num_decode_tokens += 1;
    schedule.chunks.push_back({.id = sequence.id, .num_tokens = 1, .new_blocks = new_blocks});
  }

  // Rule 2: chunks of prompts that are already running.
  for (size_t i = 0; i < running.size() && budget > 0; ++i) {
    const RunningSequence& sequence = running[i];
    if (fates[i] != Fate::kOpen) continue;
    const int64_t remaining = sequence.num_tokens - sequence.num_computed;
    if (remaining <= 0) continue;
    const int64_t chunk = std::min(remaining, budget);
    const int64_t new_blocks = NewBlocksFor(sequence, chunk, limits.block_size);
    // Admission allocates blocks for the whole prompt, so a prompt chunk needs none. The
    // check keeps the schedule valid for any snapshot.
    if (new_blocks > free_blocks) continue;
    fates[i] = Fate::kScheduled;
    free_blocks -= new_blocks;
    budget -= chunk;
    schedule.num_prefill_tokens += chunk;
    schedule.chunks.push_back({.id = sequence.id, .num_tokens = chunk, .new_blocks = new_blocks});
  }

  // Rule 3: admission of waiting sequences, first come, first served.
  if (!schedule.preempted.empty()) return schedule;
  int64_t num_running = static_cast<int64_t>(running.size());
  for (const WaitingSequence& sequence : waiting) {
    if (budget <= 0 || num_running >= limits.max_running_sequences) break;
    if (sequence.num_tokens <= 0) break;
    const int64_t blocks = BlockAllocator::BlocksForTokens(sequence.num_tokens, limits.block_size);
    if (blocks > free_blocks) break;
    const int64_t chunk = std::min(sequence.num_tokens, budget);
    free_blocks -= blocks;
    budget -= chunk;
    num_running += 1;
    schedule.num_prefill_tokens += chunk;
    schedule.chunks.push_back(
        {.id = sequence.id, .num_tokens = chunk, .new_blocks = blocks, .admitted = true});
  }
  return schedule;
}

}  // namespace w8a8
