#include "server/model_host.h"

#include <algorithm>
#include <chrono>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/linear.h"
#include "core/status_macros.h"
#include "kernels/threads.h"
#include "spdlog/spdlog.h"

namespace w8a8::server {
namespace {

std::string SchemeSummary(const ServedModel& served) {
  return absl::StrJoin(served.layers_per_scheme, ", ", [](std::string* out, const auto& entry) {
    absl::StrAppend(out, entry.second, " ", entry.first);
  });
}

}  // namespace

std::string_view UpdateStateName(UpdateState state) {
  switch (state) {
    case UpdateState::kIdle:
      return "idle";
    case UpdateState::kRunning:
      return "running";
    case UpdateState::kSucceeded:
      return "succeeded";
    case UpdateState::kFailed:
      return "failed";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<ModelHost>> ModelHost::Load(
    const ModelHostOptions& options, std::shared_ptr<ServerMetrics> metrics,
    std::function<void(const UpdateStatus&)> on_update_finished) {
  std::unique_ptr<ModelHost> host(new ModelHost());
  host->options_ = options;
  host->metrics_ = std::move(metrics);
  host->on_update_finished_ = std::move(on_update_finished);

  const absl::Time start = absl::Now();
  ASSIGN_OR_RETURN(host->checkpoint_, Checkpoint::Open(options.model_path));
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer,
                   Tokenizer::FromSource(host->checkpoint_->tokenizer_source()));
  host->tokenizer_ = std::move(tokenizer);
  spdlog::info("opened {} ({}, {} layers, hidden size {}, vocabulary {}, tokenizer {}) in {:.3f} s",
               options.model_path, host->checkpoint_->format(),
               host->checkpoint_->config().num_hidden_layers,
               host->checkpoint_->config().hidden_size, host->checkpoint_->config().vocab_size,
               host->tokenizer_->type(), absl::ToDoubleSeconds(absl::Now() - start));

  ASSIGN_OR_RETURN(ResolvedQuantization resolved,
                   ResolveQuantization(*host->checkpoint_, options.quantization));
  kernels::UseComputeThreads();
  ASSIGN_OR_RETURN(ServedModel served,
                   BuildServedModel(*host->checkpoint_, resolved, options.model));
  spdlog::info("quantized with plan {}: {}; analysis {:.3f} s, model build {:.3f} s, "
               "{} bytes of linear weights",
               served.plan_name, SchemeSummary(served), served.analysis_seconds,
               served.build_seconds, served.model->weight_bytes());

  if (options.shadow.fraction > 0) {
    RETURN_IF_ERROR(options.shadow.Validate());
    if (resolved.stored) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--shadow-fraction=", options.shadow.fraction, " needs FP32 weights for the reference "
          "model, but ", options.model_path, " stores quantized weights; set it to 0"));
    }
    const absl::Time reference_start = absl::Now();
    ASSIGN_OR_RETURN(std::unique_ptr<Model> reference,
                     Model::Create(*host->checkpoint_, Fp32LinearFactory(), options.model));
    spdlog::info("shadow comparison on for a fraction {} of requests (queue {}): FP32 reference "
                 "built in {:.3f} s, {} bytes of linear weights",
                 options.shadow.fraction, options.shadow.queue_capacity,
                 absl::ToDoubleSeconds(absl::Now() - reference_start), reference->weight_bytes());
    host->shadow_ = std::make_unique<ShadowComparator>(std::move(reference), options.shadow,
                                                       host->metrics_);
  }

  if (options.evaluation.enabled()) {
    ASSIGN_OR_RETURN(host->evaluator_,
                     Evaluator::Create(options.evaluation, *host->tokenizer_, host->metrics_));
  }

  auto shared = std::make_shared<const ServedModel>(std::move(served));
  ASSIGN_OR_RETURN(host->engine_, Engine::Create(shared->model, host->tokenizer_, options.engine,
                                                 host->metrics_, "1"));
  host->PublishModel(std::move(shared), 1);
  if (host->evaluator_ != nullptr && options.evaluation.interval_seconds > 0) {
    host->evaluation_thread_ = std::thread(&ModelHost::RunScheduledEvaluations, host.get());
  }
  return host;
}

ModelHost::~ModelHost() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  stop_evaluations_.notify_all();
  if (evaluation_thread_.joinable()) evaluation_thread_.join();
  if (update_thread_.joinable()) update_thread_.join();
  shadow_.reset();
  engine_.reset();
}

void ModelHost::OfferShadowSample(std::vector<int32_t> tokens, const std::string& model_label) {
  if (shadow_ == nullptr || tokens.size() < 2 || !shadow_->Draw()) return;
  ShadowSample sample;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    sample.plan_label = absl::StrCat(current_->plan_name, "/", version_);
    // NOTE: the host keeps only the current model, so a request that ran on a model swapped
    // out since then is counted as dropped under the current model's label.
    if (std::to_string(version_) == model_label) sample.serving = current_->model;
  }
  if (sample.serving == nullptr) {
    if (metrics_ != nullptr) metrics_->RecordShadowResult(sample.plan_label, "dropped");
    return;
  }
  sample.tokens = std::move(tokens);
  shadow_->Enqueue(std::move(sample));
}

