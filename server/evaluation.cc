#include "server/evaluation.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/status_macros.h"
#include "spdlog/spdlog.h"

namespace w8a8::server {
namespace {

// The window of `w8a8 eval`'s defaults, shortened to the model's context when it is smaller.
constexpr int64_t kContextLength = 512;

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    return absl::NotFoundError(absl::StrCat("--eval-text file ", path,
                                            " could not be opened: check the path"));
  }
  std::ostringstream contents;
  contents << file.rdbuf();
  return contents.str();
}

}  // namespace

absl::Status EvaluationOptions::Validate() const {
  if (!(interval_seconds >= 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--eval-interval-seconds=", interval_seconds, " is invalid: use 0 or more"));
  }
  if (interval_seconds > 0 && !enabled()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--eval-interval-seconds=", interval_seconds,
                     " needs something to evaluate: set --eval-text or --eval-tasks"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Evaluator>> Evaluator::Create(
    const EvaluationOptions& options, const Tokenizer& tokenizer,
    std::shared_ptr<ServerMetrics> metrics) {
  RETURN_IF_ERROR(options.Validate());
  std::unique_ptr<Evaluator> evaluator(new Evaluator());
  evaluator->metrics_ = std::move(metrics);
  if (!options.text_path.empty()) {
    ASSIGN_OR_RETURN(std::string text, ReadWholeFile(options.text_path));
    evaluator->text_tokens_ = tokenizer.Encode(text, /*add_bos=*/true, /*parse_special=*/false);
    if (evaluator->text_tokens_.size() < 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--eval-text file ", options.text_path, " has ", evaluator->text_tokens_.size(),
          " tokens; at least 2 are needed for perplexity"));
    }
  }
  if (!options.tasks_path.empty()) {
    ASSIGN_OR_RETURN(evaluator->task_items_,
                     ReadMultipleChoiceJsonl(options.tasks_path, TaskFieldMapping{}));
    evaluator->task_name_ = std::filesystem::path(options.tasks_path).stem().string();
  }
  return evaluator;
}

absl::StatusOr<EvaluationReport> Evaluator::Run(const ServedModel& served, int64_t version,
                                                const Tokenizer& tokenizer) {
  std::lock_guard<std::mutex> lock(run_mutex_);
  const absl::Time start = absl::Now();
  EvaluationReport report;
  report.plan_label = absl::StrCat(served.plan_name, "/", version);
  report.model_version = version;

  if (!text_tokens_.empty()) {
    const int64_t context_length =
        std::min(kContextLength, served.model->config().max_position_embeddings);
    const WindowOptions window{.context_length = context_length,
                               .stride = std::max<int64_t>(context_length / 2, 1)};
    ASSIGN_OR_RETURN(report.perplexity, ComputePerplexity(*served.model, text_tokens_, window));
  }
  if (!task_items_.empty()) {
    ASSIGN_OR_RETURN(MultipleChoiceResult result,
                     EvaluateMultipleChoice(*served.model, tokenizer, task_items_));
    report.tasks.push_back(TaskAccuracy{task_name_, result});
  }
  report.seconds = absl::ToDoubleSeconds(absl::Now() - start);

  if (metrics_ != nullptr) {
    std::vector<std::pair<std::string, double>> accuracies;
    for (const TaskAccuracy& task : report.tasks) {
      accuracies.emplace_back(task.task, task.result.accuracy);
    }
    metrics_->RecordEvaluation(
        report.plan_label,
        report.perplexity.has_value() ? std::optional(report.perplexity->perplexity())
                                      : std::nullopt,
        accuracies, absl::ToUnixSeconds(absl::Now()));
  }
  spdlog::info("evaluation of plan {} done in {:.3f} s: perplexity {}, {} task(s)",
               report.plan_label, report.seconds,
               report.perplexity.has_value() ? absl::StrCat(report.perplexity->perplexity())
                                             : "not configured",
               report.tasks.size());
  return report;
}

}  // namespace w8a8::server
