#include "server/shadow.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/eval.h"
#include "kernels/threads.h"
#include "spdlog/spdlog.h"

namespace w8a8::server {
namespace {

constexpr int kShadowNiceValue = 19;

// On Linux, setpriority on a thread id changes only that thread. OpenMP worker threads that
// the thread creates afterwards inherit the value.
void LowerThreadPriority() {
  const pid_t thread_id = gettid();
  if (setpriority(PRIO_PROCESS, static_cast<id_t>(thread_id), kShadowNiceValue) != 0) {
    spdlog::warn("shadow comparison thread {}: setpriority to nice {} failed: {}, so it runs at "
                 "normal priority",
                 thread_id, kShadowNiceValue, std::strerror(errno));
  }
}

}  // namespace

absl::Status ShadowOptions::Validate() const {
  if (!(fraction >= 0 && fraction <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--shadow-fraction=", fraction, " is invalid: use a value in [0, 1]"));
  }
  if (queue_capacity < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--shadow-queue=", queue_capacity, " is invalid: use a positive value"));
  }
  return absl::OkStatus();
}

ShadowComparator::ShadowComparator(std::shared_ptr<const Model> reference, ShadowOptions options,
                                   std::shared_ptr<ServerMetrics> metrics)
    : reference_(std::move(reference)), options_(options), metrics_(std::move(metrics)) {
  thread_ = std::thread(&ShadowComparator::Run, this);
}

ShadowComparator::~ShadowComparator() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    queue_.clear();
  }
  ready_.notify_all();
  thread_.join();
}

bool ShadowComparator::Draw() {
  if (options_.fraction >= 1) return true;
  if (options_.fraction <= 0) return false;
  std::lock_guard<std::mutex> lock(mutex_);
  return std::bernoulli_distribution(options_.fraction)(random_);
}

void ShadowComparator::Enqueue(ShadowSample sample) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!stopping_ && static_cast<int64_t>(queue_.size()) < options_.queue_capacity) {
      queue_.push_back(std::move(sample));
      ready_.notify_one();
      return;
    }
  }
  if (metrics_ != nullptr) metrics_->RecordShadowResult(sample.plan_label, "dropped");
}

void ShadowComparator::Run() {
  LowerThreadPriority();
  kernels::UseComputeThreads();
  while (true) {
    ShadowSample sample;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      ready_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      sample = std::move(queue_.front());
      queue_.pop_front();
    }
    Compare(sample);
  }
}

void ShadowComparator::Compare(const ShadowSample& sample) {
  const auto length = static_cast<int64_t>(sample.tokens.size());
  // One window over the whole sequence, so every position has the full left context it had
  // during generation.
  const WindowOptions window{.context_length = std::max<int64_t>(length, 2),
                             .stride = std::max<int64_t>(length, 2)};
  absl::StatusOr<FidelityResult> result =
      CompareModels(*reference_, *sample.serving, sample.tokens, window);
  if (!result.ok()) {
    spdlog::error("shadow comparison of {} tokens on plan {} failed: {}", length,
                  sample.plan_label, result.status().ToString());
    if (metrics_ != nullptr) metrics_->RecordShadowResult(sample.plan_label, "error");
    return;
  }
  spdlog::debug("shadow comparison on plan {}: {} positions, mean KL {:.3g} nats, top-1 "
                "agreement {:.4f}",
                sample.plan_label, result->positions, result->mean_kl, result->top1_agreement);
  if (metrics_ != nullptr) {
    metrics_->RecordShadowComparison(sample.plan_label, result->kl_values,
                                     result->top1_agreements);
  }
}

}  // namespace w8a8::server
