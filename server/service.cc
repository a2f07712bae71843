#include "server/service.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <limits>
#include <set>
#include <span>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/status_macros.h"
#include "server/grpc_status.h"
#include "spdlog/spdlog.h"

namespace w8a8::server {
namespace {

namespace v1 = ::w8a8serve::v1;

constexpr auto kCancelPollInterval = std::chrono::milliseconds(20);

// Updates of one request, from the engine thread to the handler thread. Push only takes a mutex
// for a queue append, so the engine thread does not wait on the handler. It wakes the handler
// only once `min_tokens` generated tokens or the final update are queued, so the handler wakes
// once per message it sends instead of once per engine step.
class UpdateQueue {
 public:
  explicit UpdateQueue(int64_t min_tokens) : min_tokens_(min_tokens) {}

  void Push(GenerationUpdate update) {
    bool ready = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queued_tokens_ += static_cast<int64_t>(update.tokens.size());
      finished_ = finished_ || update.finished;
      updates_.push_back(std::move(update));
      ready = IsReady();
    }
    if (ready) ready_.notify_one();
  }

  // Takes every queued update, in order, once at least `min_tokens` generated tokens or the
  // final update are queued. Returns an empty vector when that did not happen within `timeout`.
  std::vector<GenerationUpdate> PopReady(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!ready_.wait_for(lock, timeout, [this] { return IsReady(); })) return {};
    std::vector<GenerationUpdate> updates;
    updates.swap(updates_);
    queued_tokens_ = 0;
    return updates;
  }

 private:
  // Requires mutex_.
  bool IsReady() const {
    return !updates_.empty() && (finished_ || queued_tokens_ >= min_tokens_);
  }

  const int64_t min_tokens_;
  std::mutex mutex_;
  std::condition_variable ready_;
  std::vector<GenerationUpdate> updates_;
  int64_t queued_tokens_ = 0;  // Generated tokens in updates_.
  bool finished_ = false;      // The final update has been queued.
};

int64_t ModelVersion(const std::string& model_label) {
  int64_t version = 0;
  return absl::SimpleAtoi(model_label, &version) ? version : 0;
}

absl::Time DeadlineOf(const grpc::ServerContext& context) {
  const auto deadline = context.deadline();
  // gRPC reports "no deadline" as a time point centuries ahead.
  if (deadline >= std::chrono::system_clock::now() + std::chrono::hours(24 * 365 * 100)) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(deadline);
}

v1::FinishReason ToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case FinishReason::kCancelled:
    case FinishReason::kDeadline:
    case FinishReason::kError:
      return v1::FINISH_REASON_ABORT;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

void AppendLogprob(const Tokenizer& tokenizer, const GeneratedToken& token,
                   google::protobuf::RepeatedPtrField<v1::TokenLogprob>& out) {
  v1::TokenLogprob& entry = *out.Add();
  entry.set_token_id(token.token_id);
  entry.set_token(tokenizer.TokenString(token.token_id));
  if (token.logprob.has_value()) entry.set_logprob(*token.logprob);
  for (const LogprobAlternative& alternative : token.top_logprobs) {
    v1::TopLogprob& top = *entry.add_top_logprobs();
    top.set_token_id(alternative.token_id);
    top.set_token(tokenizer.TokenString(alternative.token_id));
    top.set_logprob(alternative.logprob);
  }
}

void FillUsage(const GenerationUpdate& update, v1::Usage& usage, v1::Timings& timings) {
  usage.set_prompt_tokens(static_cast<int32_t>(update.usage.prompt_tokens));
  usage.set_completion_tokens(static_cast<int32_t>(update.usage.generated_tokens));
  usage.set_total_tokens(
      static_cast<int32_t>(update.usage.prompt_tokens + update.usage.generated_tokens));
  timings.set_queue_seconds(update.timings.queue_seconds);
  timings.set_time_to_first_token_seconds(update.timings.time_to_first_token_seconds);
  timings.set_total_seconds(update.timings.end_to_end_seconds);
  timings.set_prefill_seconds(update.timings.prefill_seconds);
  timings.set_decode_seconds(update.timings.decode_seconds);
}

