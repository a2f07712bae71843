// Accuracy evaluation of the served model while it serves: perplexity over a text file and
// multiple-choice accuracy over a JSONL task file, on request and on a schedule.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/eval.h"
#include "core/tokenizer.h"
#include "server/metrics.h"
#include "server/served_model.h"

namespace w8a8::server {

struct EvaluationOptions {
  std::string text_path;   // Text for perplexity. Empty skips perplexity.
  std::string tasks_path;  // Multiple-choice JSONL (core/eval.h format). Empty skips accuracy.
  double interval_seconds = 0;  // Time between scheduled runs. 0 runs only on request.

  bool enabled() const { return !text_path.empty() || !tasks_path.empty(); }
  absl::Status Validate() const;
};

struct TaskAccuracy {
  std::string task;  // The task file's name without its extension.
  MultipleChoiceResult result;
};

struct EvaluationReport {
  std::string plan_label;  // "<plan name>/<model version>", as in the shadow metrics.
  int64_t model_version = 0;
  std::optional<PerplexityResult> perplexity;
  std::vector<TaskAccuracy> tasks;
  double seconds = 0;
};

// Thread-safe: Run calls are serialized, so a scheduled run and a requested one never overlap.
class Evaluator {
 public:
  // Reads the text and the task file once. Errors name the file. `metrics` may be null.
  static absl::StatusOr<std::unique_ptr<Evaluator>> Create(const EvaluationOptions& options,
                                                           const Tokenizer& tokenizer,
                                                           std::shared_ptr<ServerMetrics> metrics);

  // Evaluates `served` (model version `version`) and updates the w8a8_eval_* gauges. Blocks for
  // the whole evaluation.
  absl::StatusOr<EvaluationReport> Run(const ServedModel& served, int64_t version,
                                       const Tokenizer& tokenizer);

 private:
  Evaluator() = default;

  std::shared_ptr<ServerMetrics> metrics_;
  std::vector<int32_t> text_tokens_;
  std::string task_name_;
  std::vector<MultipleChoiceItem> task_items_;
  std::mutex run_mutex_;
};

}  // namespace w8a8::server
