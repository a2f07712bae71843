// Per-step scheduling decisions of the continuous-batching engine, as pure functions over a
// snapshot of the running and waiting sequences.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace w8a8 {

struct SchedulerLimits {
  int64_t max_running_sequences = 16;
  int64_t max_batch_tokens = 512;  // Tokens of all sequences in one step.
  int64_t block_size = 16;         // Positions per KV-cache block.
};

// A sequence that holds KV-cache blocks. Between steps every running sequence has at least one
// token whose keys and values are not yet in the cache: the rest of its prompt, or the token
// sampled in the previous step.
struct RunningSequence {
  uint64_t id = 0;
  int64_t num_tokens = 0;    // Prompt plus generated tokens known so far.
  int64_t num_computed = 0;  // Leading tokens whose keys and values are in the cache.
  int64_t num_blocks = 0;    // Length of its block table.
};

// A sequence that holds no blocks yet. After a preemption `num_tokens` also counts the tokens
// it generated before, because they are recomputed together with the prompt.
struct WaitingSequence {
  uint64_t id = 0;
  int64_t num_tokens = 0;
};

struct ScheduledChunk {
  uint64_t id = 0;
  int64_t num_tokens = 0;  // Tokens to run in this step, starting at the sequence's num_computed.
  int64_t new_blocks = 0;  // Blocks to append to the block table before the step.
  bool admitted = false;   // The sequence moves from waiting to running in this step.
};

struct Schedule {
  // Batch order: decode tokens first, then chunks of running prompts, then admitted prompts.
  std::vector<ScheduledChunk> chunks;
  // Running sequences to move back to the front of the waiting queue, newest first. Their
  // blocks are free before any of `chunks` allocates.
  std::vector<uint64_t> preempted;
  int64_t num_decode_tokens = 0;   // Chunks of one token from sequences past their prompt.
  int64_t num_prefill_tokens = 0;  // Every other scheduled token.
};

// Decides which tokens run in the next step.
//
// `running` is ordered oldest first, `waiting` in queue order, and `free_blocks` is the number of
// unallocated KV-cache blocks. The rules, in order:
//  1. Every running sequence with one token left to compute (a decode) gets it, oldest first. When its next
//     position needs a block and none is free, the newest running sequence not yet scheduled is
//     preempted (its blocks are freed and it is recomputed later), which may be the sequence
//     itself.
//  2. Running sequences still in their prompt get chunks of up to the remaining token budget,
//     oldest first (chunked prefill).
//  3. Waiting sequences are admitted in queue order while the running count stays within
//     max_running_sequences, tokens remain in the budget, and the blocks for the whole prompt
//     are free. Admission stops at the first sequence that does not fit, so the queue stays
//     first come, first served. Nothing is admitted in a step that preempted.
Schedule ScheduleStep(std::span<const RunningSequence> running,
                      std::span<const WaitingSequence> waiting, int64_t free_blocks,
                      const SchedulerLimits& limits);

}  // namespace w8a8