// Fills the tokens, log-probabilities and text of one update into a reply message (unary or
// stream), which both have the same field names.
template <typename Reply>
void AppendUpdate(const Tokenizer& tokenizer, bool logprobs, const GenerationUpdate& update,
                  Reply& reply) {
  for (const GeneratedToken& token : update.prompt_tokens) {
    reply.add_token_ids(token.token_id);
    if (logprobs) AppendLogprob(tokenizer, token, *reply.mutable_logprobs());
  }
  for (const GeneratedToken& token : update.tokens) {
    reply.add_token_ids(token.token_id);
    if (logprobs) AppendLogprob(tokenizer, token, *reply.mutable_logprobs());
  }
  reply.mutable_text()->append(update.prompt_text);
  reply.mutable_text()->append(update.text);
  if (update.finished) {
    reply.set_finish_reason(ToProto(update.finish_reason));
    FillUsage(update, *reply.mutable_usage(), *reply.mutable_timings());
  }
  reply.set_model_version(ModelVersion(update.model_label));
}

bool WantsLogprobs(const v1::GenerateRequest& request) {
  return request.logprobs() || request.top_logprobs() > 0;
}

bool IsPolicyName(const std::string& plan) {
  static const std::set<std::string> kPolicies = {"fp32",      "fp",        "per-channel",
                                                  "per-group", "per-tensor", "auto"};
  return kPolicies.contains(plan);
}

void FillSummary(const ServedModel& served, v1::QuantizationSummary& summary) {
  summary.set_plan(served.plan_name);
  for (const auto& [scheme, count] : served.layers_per_scheme) {
    (*summary.mutable_layers_per_scheme())[scheme] = count;
  }
}

v1::UpdateState ToProto(UpdateState state) {
  switch (state) {
    case UpdateState::kIdle:
      return v1::UPDATE_STATE_IDLE;
    case UpdateState::kRunning:
      return v1::UPDATE_STATE_RUNNING;
    case UpdateState::kSucceeded:
      return v1::UPDATE_STATE_SUCCEEDED;
    case UpdateState::kFailed:
      return v1::UPDATE_STATE_FAILED;
  }
  return v1::UPDATE_STATE_UNSPECIFIED;
}

}  // namespace

absl::StatusOr<std::shared_ptr<ModelHost>> ServingGate::Acquire() const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!loaded_) {
    return absl::UnavailableError("the model is still loading; retry when health is SERVING");
  }
  if (!admitting_ || host_ == nullptr) {
    return absl::UnavailableError("the server is shutting down; send the request to another "
                                  "replica");
  }
  return host_;
}

void ServingGate::Open(std::shared_ptr<ModelHost> host) {
  std::lock_guard<std::mutex> lock(mutex_);
  host_ = std::move(host);
  loaded_ = true;
  admitting_ = true;
}

void ServingGate::Close() {
  std::lock_guard<std::mutex> lock(mutex_);
  admitting_ = false;
  // A server that never finished loading reports shutdown from now on.
  loaded_ = true;
}

std::shared_ptr<ModelHost> ServingGate::Release() {
  std::lock_guard<std::mutex> lock(mutex_);
  return std::exchange(host_, nullptr);
}

std::shared_ptr<ModelHost> ServingGate::host() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return host_;
}

W8A8ServeService::W8A8ServeService(const ServingGate& gate, const Authorizer& authorizer,
                                   std::shared_ptr<ServerMetrics> metrics, ServiceOptions options)
    : gate_(gate), authorizer_(authorizer), metrics_(std::move(metrics)),
      options_(std::move(options)),
      stream_interval_(std::max<int64_t>(1, options_.stream_interval)) {}

absl::StatusOr<std::shared_ptr<ModelHost>> W8A8ServeService::AcquireForInference(
    const grpc::ServerContext& context) const {
  RETURN_IF_ERROR(authorizer_.CheckInference(context));
  return gate_.Acquire();
}