absl::StatusOr<EvaluationReport> ModelHost::RunEvaluation() {
  if (evaluator_ == nullptr) {
    return absl::FailedPreconditionError(
        "no evaluation is configured: start the server with --eval-text or --eval-tasks");
  }
  std::shared_ptr<const ServedModel> served;
  int64_t version = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    served = current_;
    version = version_;
  }
  // The callers (a gRPC handler, the schedule) live on, so the evaluation's OpenMP workers get
  // a thread of their own that ends with it.
  return kernels::RunOnTransientThread(
      [&] { return evaluator_->Run(*served, version, *tokenizer_); });
}

void ModelHost::RunScheduledEvaluations() {
  const auto interval = std::max(std::chrono::milliseconds(1),
                                 std::chrono::duration_cast<std::chrono::milliseconds>(
                                     std::chrono::duration<double>(
                                         options_.evaluation.interval_seconds)));
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (stop_evaluations_.wait_for(lock, interval, [this] { return stopping_; })) return;
    }
    absl::StatusOr<EvaluationReport> report = RunEvaluation();
    if (!report.ok()) {
      spdlog::error("scheduled evaluation failed, next one in {} s: {}",
                    options_.evaluation.interval_seconds, report.status().ToString());
    }
  }
}

std::shared_ptr<const ServedModel> ModelHost::current() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return current_;
}

int64_t ModelHost::version() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return version_;
}

UpdateStatus ModelHost::update_status() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return update_;
}

void ModelHost::WaitForUpdate() {
  std::unique_lock<std::mutex> lock(mutex_);
  update_done_.wait(lock, [this] { return update_.state != UpdateState::kRunning; });
}

absl::StatusOr<int64_t> ModelHost::StartUpdate(const QuantizationRequest& request) {
  ASSIGN_OR_RETURN(ResolvedQuantization resolved, ResolveQuantization(*checkpoint_, request));
  std::lock_guard<std::mutex> lock(mutex_);
  if (update_.state == UpdateState::kRunning) {
    return absl::FailedPreconditionError(absl::StrCat(
        "a quantization update to version ", update_.target_version,
        " is still running; wait for it (GetQuantizationConfig shows its state) and retry"));
  }
  // The previous update thread has finished its work; join it before starting the next.
  if (update_thread_.joinable()) update_thread_.join();
  const int64_t target = std::max(version_, update_.target_version) + 1;
  update_ = UpdateStatus{UpdateState::kRunning, "", target};
  spdlog::info("quantization update to version {} with plan {} started", target,
               resolved.plan_name);
  update_thread_ = std::thread(&ModelHost::RunUpdate, this, std::move(resolved), target);
  return target;
}

void ModelHost::RunUpdate(ResolvedQuantization resolved, int64_t version) {
  kernels::UseComputeThreads();
  const absl::Time start = absl::Now();
  absl::Status status;
  absl::StatusOr<ServedModel> served = BuildServedModel(*checkpoint_, resolved, options_.model);
  if (served.ok()) {
    auto shared = std::make_shared<const ServedModel>(*std::move(served));
    status = engine_->SwapModel(shared->model, std::to_string(version));
    if (status.ok()) {
      PublishModel(shared, version);
      spdlog::info("quantization update to version {} done in {:.3f} s: plan {}: {}", version,
                   absl::ToDoubleSeconds(absl::Now() - start), shared->plan_name,
                   SchemeSummary(*shared));
    }
  } else {
    status = served.status();
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  if (!status.ok()) {
    spdlog::error("quantization update to version {} failed after {:.3f} s, version {} keeps "
                  "serving: {}",
                  version, seconds, this->version(), status.ToString());
  }
  if (metrics_ != nullptr) {
    metrics_->RecordQuantizationUpdate(status.ok() ? "succeeded" : "failed", seconds);
  }
  UpdateStatus finished;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    update_.state = status.ok() ? UpdateState::kSucceeded : UpdateState::kFailed;
    update_.error = status.ok() ? "" : status.ToString();
    finished = update_;
  }
  update_done_.notify_all();
  if (on_update_finished_) on_update_finished_(finished);
}

void ModelHost::PublishModel(std::shared_ptr<const ServedModel> served, int64_t version) {
  if (metrics_ != nullptr) {
    metrics_->SetServedModel(options_.model_path, checkpoint_->config().architecture,
                             tokenizer_->type(), version, *served);
  }
  std::lock_guard<std::mutex> lock(mutex_);
  current_ = std::move(served);
  version_ = version;
}

}  // namespace w8a8::server
