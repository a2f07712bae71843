#include "core/engine.h"

#include <omp.h>

#include <algorithm>
#include <deque>
#include <exception>
#include <limits>
#include <optional>
#include <thread>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "core/block_allocator.h"
#include "core/engine_sequence.h"
#include "core/scheduler.h"
#include "kernels/parallel.h"
#include "kernels/threads.h"
#include "spdlog/spdlog.h"

namespace w8a8 {

std::string_view FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kCancelled:
      return "cancelled";
    case FinishReason::kDeadline:
      return "deadline";
    case FinishReason::kError:
      return "error";
  }
  return "error";
}

absl::Status EngineOptions::Validate() const {
  if (max_running_sequences < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid max_running_sequences ", max_running_sequences, ": it must be >= 1"));
  }
  if (max_batch_tokens < max_running_sequences) {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid max_batch_tokens ", max_batch_tokens, ": it must be >= max_running_sequences (",
        max_running_sequences, ") so every running sequence can decode in each step"));
  }
  if (max_queued_requests < 1) {
    return absl::InvalidArgumentError(absl::StrCat("invalid max_queued_requests ",
                                                   max_queued_requests, ": it must be >= 1"));
  }
  if (kv_cache_bytes < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid kv_cache_bytes ", kv_cache_bytes, ": it must be >= 1"));
  }
  if (block_size < 1 || block_size > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid block_size ", block_size, ": it must be in [1, 4096]"));
  }
  if (max_context < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid max_context ", max_context, ": it must be >= 1, or 0 for the model's limit"));
  }
  if (default_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid default_timeout ", absl::FormatDuration(default_timeout),
                     ": it must be positive, or absl::InfiniteDuration() for none"));
  }
  if (max_top_logprobs < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid max_top_logprobs ", max_top_logprobs, ": it must be >= 0"));
  }
  return absl::OkStatus();
}

namespace {

// Vocabularies at least this large sample the sequences of a step in parallel.
// NOTE: an estimate, not measured: a draw over 16384 tokens takes on the order of 100 us, about
// what waking sleeping OpenMP workers (OMP_WAIT_POLICY=passive) costs.
constexpr size_t kParallelSamplingMinVocab = 16384;

// Fields of the model config that fix the KV-cache layout and the logits row size.
absl::Status CheckSameLayout(const ModelConfig& current, const ModelConfig& next) {
  struct Field {
    const char* name;
    int64_t current;
    int64_t next;
  };
  const Field fields[] = {
      {"num_hidden_layers", current.num_hidden_layers, next.num_hidden_layers},
      {"num_key_value_heads", current.num_key_value_heads, next.num_key_value_heads},
      {"head_dim", current.head_dim, next.head_dim},
      {"vocab_size", current.vocab_size, next.vocab_size},
  };
  for (const Field& field : fields) {
    if (field.current != field.next) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the new model's ", field.name, " is ", field.next, " but the serving model's is ",
          field.current, ": a swapped model must share the KV-cache layout and vocabulary"));
    }
  }
  return absl::OkStatus();
}

// Sends the sequence's ready update. An exception from the callback is logged and dropped,
// because it must not end the engine thread.
void InvokeCallback(EngineSequence& sequence) {
  try {
    sequence.callback()(sequence.TakeUpdate());
  } catch (const std::exception& error) {
    spdlog::error("callback of request {} threw an exception: {}", sequence.request().request_id,
                  error.what());
  } catch (...) {
    spdlog::error("callback of request {} threw an exception of unknown type",
                  sequence.request().request_id);
  }
}

// A sequence and the slice of it that runs in the current step.
struct StepEntry {
  EngineSequence* sequence;
  int64_t num_tokens;
};

}  // namespace

class Engine::Impl {
 public:
  Impl(std::shared_ptr<const Model> model, std::shared_ptr<const Tokenizer> tokenizer,
       EngineOptions options, std::shared_ptr<EngineObserver> observer, std::string model_label,
       int64_t num_blocks);
  ~Impl();

  absl::Status Submit(GenerationRequest request, GenerationCallback callback);
  absl::Status Cancel(std::string_view request_id);
  void Drain(absl::Duration grace);
  absl::Status SwapModel(std::shared_ptr<const Model> model, std::string model_label);
  EngineStats Stats() const;
  const EngineOptions& options() const { return options_; }