template <typename OnUpdates>
absl::Status W8A8ServeService::RunGeneration(grpc::ServerContext* context,
                                             const v1::GenerateRequest& request,
                                             int64_t min_tokens, std::string& request_id,
                                             OnUpdates on_updates) {
  absl::Status id_status = absl::OkStatus();
  if (request.request_id().empty()) {
    request_id = NewRequestId();
  } else {
    id_status = ValidateRequestId(request.request_id(), options_.limits);
    request_id = id_status.ok() ? request.request_id() : NewRequestId();
  }
  context->AddInitialMetadata("x-request-id", request_id);

  auto reject = [&](absl::Status status) {
    if (metrics_ != nullptr) metrics_->RecordRejected(status.code());
    spdlog::warn("request {} rejected: {}", request_id, status.ToString());
    return status;
  };
  if (!id_status.ok()) return reject(id_status);
  absl::StatusOr<std::shared_ptr<ModelHost>> host = AcquireForInference(*context);
  if (!host.ok()) return reject(host.status());
  Engine& engine = (*host)->engine();

  absl::StatusOr<GenerationRequest> generation =
      BuildGenerationRequest(request, request_id, (*host)->tokenizer(),
                             engine.options().max_context, options_.limits, DeadlineOf(*context));
  if (!generation.ok()) return reject(generation.status());

  // The prompt and generated ids, for the shadow comparison.
  std::vector<int32_t> sequence = generation->prompt_ids;
  auto queue = std::make_shared<UpdateQueue>(min_tokens);
  absl::Status submitted = engine.Submit(
      *std::move(generation), [queue](GenerationUpdate update) { queue->Push(std::move(update)); });
  if (submitted.code() == absl::StatusCode::kResourceExhausted) {
    return reject(absl::ResourceExhaustedError(
        absl::StrCat(submitted.message(), " (server flag --max-queue)")));
  }
  if (!submitted.ok()) return reject(submitted);

  bool cancel_sent = false;
  auto cancel = [&](const char* why) {
    if (cancel_sent) return;
    cancel_sent = true;
    spdlog::info("request {} cancelled: {}", request_id, why);
    // NOT_FOUND means the request finished meanwhile; its last update is on its way.
    (void)engine.Cancel(request_id);
  };
  while (true) {
    std::vector<GenerationUpdate> updates = queue->PopReady(kCancelPollInterval);
    if (updates.empty()) {
      if (context->IsCancelled()) cancel("the client cancelled the call or its deadline passed");
      continue;
    }
    if (!on_updates(std::span<const GenerationUpdate>(updates))) {
      cancel("the client stopped reading the stream");
    }
    for (const GenerationUpdate& update : updates) {
      for (const GeneratedToken& token : update.tokens) sequence.push_back(token.token_id);
    }
    // The final update is the last one the engine pushes, so only the batch's last can be it.
    if (!updates.back().finished) continue;

    const GenerationUpdate& last = updates.back();
    absl::Status status = last.status;
    if (status.ok() && cancel_sent) {
      status = absl::CancelledError("the client cancelled the call");
    }
    spdlog::info("request {} finished: {} prompt tokens, {} generated, finish {}, queue {:.4f} s, "
                 "first token {:.4f} s, total {:.4f} s, model version {}, status {}",
                 request_id, last.usage.prompt_tokens, last.usage.generated_tokens,
                 FinishReasonName(last.finish_reason), last.timings.queue_seconds,
                 last.timings.time_to_first_token_seconds, last.timings.end_to_end_seconds,
                 last.model_label, absl::StatusCodeToString(status.code()));
    if (!status.ok() && status.code() != absl::StatusCode::kCancelled &&
        status.code() != absl::StatusCode::kDeadlineExceeded) {
      spdlog::error("request {} failed: {}", request_id, status.ToString());
    }
    if (status.ok()) (*host)->OfferShadowSample(std::move(sequence), last.model_label);
    return status;
  }
}

grpc::Status W8A8ServeService::Generate(grpc::ServerContext* context,
                                        const v1::GenerateRequest* request,
                                        v1::GenerateResponse* response) {
  std::string request_id;
  const bool logprobs = WantsLogprobs(*request);
  std::shared_ptr<ModelHost> host = gate_.host();
  // The unary reply needs the whole completion, so the handler wakes only for the final update
  // (or to poll for cancellation).
  constexpr int64_t kUntilFinished = std::numeric_limits<int64_t>::max();
  absl::Status status = RunGeneration(
      context, *request, kUntilFinished, request_id,
      [&](std::span<const GenerationUpdate> updates) {
        for (const GenerationUpdate& update : updates) {
          AppendUpdate(host->tokenizer(), logprobs, update, *response);
        }
        return true;
      });
  response->set_request_id(request_id);
  if (!status.ok()) {
    response->Clear();
    return ToGrpcStatus(absl::Status(status.code(), absl::StrCat("request ", request_id, ": ",
                                                                 status.message())));
  }
  return grpc::Status::OK;
}

