// Prometheus metrics of the server, fed by the engine observer and the RPC handlers.
//
// Every series has the prefix w8a8_ and base units (seconds, tokens, blocks). The registry is
// passed in, so tests build their own and nothing is global.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "core/engine.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "server/served_model.h"

namespace w8a8::server {

// Thread-safe: the prometheus-cpp metrics are atomic, and the label sets that change with the
// served model are guarded by a mutex. No method blocks beyond that mutex, so the engine
// thread may call the observer methods.
class ServerMetrics : public EngineObserver {
 public:
  explicit ServerMetrics(prometheus::Registry& registry);

  // EngineObserver.
  void OnStep(const StepStats& step) override;
  void OnRequestFinished(const RequestStats& request) override;
  void OnLoad(const EngineStats& stats) override;

  // A request rejected before it reached the engine (invalid argument, authentication, a full
  // queue). Its finish_reason label is "rejected".
  void RecordRejected(absl::StatusCode code);

  // Replaces the model info, layers-per-scheme and per-layer SQNR series with those of
  // `served`.
  void SetServedModel(const std::string& model_path, const std::string& architecture,
                      const std::string& tokenizer_type, int64_t version,
                      const ServedModel& served);

  // A finished UpdateQuantizationConfig; `result` is "succeeded" or "failed".
  void RecordQuantizationUpdate(const std::string& result, double seconds);

  // Records one shadow comparison: the KL divergence of every position in nats, and the
  // number of positions whose top-1 tokens agree. Also counts the request as "compared".
  void RecordShadowComparison(const std::string& plan, std::span<const double> kl_values,
                              int64_t top1_agreements);
  // Counts a shadow sample that was not compared. `result` is "dropped" or "error".
  void RecordShadowResult(const std::string& plan, const std::string& result);

  // Sets the gauges of one evaluation run: the perplexity (when a text was evaluated), the
  // accuracy of each task as (task, accuracy) pairs, and the run's Unix time in seconds.
  void RecordEvaluation(const std::string& plan, std::optional<double> perplexity,
                        const std::vector<std::pair<std::string, double>>& accuracies,
                        double timestamp_seconds);

 private:
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Histogram& time_to_first_token_;
  prometheus::Histogram& time_per_output_token_;
  prometheus::Histogram& request_latency_;
  prometheus::Histogram& queue_time_;
  prometheus::Histogram& prefill_time_;
  prometheus::Histogram& decode_time_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& generation_tokens_;
  prometheus::Gauge& running_;
  prometheus::Gauge& waiting_;
  prometheus::Histogram& batch_sequences_;
  prometheus::Histogram& batch_tokens_;
  prometheus::Counter& steps_;
  prometheus::Counter& preemptions_;
  prometheus::Gauge& kv_blocks_used_;
  prometheus::Gauge& kv_blocks_total_;
  prometheus::Gauge& kv_usage_ratio_;
  prometheus::Family<prometheus::Gauge>& model_info_;
  prometheus::Family<prometheus::Gauge>& layers_per_scheme_;
  prometheus::Family<prometheus::Gauge>& weight_sqnr_;
  prometheus::Family<prometheus::Counter>& quantization_updates_;
  prometheus::Histogram& quantization_update_time_;
  prometheus::Family<prometheus::Histogram>& shadow_kl_divergence_;
  prometheus::Family<prometheus::Counter>& shadow_positions_;
  prometheus::Family<prometheus::Counter>& shadow_top1_agreements_;
  prometheus::Family<prometheus::Counter>& shadow_requests_;
  prometheus::Family<prometheus::Gauge>& eval_perplexity_;
  prometheus::Family<prometheus::Gauge>& eval_accuracy_;
  prometheus::Gauge& eval_last_run_;

  std::mutex mutex_;
  prometheus::Gauge* model_info_series_ = nullptr;
  std::map<std::string, prometheus::Gauge*> scheme_series_;
  std::map<std::string, prometheus::Gauge*> sqnr_series_;
};

}  // namespace w8a8::server