 private:
  // Engine thread.
  void Run();
  void FinishExpired(const absl::flat_hash_set<std::string>& cancels, bool abort, bool shutdown,
                     absl::Time now);
  StepStats RunStep();
  void ApplyPreemptions(const std::vector<uint64_t>& preempted);
  void RunModel(const std::shared_ptr<const Model>& model, const std::vector<StepEntry>& entries);
  void RetireFinished();
  void Deliver(const StepStats* step);
  EngineSequence* FindRunning(uint64_t id);

  bool HasInputLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !incoming_.empty() || !cancel_requests_.empty() || abort_pending_ || shutdown_;
  }
  bool IdleLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return active_ids_.empty() && num_finishing_ == 0;
  }

  // Fixed at construction.
  const EngineOptions options_;
  const std::shared_ptr<const Tokenizer> tokenizer_;
  const std::shared_ptr<EngineObserver> observer_;
  const ModelConfig layout_config_;
  std::vector<int32_t> end_ids_;

  // Engine thread only.
  KvCache cache_;
  BlockAllocator allocator_;
  std::deque<std::unique_ptr<EngineSequence>> waiting_;
  std::vector<std::unique_ptr<EngineSequence>> running_;  // Ordered by id: oldest first.
  std::vector<std::unique_ptr<EngineSequence>> finished_;  // Awaiting their last callback.
  std::vector<float> logits_;
  int64_t steps_ = 0;
  int64_t preemptions_ = 0;

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<EngineSequence>> incoming_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<std::string> cancel_requests_ ABSL_GUARDED_BY(mu_);
  // Ids of every submitted request that has not finished. A finished request's id leaves
  // before its last callback runs, so a client that has seen the last update can reuse it.
  absl::flat_hash_set<std::string> active_ids_ ABSL_GUARDED_BY(mu_);
  // Finished requests whose last callback or observer call has not returned yet.
  int64_t num_finishing_ ABSL_GUARDED_BY(mu_) = 0;
  // Requests counted against max_queued_requests: submitted and not yet running.
  int64_t num_queued_ ABSL_GUARDED_BY(mu_) = 0;
  std::shared_ptr<const Model> model_ ABSL_GUARDED_BY(mu_);
  std::string model_label_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool abort_pending_ ABSL_GUARDED_BY(mu_) = false;  // Drain's grace period ended.
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  EngineStats published_ ABSL_GUARDED_BY(mu_);

  std::thread thread_;
};

Engine::Impl::Impl(std::shared_ptr<const Model> model, std::shared_ptr<const Tokenizer> tokenizer,
                   EngineOptions options, std::shared_ptr<EngineObserver> observer,
                   std::string model_label, int64_t num_blocks)
    : options_(std::move(options)),
      tokenizer_(std::move(tokenizer)),
      observer_(std::move(observer)),
      layout_config_(model->config()),
      cache_(model->config(), num_blocks, options_.block_size),
      allocator_(num_blocks),
      model_(std::move(model)),
      model_label_(std::move(model_label)) {
  absl::flat_hash_set<int32_t> end_ids(layout_config_.eos_token_ids.begin(),
                                       layout_config_.eos_token_ids.end());
  for (const int32_t id : tokenizer_->eos_ids()) end_ids.insert(id);
  end_ids_.assign(end_ids.begin(), end_ids.end());
  std::sort(end_ids_.begin(), end_ids_.end());

  published_.kv_blocks_total = num_blocks;
  published_.block_size = options_.block_size;
  published_.model_label = model_label_;
  thread_ = std::thread([this] { Run(); });
}

Engine::Impl::~Impl() {
  {
    absl::MutexLock lock(&mu_);
    shutdown_ = true;
  }
  thread_.join();
}