grpc::Status W8A8ServeService::GenerateStream(
    grpc::ServerContext* context, const v1::GenerateRequest* request,
    grpc::ServerWriter<v1::GenerateStreamResponse>* writer) {
  std::string request_id;
  const bool logprobs = WantsLogprobs(*request);
  std::shared_ptr<ModelHost> host = gate_.host();
  bool writable = true;
  absl::Status status = RunGeneration(
      context, *request, stream_interval_, request_id,
      [&](std::span<const GenerationUpdate> updates) {
        if (!writable) return false;
        // A failed status ends the stream with no final message, so the final update is not
        // written for it. The tokens queued before it still are.
        const bool failed = updates.back().finished && !updates.back().status.ok();
        if (failed) updates = updates.first(updates.size() - 1);
        if (updates.empty()) return true;

        // Every update taken in one wake-up goes into one message. The tokens, log-probabilities
        // and text concatenate in order, and the final update adds the finish reason, usage and
        // timings.
        v1::GenerateStreamResponse message;
        message.set_request_id(request_id);
        for (const GenerationUpdate& update : updates) {
          AppendUpdate(host->tokenizer(), logprobs, update, message);
        }
        const bool finished = updates.back().finished;
        // Updates without tokens, text or end carry nothing for the client.
        if (message.token_ids_size() == 0 && message.text().empty() && !finished) return true;
        // gRPC sends the final message together with the call's status, which saves one round
        // trip through the completion queue.
        grpc::WriteOptions options;
        if (finished) options.set_last_message();
        writable = writer->Write(message, options);
        return writable;
      });
  if (!status.ok()) {
    return ToGrpcStatus(absl::Status(status.code(), absl::StrCat("request ", request_id, ": ",
                                                                 status.message())));
  }
  return grpc::Status::OK;
}

grpc::Status W8A8ServeService::Tokenize(grpc::ServerContext* context,
                                        const v1::TokenizeRequest* request,
                                        v1::TokenizeResponse* response) {
  absl::StatusOr<std::shared_ptr<ModelHost>> host = AcquireForInference(*context);
  if (!host.ok()) return ToGrpcStatus(host.status());
  if (static_cast<int64_t>(request->text().size()) > options_.limits.max_prompt_bytes) {
    return ToGrpcStatus(absl::InvalidArgumentError(
        absl::StrCat("text has ", request->text().size(), " bytes, more than the limit of ",
                     options_.limits.max_prompt_bytes, " (--max-prompt-bytes)")));
  }
  const Tokenizer& tokenizer = (*host)->tokenizer();
  const bool add_bos = request->has_add_bos() ? request->add_bos() : tokenizer.adds_bos();
  for (int32_t id : tokenizer.Encode(request->text(), add_bos, request->parse_special())) {
    response->add_token_ids(id);
    response->add_tokens(tokenizer.TokenString(id));
  }
  return grpc::Status::OK;
}

grpc::Status W8A8ServeService::Detokenize(grpc::ServerContext* context,
                                          const v1::DetokenizeRequest* request,
                                          v1::DetokenizeResponse* response) {
  absl::StatusOr<std::shared_ptr<ModelHost>> host = AcquireForInference(*context);
  if (!host.ok()) return ToGrpcStatus(host.status());
  const Tokenizer& tokenizer = (*host)->tokenizer();
  std::vector<int32_t> ids(request->token_ids().begin(), request->token_ids().end());
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= tokenizer.vocab_size()) {
      return ToGrpcStatus(absl::InvalidArgumentError(
          absl::StrCat("token_ids[", i, "] = ", ids[i], " is outside the vocabulary [0, ",
                       tokenizer.vocab_size(), ")")));
    }
  }
  response->set_text(tokenizer.Decode(ids, request->skip_special_tokens()));
  return grpc::Status::OK;
}

