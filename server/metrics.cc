#include "server/metrics.h"

#include <cmath>
#include <string>

#include "absl/status/status.h"

namespace w8a8::server {
namespace {

using prometheus::Histogram;

// Latencies from 1 ms to 2 minutes.
Histogram::BucketBoundaries LatencyBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
}

// Per-token latencies from 0.1 ms to 5 s.
Histogram::BucketBoundaries TokenLatencyBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5};
}

Histogram::BucketBoundaries PowersOfTwo(int count) {
  Histogram::BucketBoundaries buckets;
  for (int i = 0; i < count; ++i) buckets.push_back(std::ldexp(1.0, i));
  return buckets;
}

// KL divergences from 1e-5 to 10 nats, four buckets per decade.
Histogram::BucketBoundaries KlDivergenceBuckets() {
  Histogram::BucketBoundaries buckets;
  for (int i = 0; i <= 24; ++i) buckets.push_back(std::pow(10.0, -5.0 + i / 4.0));
  return buckets;
}

Histogram& AddHistogram(prometheus::Registry& registry, const std::string& name,
                        const std::string& help, Histogram::BucketBoundaries buckets) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(registry).Add({}, buckets);
}

prometheus::Counter& AddCounter(prometheus::Registry& registry, const std::string& name,
                                const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry).Add({});
}

prometheus::Gauge& AddGauge(prometheus::Registry& registry, const std::string& name,
                            const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry).Add({});
}

}  // namespace