absl::Status Engine::Impl::Submit(GenerationRequest request, GenerationCallback callback) {
  if (request.request_id.empty()) {
    return absl::InvalidArgumentError("request_id is empty: set a unique id per request");
  }
  const std::string& id = request.request_id;
  if (request.prompt_ids.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt_ids of request ", id, " is empty: send at least one token"));
  }
  for (size_t i = 0; i < request.prompt_ids.size(); ++i) {
    const int32_t token = request.prompt_ids[i];
    if (token < 0 || token >= layout_config_.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt_ids[", i, "] of request ", id, " is ", token,
                       ", outside the vocabulary [0, ", layout_config_.vocab_size, ")"));
    }
  }
  if (absl::Status status = request.sampling.Validate(); !status.ok()) {
    return absl::Status(status.code(),
                        absl::StrCat("sampling of request ", id, ": ", status.message()));
  }
  if (request.top_logprobs < -1 || request.top_logprobs > options_.max_top_logprobs) {
    return absl::InvalidArgumentError(absl::StrCat(
        "top_logprobs of request ", id, " is ", request.top_logprobs, ": it must be in [-1, ",
        options_.max_top_logprobs, "] (-1 for no log-probabilities)"));
  }
  const int64_t num_prompt = static_cast<int64_t>(request.prompt_ids.size());
  if (num_prompt + request.sampling.max_tokens > options_.max_context) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt_ids (", num_prompt, " tokens) plus sampling.max_tokens (",
        request.sampling.max_tokens, ") of request ", id, " exceed the context of ",
        options_.max_context, " tokens: shorten the prompt or lower max_tokens"));
  }
  if (!callback) {
    return absl::InvalidArgumentError(absl::StrCat("the callback of request ", id, " is empty"));
  }

  const absl::Time now = absl::Now();
  absl::Time deadline = request.deadline;
  if (deadline == absl::InfiniteFuture() && options_.default_timeout != absl::InfiniteDuration()) {
    deadline = now + options_.default_timeout;
  }

  absl::MutexLock lock(&mu_);
  if (shutdown_ || draining_) {
    return absl::UnavailableError(absl::StrCat(
        "the engine is ", shutdown_ ? "shutting down" : "draining",
        " and accepts no new requests; request ", id, " was not queued"));
  }
  if (active_ids_.contains(id)) {
    return absl::AlreadyExistsError(absl::StrCat(
        "a request with id ", id, " is already in flight: use a unique request_id"));
  }
  if (num_queued_ >= options_.max_queued_requests) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the request queue is full (", num_queued_, " of max_queued_requests ",
        options_.max_queued_requests, " waiting); request ", id, " was rejected, retry later"));
  }
  auto sequence = std::make_unique<EngineSequence>(next_id_++, std::move(request),
                                                   std::move(callback), model_, model_label_,
                                                   *tokenizer_, end_ids_, now, deadline);
  active_ids_.insert(sequence->request().request_id);
  incoming_.push_back(std::move(sequence));
  num_queued_ += 1;
  return absl::OkStatus();
}

absl::Status Engine::Impl::Cancel(std::string_view request_id) {
  const std::string id(request_id);
  absl::MutexLock lock(&mu_);
  if (!active_ids_.contains(id)) {
    return absl::NotFoundError(absl::StrCat("no request with id ", id, " is in flight"));
  }
  cancel_requests_.insert(id);
  return absl::OkStatus();
}

void Engine::Impl::Drain(absl::Duration grace) {
  absl::MutexLock lock(&mu_);
  draining_ = true;
  spdlog::info("engine draining: {} requests in flight, grace period {}", active_ids_.size(),
               absl::FormatDuration(grace));
  if (mu_.AwaitWithTimeout(absl::Condition(this, &Impl::IdleLocked), grace)) return;
  spdlog::warn("engine drain grace period {} ended with {} requests in flight; ending them",
               absl::FormatDuration(grace), active_ids_.size());
  abort_pending_ = true;
  mu_.Await(absl::Condition(this, &Impl::IdleLocked));
}

absl::Status Engine::Impl::SwapModel(std::shared_ptr<const Model> model, std::string model_label) {
  if (model == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("the model to swap in as ", model_label, " is null"));
  }
  if (absl::Status status = CheckSameLayout(layout_config_, model->config()); !status.ok()) {
    return status;
  }
  absl::MutexLock lock(&mu_);
  spdlog::info("engine model swapped from {} to {}; requests in flight finish on {}",
               model_label_, model_label, model_label_);
  model_ = std::move(model);
  model_label_ = std::move(model_label);
  published_.model_label = model_label_;
  return absl::OkStatus();
}

EngineStats Engine::Impl::Stats() const {
  absl::MutexLock lock(&mu_);
  EngineStats stats = published_;
  stats.waiting = num_queued_;
  stats.draining = draining_;
  return stats;
}