grpc::Status W8A8ServeService::GetModelInfo(grpc::ServerContext* context,
                                            const v1::GetModelInfoRequest* /*request*/,
                                            v1::ModelInfo* response) {
  absl::StatusOr<std::shared_ptr<ModelHost>> host = AcquireForInference(*context);
  if (!host.ok()) return ToGrpcStatus(host.status());
  const ModelConfig& config = (*host)->checkpoint().config();
  const Tokenizer& tokenizer = (*host)->tokenizer();
  std::shared_ptr<const ServedModel> served = (*host)->current();
  response->set_model_path((*host)->model_path());
  response->set_checkpoint_format((*host)->checkpoint().format());
  response->set_architecture(config.architecture);
  response->set_hidden_size(config.hidden_size);
  response->set_intermediate_size(config.intermediate_size);
  response->set_num_hidden_layers(config.num_hidden_layers);
  response->set_num_attention_heads(config.num_attention_heads);
  response->set_num_key_value_heads(config.num_key_value_heads);
  response->set_head_dim(config.head_dim);
  response->set_vocab_size(config.vocab_size);
  response->set_context_length((*host)->engine().options().max_context);
  response->set_tokenizer_type(tokenizer.type());
  response->set_tokenizer_vocab_size(tokenizer.vocab_size());
  if (tokenizer.bos_id().has_value()) response->set_bos_token_id(*tokenizer.bos_id());
  for (int32_t id : tokenizer.eos_ids()) response->add_eos_token_ids(id);
  response->set_linear_weight_bytes(static_cast<int64_t>(served->model->weight_bytes()));
  FillSummary(*served, *response->mutable_quantization());
  response->set_model_version((*host)->version());
  return grpc::Status::OK;
}

grpc::Status W8A8ServeService::GetQuantizationConfig(
    grpc::ServerContext* context, const v1::GetQuantizationConfigRequest* /*request*/,
    v1::QuantizationConfig* response) {
  absl::StatusOr<std::shared_ptr<ModelHost>> host = AcquireForInference(*context);
  if (!host.ok()) return ToGrpcStatus(host.status());
  std::shared_ptr<const ServedModel> served = (*host)->current();
  FillSummary(*served, *response->mutable_summary());
  if (served->plan.has_value()) response->set_plan_json(PlanToJson(*served->plan).dump(2));
  for (const LinearLayerInfo& layer : served->model->LinearLayers()) {
    v1::LayerQuantization& entry = *response->add_layers();
    entry.set_name(layer.name);
    entry.set_scheme(layer.scheme);
    entry.set_out_features(layer.out_features);
    entry.set_in_features(layer.in_features);
    entry.set_weight_bytes(static_cast<int64_t>(layer.weight_bytes));
  }
  response->set_model_version((*host)->version());
  const UpdateStatus update = (*host)->update_status();
  response->set_update_state(ToProto(update.state));
  response->set_update_error(update.error);
  return grpc::Status::OK;
}

grpc::Status W8A8ServeService::AnalyzeQuantization(grpc::ServerContext* context,
                                                   const v1::AnalyzeQuantizationRequest* request,
                                                   v1::AnalyzeQuantizationResponse* response) {
  absl::StatusOr<std::shared_ptr<ModelHost>> host = AcquireForInference(*context);
  if (!host.ok()) return ToGrpcStatus(host.status());
  const std::string plan = request->plan().empty() ? "auto" : request->plan();
  // Only policy names: a path would let a client probe the server's files.
  if (!IsPolicyName(plan)) {
    return ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat(
        "plan '", plan, "' is invalid: use fp32, per-channel, per-group, per-tensor or auto")));
  }
  const Checkpoint& checkpoint = (*host)->checkpoint();
  absl::StatusOr<ResolvedQuantization> resolved =
      ResolveQuantization(checkpoint, QuantizationRequest{plan, std::nullopt});
  if (!resolved.ok()) return ToGrpcStatus(resolved.status());
  if (resolved->stored) {
    return ToGrpcStatus(absl::FailedPreconditionError(
        "the served checkpoint stores quantized weights, so there are no FP32 weights to analyze"));
  }
  const absl::Time start = absl::Now();
  absl::StatusOr<QuantizationReport> report =
      w8a8::AnalyzeQuantization(checkpoint, *resolved->config);
  if (!report.ok()) {
    spdlog::error("AnalyzeQuantization with plan {} failed: {}", plan,
                  report.status().ToString());
    return ToGrpcStatus(report.status());
  }
  response->set_analysis_json(QuantizationReportToJson(*report).dump(2));
  response->set_plan_json(PlanToJson(report->plan).dump(2));
  for (const LayerPlan& layer : report->plan.layers) {
    ++(*response->mutable_layers_per_scheme())[std::string(WeightSchemeName(layer.scheme))];
  }
  response->set_analysis_seconds(absl::ToDoubleSeconds(absl::Now() - start));
  return grpc::Status::OK;
}

