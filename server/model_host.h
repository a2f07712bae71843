// The loaded checkpoint, tokenizer and serving engine, and the background re-quantization that
// swaps the served model.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "core/checkpoint.h"
#include "core/engine.h"
#include "core/model.h"
#include "core/tokenizer.h"
#include "server/evaluation.h"
#include "server/metrics.h"
#include "server/served_model.h"
#include "server/shadow.h"

namespace w8a8::server {

struct ModelHostOptions {
  std::string model_path;
  QuantizationRequest quantization;
  EngineOptions engine;
  ModelOptions model;
  ShadowOptions shadow;
  EvaluationOptions evaluation;
};

enum class UpdateState { kIdle, kRunning, kSucceeded, kFailed };

struct UpdateStatus {
  UpdateState state = UpdateState::kIdle;
  std::string error;           // Error message of the last failed update.
  int64_t target_version = 0;  // The version the running or last update builds.
};

// Thread safety: every method may be called from any thread. Load and the destructor block
// (model build, waiting for a running update); the rest return at once except WaitForUpdate.
class ModelHost {
 public:
  // Opens the checkpoint, builds the tokenizer and the model with `options.quantization`,
  // and starts the engine with `metrics` as its observer. Blocks for the whole load.
  // `on_update_finished` runs on the update thread after every background update.
  static absl::StatusOr<std::unique_ptr<ModelHost>> Load(
      const ModelHostOptions& options, std::shared_ptr<ServerMetrics> metrics,
      std::function<void(const UpdateStatus&)> on_update_finished = nullptr);

  // Waits for a running update to finish, then stops the engine (requests still in flight end
  // with UNAVAILABLE).
  ~ModelHost();

  ModelHost(const ModelHost&) = delete;
  ModelHost& operator=(const ModelHost&) = delete;

  Engine& engine() const { return *engine_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const Checkpoint& checkpoint() const { return *checkpoint_; }
  const std::string& model_path() const { return options_.model_path; }

  // The model new requests start on, and its version (1 at start-up, +1 per swap).
  std::shared_ptr<const ServedModel> current() const;
  int64_t version() const;

  // Validates `request` synchronously (INVALID_ARGUMENT naming the field or layer), then
  // re-quantizes on a background thread and swaps the model into the engine. Returns the
  // version the new model will have. FAILED_PRECONDITION while another update runs.
  absl::StatusOr<int64_t> StartUpdate(const QuantizationRequest& request);

  // Offers a finished request (status OK) to the shadow comparison, which replays it when
  // shadowing is on and the draw selects it. `model_label` is the engine's label of the model
  // the request ran on. Returns at once.
  void OfferShadowSample(std::vector<int32_t> tokens, const std::string& model_label);

  // Evaluates the current model with the configured text and task files and updates the
  // w8a8_eval_* gauges. Blocks for the whole evaluation. FAILED_PRECONDITION when no
  // evaluation is configured.
  absl::StatusOr<EvaluationReport> RunEvaluation();

  // Blocks until no update is running.
  void WaitForUpdate();
  UpdateStatus update_status() const;

 private:
  ModelHost() = default;
  void RunUpdate(ResolvedQuantization resolved, int64_t version);
  void PublishModel(std::shared_ptr<const ServedModel> served, int64_t version);
  void RunScheduledEvaluations();

  ModelHostOptions options_;
  std::unique_ptr<Checkpoint> checkpoint_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  std::shared_ptr<ServerMetrics> metrics_;
  std::function<void(const UpdateStatus&)> on_update_finished_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<ShadowComparator> shadow_;  // Null when shadowing is off.
  std::unique_ptr<Evaluator> evaluator_;      // Null when no evaluation is configured.

  mutable std::mutex mutex_;
  std::condition_variable update_done_;
  std::shared_ptr<const ServedModel> current_;
  int64_t version_ = 0;
  UpdateStatus update_;
  std::thread update_thread_;
  // Scheduled evaluations, every evaluation.interval_seconds until the destructor runs. The
  // destructor waits for a running evaluation to finish.
  std::thread evaluation_thread_;
  std::condition_variable stop_evaluations_;
  bool stopping_ = false;
};

std::string_view UpdateStateName(UpdateState state);

}  // namespace w8a8::server