void Engine::Impl::Run() {
  kernels::UseComputeThreads();
  {
    absl::MutexLock lock(&mu_);
    published_.compute_threads = omp_get_max_threads();
  }
  while (true) {
    std::vector<std::unique_ptr<EngineSequence>> arrived;
    absl::flat_hash_set<std::string> cancels;
    bool abort = false;
    bool shutdown = false;
    {
      absl::MutexLock lock(&mu_);
      // Only the engine thread reads running_ and waiting_, so the check is outside the
      // condition, which other threads may evaluate.
      if (running_.empty() && waiting_.empty()) {
        mu_.Await(absl::Condition(this, &Impl::HasInputLocked));
      }
      arrived.swap(incoming_);
      cancels.swap(cancel_requests_);
      abort = std::exchange(abort_pending_, false);
      shutdown = shutdown_;
    }
    for (auto& sequence : arrived) waiting_.push_back(std::move(sequence));

    FinishExpired(cancels, abort, shutdown, absl::Now());
    std::optional<StepStats> step;
    if (!running_.empty() || !waiting_.empty()) {
      try {
        step = RunStep();
      } catch (const std::exception& error) {
        // std::bad_alloc from a large batch, for instance. The running requests fail and
        // their blocks return to the pool; the waiting ones stay queued.
        spdlog::error("engine step failed with {} running requests: {}", running_.size(),
                      error.what());
        for (auto& sequence : running_) {
          sequence->Finish(FinishReason::kError,
                           absl::InternalError(absl::StrCat("engine step failed: ", error.what())),
                           absl::Now());
        }
        RetireFinished();
      }
    }
    Deliver(step ? &*step : nullptr);

    if (shutdown && running_.empty() && waiting_.empty()) {
      absl::MutexLock lock(&mu_);
      if (incoming_.empty()) return;
    }
  }
}

void Engine::Impl::FinishExpired(const absl::flat_hash_set<std::string>& cancels, bool abort,
                                 bool shutdown, absl::Time now) {
  auto expire = [&](EngineSequence& sequence) {
    const std::string& id = sequence.request().request_id;
    if (shutdown) {
      sequence.Finish(FinishReason::kError,
                      absl::UnavailableError(absl::StrCat(
                          "the engine shut down before request ", id, " finished")),
                      now);
    } else if (abort) {
      sequence.Finish(FinishReason::kError,
                      absl::UnavailableError(absl::StrCat(
                          "the engine is draining and its grace period ended before request ",
                          id, " finished")),
                      now);
    } else if (now >= sequence.deadline()) {
      // Before cancellations: gRPC cancels a call when its deadline passes, and that cancel
      // often reaches the engine before the next check here.
      sequence.Finish(FinishReason::kDeadline,
                      absl::DeadlineExceededError(absl::StrCat(
                          "request ", id, " passed its deadline after generating ",
                          sequence.num_generated(), " tokens")),
                      now);
    } else if (cancels.contains(id)) {
      sequence.Finish(FinishReason::kCancelled,
                      absl::CancelledError(absl::StrCat("request ", id, " was cancelled")), now);
    }
  };
  for (auto& sequence : waiting_) expire(*sequence);
  for (auto& sequence : running_) expire(*sequence);
  RetireFinished();
}

void Engine::Impl::RetireFinished() {
  auto retire = [&](std::unique_ptr<EngineSequence>& sequence) {
    if (!sequence->finished()) return false;
    if (absl::Status status = allocator_.Free(sequence->block_table); !status.ok()) {
      spdlog::error("engine failed to free the KV-cache blocks of request {}: {}",
                    sequence->request().request_id, status.ToString());
    }
    sequence->block_table.clear();
    finished_.push_back(std::move(sequence));
    return true;
  };
  // std::erase_if visits elements in order, so finished_ keeps the order of finishing.
  std::erase_if(waiting_, retire);
  std::erase_if(running_, retire);
}

EngineSequence* Engine::Impl::FindRunning(uint64_t id) {
  for (auto& sequence : running_) {
    if (sequence->id() == id) return sequence.get();
  }
  return nullptr;
}