grpc::Status W8A8ServeService::UpdateQuantizationConfig(
    grpc::ServerContext* context, const v1::UpdateQuantizationConfigRequest* request,
    v1::UpdateQuantizationConfigResponse* response) {
  if (absl::Status allowed = authorizer_.CheckAdmin(*context, options_.admin_listener);
      !allowed.ok()) {
    spdlog::warn("UpdateQuantizationConfig rejected: {}", allowed.ToString());
    return ToGrpcStatus(allowed);
  }
  absl::StatusOr<std::shared_ptr<ModelHost>> host = gate_.Acquire();
  if (!host.ok()) return ToGrpcStatus(host.status());

  QuantizationRequest quantization;
  switch (request->config_case()) {
    case v1::UpdateQuantizationConfigRequest::kPlan:
      if (!IsPolicyName(request->plan())) {
        return ToGrpcStatus(absl::InvalidArgumentError(
            absl::StrCat("plan '", request->plan(),
                         "' is invalid: use fp32, per-channel, per-group, per-tensor or auto, or "
                         "send a plan or config as plan_json")));
      }
      quantization.plan = request->plan();
      break;
    case v1::UpdateQuantizationConfigRequest::kPlanJson:
      quantization.plan = "custom";
      quantization.config_text = request->plan_json();
      break;
    case v1::UpdateQuantizationConfigRequest::CONFIG_NOT_SET:
      return ToGrpcStatus(absl::InvalidArgumentError("config is missing: set plan or plan_json"));
  }

  absl::StatusOr<int64_t> version = (*host)->StartUpdate(quantization);
  if (!version.ok()) {
    spdlog::warn("UpdateQuantizationConfig with plan {} rejected: {}", quantization.plan,
                 version.status().ToString());
    return ToGrpcStatus(version.status());
  }
  if (request->wait()) (*host)->WaitForUpdate();

  const UpdateStatus update = (*host)->update_status();
  response->set_model_version(*version);
  response->set_update_state(ToProto(update.state));
  response->set_update_error(update.error);
  if (update.state == UpdateState::kSucceeded) {
    FillSummary(*(*host)->current(), *response->mutable_summary());
  }
  return grpc::Status::OK;
}

grpc::Status W8A8ServeService::RunEvaluation(grpc::ServerContext* context,
                                             const v1::RunEvaluationRequest* /*request*/,
                                             v1::RunEvaluationResponse* response) {
  if (absl::Status allowed = authorizer_.CheckAdmin(*context, options_.admin_listener);
      !allowed.ok()) {
    spdlog::warn("RunEvaluation rejected: {}", allowed.ToString());
    return ToGrpcStatus(allowed);
  }
  absl::StatusOr<std::shared_ptr<ModelHost>> host = gate_.Acquire();
  if (!host.ok()) return ToGrpcStatus(host.status());

  absl::StatusOr<EvaluationReport> report = (*host)->RunEvaluation();
  if (!report.ok()) {
    spdlog::error("RunEvaluation failed: {}", report.status().ToString());
    return ToGrpcStatus(report.status());
  }
  response->set_plan(report->plan_label);
  response->set_model_version(report->model_version);
  if (report->perplexity.has_value()) {
    response->set_perplexity(report->perplexity->perplexity());
    response->set_tokens_scored(report->perplexity->tokens_scored);
  }
  for (const TaskAccuracy& task : report->tasks) {
    v1::TaskAccuracy& entry = *response->add_tasks();
    entry.set_task(task.task);
    entry.set_items(task.result.items);
    entry.set_accuracy(task.result.accuracy);
    entry.set_accuracy_stderr(task.result.accuracy_stderr);
  }
  response->set_seconds(report->seconds);
  return grpc::Status::OK;
}

}  // namespace w8a8::server