ServerMetrics::ServerMetrics(prometheus::Registry& registry)
    : requests_(prometheus::BuildCounter()
                    .Name("w8a8_requests_total")
                    .Help("Finished generation requests by gRPC status code and finish reason "
                          "(stop, length, cancelled, deadline, error, rejected).")
                    .Register(registry)),
      time_to_first_token_(AddHistogram(registry, "w8a8_time_to_first_token_seconds",
                                        "Time from arrival to the first generated token.",
                                        LatencyBuckets())),
      time_per_output_token_(AddHistogram(registry, "w8a8_time_per_output_token_seconds",
                                          "Decode time per generated token after the first.",
                                          TokenLatencyBuckets())),
      request_latency_(AddHistogram(registry, "w8a8_request_latency_seconds",
                                    "End-to-end time of a generation request in the engine.",
                                    LatencyBuckets())),
      queue_time_(AddHistogram(registry, "w8a8_request_queue_seconds",
                               "Time a request waited before its prefill started.",
                               LatencyBuckets())),
      prefill_time_(AddHistogram(registry, "w8a8_request_prefill_seconds",
                                 "Time from admission to the first generated token.",
                                 LatencyBuckets())),
      decode_time_(AddHistogram(registry, "w8a8_request_decode_seconds",
                                "Time from the first generated token to the last.",
                                LatencyBuckets())),
      prompt_tokens_(AddCounter(registry, "w8a8_prompt_tokens_total",
                                "Prompt tokens of finished requests.")),
      generation_tokens_(AddCounter(registry, "w8a8_generation_tokens_total",
                                    "Generated tokens of finished requests.")),
      running_(AddGauge(registry, "w8a8_requests_running",
                        "Requests holding KV-cache blocks.")),
      waiting_(AddGauge(registry, "w8a8_requests_waiting",
                        "Requests queued for admission, including preempted ones.")),
      batch_sequences_(AddHistogram(registry, "w8a8_batch_sequences",
                                    "Sequences per engine step.", PowersOfTwo(10))),
      batch_tokens_(AddHistogram(registry, "w8a8_batch_tokens", "Tokens per engine step.",
                                 PowersOfTwo(14))),
      steps_(AddCounter(registry, "w8a8_engine_steps_total", "Engine steps run.")),
      preemptions_(AddCounter(registry, "w8a8_preemptions_total",
                              "Sequences preempted to free KV-cache blocks.")),
      kv_blocks_used_(AddGauge(registry, "w8a8_kv_cache_blocks_used",
                               "KV-cache blocks held by sequences.")),
      kv_blocks_total_(AddGauge(registry, "w8a8_kv_cache_blocks",
                                "KV-cache blocks in the pool.")),
      kv_usage_ratio_(AddGauge(registry, "w8a8_kv_cache_usage_ratio",
                               "Used KV-cache blocks over the pool size, from 0 to 1.")),
      model_info_(prometheus::BuildGauge()
                      .Name("w8a8_model_info")
                      .Help("The served model; the value is always 1.")
                      .Register(registry)),
      layers_per_scheme_(prometheus::BuildGauge()
                             .Name("w8a8_quantization_layers")
                             .Help("Linear layers of the served model per weight scheme.")
                             .Register(registry)),
      weight_sqnr_(prometheus::BuildGauge()
                       .Name("w8a8_weight_sqnr_decibels")
                       .Help("Signal-to-quantization-noise ratio of each quantized linear "
                             "layer's weights under its scheme.")
                       .Register(registry)),
      quantization_updates_(prometheus::BuildCounter()
                                .Name("w8a8_quantization_updates_total")
                                .Help("UpdateQuantizationConfig runs by result (succeeded, "
                                      "failed).")
                                .Register(registry)),
      quantization_update_time_(AddHistogram(registry, "w8a8_quantization_update_seconds",
                                             "Time to re-quantize and swap the model.",
                                             LatencyBuckets())),
      shadow_kl_divergence_(prometheus::BuildHistogram()
                                .Name("w8a8_shadow_kl_divergence")
                                .Help("KL divergence in nats of the served model's next-token "
                                      "distribution from the FP32 reference's, per replayed "
                                      "position.")
                                .Register(registry)),
      shadow_positions_(prometheus::BuildCounter()
                            .Name("w8a8_shadow_positions_total")
                            .Help("Positions compared against the FP32 reference.")
                            .Register(registry)),
      shadow_top1_agreements_(prometheus::BuildCounter()
                                  .Name("w8a8_shadow_top1_agreements_total")
                                  .Help("Compared positions where the served model and the FP32 "
                                        "reference have the same most likely token.")
                                  .Register(registry)),
      shadow_requests_(prometheus::BuildCounter()
                           .Name("w8a8_shadow_requests_total")
                           .Help("Sampled requests by shadow result (compared, dropped, "
                                 "error).")
                           .Register(registry)),
      eval_perplexity_(prometheus::BuildGauge()
                           .Name("w8a8_eval_perplexity")
                           .Help("Perplexity of the served model over the --eval-text file at "
                                 "the last evaluation.")
                           .Register(registry)),
      eval_accuracy_(prometheus::BuildGauge()
                         .Name("w8a8_eval_accuracy")
                         .Help("Multiple-choice accuracy of the served model, from 0 to 1, at "
                               "the last evaluation.")
                         .Register(registry)),
      eval_last_run_(AddGauge(registry, "w8a8_eval_last_run_timestamp_seconds",
                              "Unix time of the last finished evaluation.")) {}

void ServerMetrics::OnStep(const StepStats& step) {
  batch_sequences_.Observe(static_cast<double>(step.num_sequences));
  batch_tokens_.Observe(static_cast<double>(step.num_tokens));
  steps_.Increment();
  if (step.num_preempted > 0) preemptions_.Increment(static_cast<double>(step.num_preempted));
}

void ServerMetrics::OnRequestFinished(const RequestStats& request) {
  requests_
      .Add({{"code", absl::StatusCodeToString(request.status)},
            {"finish_reason", std::string(FinishReasonName(request.finish_reason))}})
      .Increment();
  prompt_tokens_.Increment(static_cast<double>(request.prompt_tokens));
  generation_tokens_.Increment(static_cast<double>(request.generated_tokens));
  queue_time_.Observe(request.queue_seconds);
  request_latency_.Observe(request.end_to_end_seconds);
  if (request.generated_tokens > 0) {
    time_to_first_token_.Observe(request.time_to_first_token_seconds);
    prefill_time_.Observe(request.prefill_seconds);
  }
  if (request.generated_tokens > 1) {
    time_per_output_token_.Observe(request.time_per_output_token_seconds);
    decode_time_.Observe(request.decode_seconds);
  }
}