void Engine::Impl::ApplyPreemptions(const std::vector<uint64_t>& preempted) {
  if (preempted.empty()) return;
  std::vector<std::unique_ptr<EngineSequence>> moved;
  for (const uint64_t id : preempted) {
    auto it = std::find_if(running_.begin(), running_.end(),
                           [id](const auto& sequence) { return sequence->id() == id; });
    if (it == running_.end()) continue;
    EngineSequence& sequence = **it;
    if (absl::Status status = allocator_.Free(sequence.block_table); !status.ok()) {
      spdlog::error("engine failed to free the KV-cache blocks of request {}: {}",
                    sequence.request().request_id, status.ToString());
    }
    sequence.block_table.clear();
    sequence.num_computed = 0;
    spdlog::debug("engine preempted request {} after {} generated tokens; it is recomputed",
                  sequence.request().request_id, sequence.num_generated());
    moved.push_back(std::move(*it));
    running_.erase(it);
  }
  // The waiting queue gets them back at its front, oldest first.
  std::sort(moved.begin(), moved.end(),
            [](const auto& a, const auto& b) { return a->id() > b->id(); });
  for (auto& sequence : moved) waiting_.push_front(std::move(sequence));
  preemptions_ += static_cast<int64_t>(preempted.size());
}

StepStats Engine::Impl::RunStep() {
  const absl::Time start = absl::Now();

  std::vector<RunningSequence> running;
  running.reserve(running_.size());
  for (const auto& sequence : running_) {
    running.push_back({.id = sequence->id(),
                       .num_tokens = static_cast<int64_t>(sequence->tokens().size()),
                       .num_computed = sequence->num_computed,
                       .num_blocks = static_cast<int64_t>(sequence->block_table.size())});
  }
  std::vector<WaitingSequence> waiting;
  waiting.reserve(waiting_.size());
  for (const auto& sequence : waiting_) {
    waiting.push_back(
        {.id = sequence->id(), .num_tokens = static_cast<int64_t>(sequence->tokens().size())});
  }
  const SchedulerLimits limits = {.max_running_sequences = options_.max_running_sequences,
                                  .max_batch_tokens = options_.max_batch_tokens,
                                  .block_size = options_.block_size};
  const Schedule schedule = ScheduleStep(running, waiting, allocator_.num_free(), limits);

  ApplyPreemptions(schedule.preempted);

  // Admit, allocate blocks, and group the chunks by model, keeping batch order within a model.
  std::vector<std::pair<std::shared_ptr<const Model>, std::vector<StepEntry>>> groups;
  for (const ScheduledChunk& chunk : schedule.chunks) {
    EngineSequence* sequence = nullptr;
    if (chunk.admitted) {
      // Admissions follow queue order, so the chunk's sequence is at the front.
      std::unique_ptr<EngineSequence> admitted = std::move(waiting_.front());
      waiting_.pop_front();
      admitted->MarkAdmitted(start);
      sequence = admitted.get();
      auto position = std::upper_bound(
          running_.begin(), running_.end(), admitted->id(),
          [](uint64_t id, const auto& other) { return id < other->id(); });
      running_.insert(position, std::move(admitted));
    } else {
      sequence = FindRunning(chunk.id);
    }
    if (sequence == nullptr || sequence->id() != chunk.id) {
      spdlog::error("engine schedule names sequence {} that is not where expected; skipped",
                    chunk.id);
      continue;
    }
    if (absl::Status status = allocator_.Allocate(chunk.new_blocks, sequence->block_table);
        !status.ok()) {
      spdlog::error("engine failed to allocate KV-cache blocks for request {}: {}",
                    sequence->request().request_id, status.ToString());
      sequence->Finish(FinishReason::kError, absl::InternalError(status.message()), start);
      continue;
    }
    auto group = std::find_if(groups.begin(), groups.end(),
                              [&](const auto& entry) { return entry.first == sequence->model(); });
    if (group == groups.end()) {
      groups.push_back({sequence->model(), {}});
      group = groups.end() - 1;
    }
    group->second.push_back({sequence, chunk.num_tokens});
  }

  for (const auto& [model, entries] : groups) RunModel(model, entries);
  RetireFinished();

  steps_ += 1;
  StepStats stats;
  for (const auto& group : groups) stats.num_sequences += static_cast<int64_t>(group.second.size());
  stats.num_decode_tokens = schedule.num_decode_tokens;
  stats.num_prefill_tokens = schedule.num_prefill_tokens;
  stats.num_tokens = stats.num_decode_tokens + stats.num_prefill_tokens;
  stats.num_preempted = static_cast<int64_t>(schedule.preempted.size());
  stats.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return stats;
}

