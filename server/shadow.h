// Shadow comparison: finished requests replayed through a full-precision reference model off
// the request path, to measure how far the served model's next-token distributions drift.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "core/model.h"
#include "server/metrics.h"

namespace w8a8::server {

struct ShadowOptions {
  // Share of finished requests (status OK) that are replayed, in [0, 1]. 0 turns shadowing off.
  double fraction = 0;
  // Maximum samples waiting for replay. A sample that arrives when the queue is full is dropped.
  int64_t queue_capacity = 64;

  absl::Status Validate() const;
};

struct ShadowSample {
  std::vector<int32_t> tokens;          // The prompt ids, then the generated ids.
  std::shared_ptr<const Model> serving;  // The model that generated the tokens.
  std::string plan_label;               // "<plan name>/<model version>", e.g. "auto/1".
};

// Replays samples on one background thread whose nice value is raised to 19, so the engine
// thread keeps priority. For each sample, CompareModels (core/eval.h) runs the tokens through
// the reference and the serving model in one window and the per-position KL divergence and
// top-1 agreement go to the metrics. Thread-safe.
// NOTE: a comparison stores the logits of every position of both models, 8 * tokens *
// vocab_size bytes, which is about 1 GiB for 2048 tokens of a 128K vocabulary.
class ShadowComparator {
 public:
  // `reference` is the FP32 model of the same checkpoint. `metrics` may be null.
  ShadowComparator(std::shared_ptr<const Model> reference, ShadowOptions options,
                   std::shared_ptr<ServerMetrics> metrics);
  // Discards the samples still queued and waits for the running comparison to finish.
  ~ShadowComparator();

  ShadowComparator(const ShadowComparator&) = delete;
  ShadowComparator& operator=(const ShadowComparator&) = delete;

  // Draws whether a finished request is replayed, with probability `fraction`.
  bool Draw();

  // Queues `sample`, or counts it as dropped when the queue is full.
  void Enqueue(ShadowSample sample);

 private:
  void Run();
  void Compare(const ShadowSample& sample);

  std::shared_ptr<const Model> reference_;
  ShadowOptions options_;
  std::shared_ptr<ServerMetrics> metrics_;

  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<ShadowSample> queue_;
  bool stopping_ = false;
  std::mt19937_64 random_{std::random_device{}()};
  std::thread thread_;
};

}  // namespace w8a8::server