void ServerMetrics::OnLoad(const EngineStats& stats) {
  running_.Set(static_cast<double>(stats.running));
  waiting_.Set(static_cast<double>(stats.waiting));
  kv_blocks_used_.Set(static_cast<double>(stats.kv_blocks_used));
  kv_blocks_total_.Set(static_cast<double>(stats.kv_blocks_total));
  kv_usage_ratio_.Set(stats.kv_blocks_total > 0 ? static_cast<double>(stats.kv_blocks_used) /
                                                      static_cast<double>(stats.kv_blocks_total)
                                                : 0.0);
}

void ServerMetrics::RecordRejected(absl::StatusCode code) {
  requests_.Add({{"code", absl::StatusCodeToString(code)}, {"finish_reason", "rejected"}})
      .Increment();
}

void ServerMetrics::SetServedModel(const std::string& model_path,
                                   const std::string& architecture,
                                   const std::string& tokenizer_type, int64_t version,
                                   const ServedModel& served) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (model_info_series_ != nullptr) model_info_.Remove(model_info_series_);
  model_info_series_ = &model_info_.Add({{"model", model_path},
                                         {"architecture", architecture},
                                         {"tokenizer", tokenizer_type},
                                         {"plan", served.plan_name},
                                         {"version", std::to_string(version)}});
  model_info_series_->Set(1);

  for (auto& [scheme, gauge] : scheme_series_) layers_per_scheme_.Remove(gauge);
  scheme_series_.clear();
  for (const auto& [scheme, count] : served.layers_per_scheme) {
    prometheus::Gauge& gauge = layers_per_scheme_.Add({{"scheme", scheme}});
    gauge.Set(count);
    scheme_series_[scheme] = &gauge;
  }

  for (auto& [layer, gauge] : sqnr_series_) weight_sqnr_.Remove(gauge);
  sqnr_series_.clear();
  for (const auto& [layer, sqnr] : served.weight_sqnr_db) {
    // An exact quantization has infinite SQNR, which the text format spells +Inf.
    prometheus::Gauge& gauge = weight_sqnr_.Add({{"layer", layer}});
    gauge.Set(sqnr);
    sqnr_series_[layer] = &gauge;
  }
}

void ServerMetrics::RecordQuantizationUpdate(const std::string& result, double seconds) {
  quantization_updates_.Add({{"result", result}}).Increment();
  quantization_update_time_.Observe(seconds);
}

void ServerMetrics::RecordShadowComparison(const std::string& plan,
                                           std::span<const double> kl_values,
                                           int64_t top1_agreements) {
  prometheus::Histogram& histogram = shadow_kl_divergence_.Add({{"plan", plan}},
                                                               KlDivergenceBuckets());
  for (double kl : kl_values) histogram.Observe(kl);
  shadow_positions_.Add({{"plan", plan}}).Increment(static_cast<double>(kl_values.size()));
  shadow_top1_agreements_.Add({{"plan", plan}}).Increment(static_cast<double>(top1_agreements));
  shadow_requests_.Add({{"plan", plan}, {"result", "compared"}}).Increment();
}

void ServerMetrics::RecordEvaluation(
    const std::string& plan, std::optional<double> perplexity,
    const std::vector<std::pair<std::string, double>>& accuracies, double timestamp_seconds) {
  if (perplexity.has_value()) eval_perplexity_.Add({{"plan", plan}}).Set(*perplexity);
  for (const auto& [task, accuracy] : accuracies) {
    eval_accuracy_.Add({{"plan", plan}, {"task", task}}).Set(accuracy);
  }
  eval_last_run_.Set(timestamp_seconds);
}

void ServerMetrics::RecordShadowResult(const std::string& plan, const std::string& result) {
  shadow_requests_.Add({{"plan", plan}, {"result", result}}).Increment();
}

}  // namespace w8a8::server