void Engine::Impl::RunModel(const std::shared_ptr<const Model>& model,
                            const std::vector<StepEntry>& entries) {
  std::vector<SequenceStep> steps;
  steps.reserve(entries.size());
  for (const StepEntry& entry : entries) {
    EngineSequence& sequence = *entry.sequence;
    const int64_t start = sequence.num_computed;
    const bool reaches_end =
        start + entry.num_tokens == static_cast<int64_t>(sequence.tokens().size());
    SequenceStep step;
    step.tokens = std::span<const int32_t>(sequence.tokens())
                      .subspan(static_cast<size_t>(start), static_cast<size_t>(entry.num_tokens));
    step.start_position = start;
    step.block_table = sequence.block_table;
    if (sequence.NeedsAllLogits()) {
      // NOTE: a chunk with every row of logits takes chunk tokens * vocab_size floats, e.g.
      // about 263 MB for 512 tokens of the 128256-token LLaMA 3 vocabulary. Only echo with
      // log-probabilities requests it.
      step.logits = SequenceStep::Logits::kAll;
    } else {
      step.logits = reaches_end ? SequenceStep::Logits::kLast : SequenceStep::Logits::kNone;
    }
    steps.push_back(step);
  }

  logits_.clear();
  if (absl::Status status = model->Forward(steps, cache_, logits_); !status.ok()) {
    std::vector<std::string> ids;
    for (const StepEntry& entry : entries) ids.push_back(entry.sequence->request().request_id);
    spdlog::error("engine forward pass failed for requests {}: {}", absl::StrJoin(ids, ", "),
                  status.ToString());
    for (const StepEntry& entry : entries) {
      entry.sequence->Finish(FinishReason::kError, status, absl::Now());
    }
    return;
  }

  const size_t vocab = static_cast<size_t>(model->config().vocab_size);
  size_t row = 0;
  const absl::Time now = absl::Now();
  // The sequences that sample a token in this step, with their logits.
  std::vector<std::pair<EngineSequence*, std::span<float>>> samples;
  for (size_t i = 0; i < entries.size(); ++i) {
    EngineSequence& sequence = *entries[i].sequence;
    const SequenceStep& step = steps[i];
    size_t num_rows = 0;
    if (step.logits == SequenceStep::Logits::kLast) num_rows = 1;
    if (step.logits == SequenceStep::Logits::kAll) num_rows = step.tokens.size();
    if ((row + num_rows) * vocab > logits_.size()) {
      sequence.Finish(FinishReason::kError,
                      absl::InternalError(absl::StrCat(
                          "the forward pass returned ", logits_.size() / vocab,
                          " logits rows but the batch requested at least ", row + num_rows)),
                      now);
      row += num_rows;
      continue;
    }
    std::span<float> rows(logits_.data() + row * vocab, num_rows * vocab);
    row += num_rows;

    if (step.logits == SequenceStep::Logits::kAll) {
      sequence.ScorePromptTokens(rows, step.start_position);
    }
    sequence.num_computed += static_cast<int64_t>(step.tokens.size());
    if (step.logits != SequenceStep::Logits::kNone &&
        sequence.num_computed == static_cast<int64_t>(sequence.tokens().size())) {
      samples.emplace_back(&sequence, rows.subspan(rows.size() - vocab));
    }
  }
  // Sampling from a 128K vocabulary costs about half a millisecond per sequence (a softmax in
  // double), so the sequences of a batch sample in parallel. Each touches only its own state
  // and random generator, so the tokens do not depend on the order.
  const int64_t count = static_cast<int64_t>(samples.size());
  const bool parallel = count > 1 && vocab >= kParallelSamplingMinVocab;
  kernels::ParallelForDynamic(
      count, parallel, [&](int64_t i) { samples[i].first->SampleNext(samples[i].second, now); });
}

void Engine::Impl::Deliver(const StepStats* step) {
  // Publish the load first, so a caller woken by a last update already sees the freed blocks.
  EngineStats stats;
  {
    absl::MutexLock lock(&mu_);
    num_queued_ = static_cast<int64_t>(waiting_.size() + incoming_.size());
    published_.running = static_cast<int64_t>(running_.size());
    published_.kv_blocks_used = allocator_.num_used();
    published_.steps = steps_;
    published_.preemptions = preemptions_;
    stats = published_;
    stats.waiting = num_queued_;
    stats.draining = draining_;
  }

  // Updates of running sequences, then the last updates of finished ones. Callbacks run
  // without mu_ held.
  for (auto& sequence : running_) {
    if (sequence->HasUpdate()) InvokeCallback(*sequence);
  }
  std::vector<std::unique_ptr<EngineSequence>> finished = std::move(finished_);
  finished_.clear();
  const int64_t num_finished = static_cast<int64_t>(finished.size());
  if (num_finished > 0) {
    absl::MutexLock lock(&mu_);
    for (const auto& sequence : finished) active_ids_.erase(sequence->request().request_id);
    num_finishing_ += num_finished;
  }
  for (auto& sequence : finished) {
    InvokeCallback(*sequence);
    if (observer_ != nullptr) observer_->OnRequestFinished(sequence->Stats());
  }
  if (observer_ != nullptr) {
    if (step != nullptr) observer_->OnStep(*step);
    observer_->OnLoad(stats);
  }

  // Drain waits for this count too, so it ends after every callback and observer call.
  if (num_finished > 0) {
    absl::MutexLock lock(&mu_);
    num_finishing_ -= num_finished;
  }
}

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Engine::~Engine() = default;

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(std::shared_ptr<const Model> model,
                                                       std::shared_ptr<const Tokenizer> tokenizer,
                                                       EngineOptions options,
                                                       std::shared_ptr<EngineObserver> observer,
                                                       std::string model_label) {
  if (model == nullptr) return absl::InvalidArgumentError("Engine::Create: the model is null");
  if (tokenizer == nullptr) {
    return absl::InvalidArgumentError("Engine::Create: the tokenizer is null");
  }
  if (absl::Status status = options.Validate(); !status.ok()) {
    return absl::Status(status.code(), absl::StrCat("engine options: ", status.message()));
  }

  const ModelConfig& config = model->config();
  const int64_t model_context =
      options.max_context > 0 ? options.max_context : config.max_position_embeddings;
  const size_t bytes_per_block = KvCache::BytesPerBlock(config, options.block_size);
  const int64_t affordable = options.kv_cache_bytes / static_cast<int64_t>(bytes_per_block);
  if (affordable < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kv_cache_bytes ", options.kv_cache_bytes, " is below one KV-cache block of ",
        bytes_per_block, " bytes (block_size ", options.block_size, "): raise kv_cache_bytes"));
  }
  // More blocks than max_running_sequences full-context sequences can use would only waste
  // memory, and ids must fit the int32 block tables.
  const int64_t usable = options.max_running_sequences *
                         BlockAllocator::BlocksForTokens(model_context, options.block_size);
  const int64_t num_blocks = std::min<int64_t>(
      {affordable, usable, static_cast<int64_t>(std::numeric_limits<int32_t>::max())});
  options.max_context = std::min(model_context, num_blocks * options.block_size);

  spdlog::info(
      "engine starting: model {}, {} KV-cache blocks of {} positions ({} bytes each), context {} "
      "tokens, max_running_sequences {}, max_batch_tokens {}, max_queued_requests {}",
      model_label, num_blocks, options.block_size, bytes_per_block, options.max_context,
      options.max_running_sequences, options.max_batch_tokens, options.max_queued_requests);
  auto impl = std::make_unique<Impl>(std::move(model), std::move(tokenizer), std::move(options),
                                     std::move(observer), std::move(model_label), num_blocks);
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

absl::Status Engine::Submit(GenerationRequest request, GenerationCallback callback) {
  return impl_->Submit(std::move(request), std::move(callback));
}

absl::Status Engine::Cancel(std::string_view request_id) { return impl_->Cancel(request_id); }

void Engine::Drain(absl::Duration grace) { impl_->Drain(grace); }

absl::Status Engine::SwapModel(std::shared_ptr<const Model> model, std::string model_label) {
  return impl_->SwapModel(std::move(model), std::move(model_label));
}

EngineStats Engine::Stats() const { return impl_->Stats(); }

const EngineOptions& Engine::options() const { return impl_->options(); }

}  // namespace w8a8
