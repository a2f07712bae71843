#include "server/service.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/status_macros.h"
#include "server/grpc_status.h"
#include "spdlog/spdlog.h"

namespace w8a8::server {
namespace {

namespace v1 = ::w8a8serve::v1;

absl::Time DeadlineOf(const grpc::ServerContextBase& context) {
  const auto deadline = context.deadline();
  // gRPC reports "no deadline" as a time point centuries ahead.
  if (deadline >= std::chrono::system_clock::now() + std::chrono::hours(24 * 365 * 100)) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(deadline);
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
    const grpc::ServerContextBase& context) const {
  RETURN_IF_ERROR(authorizer_.CheckInference(context));
  return gate_.Acquire();
}

absl::Status W8A8ServeService::RejectGeneration(const std::string& request_id,
                                                absl::Status status) const {
  if (metrics_ != nullptr) metrics_->RecordRejected(status.code());
  spdlog::warn("request {} rejected: {}", request_id, status.ToString());
  return status;
}

absl::StatusOr<W8A8ServeService::AdmittedGeneration> W8A8ServeService::AdmitGeneration(
    grpc::CallbackServerContext& context, const v1::GenerateRequest& request,
    std::string& request_id) const {
  absl::Status id_status = absl::OkStatus();
  if (request.request_id().empty()) {
    request_id = NewRequestId();
  } else {
    id_status = ValidateRequestId(request.request_id(), options_.limits);
    request_id = id_status.ok() ? request.request_id() : NewRequestId();
  }
  // The first message, or the status of a call without messages, carries it.
  context.AddInitialMetadata("x-request-id", request_id);

  if (!id_status.ok()) return RejectGeneration(request_id, id_status);
  absl::StatusOr<std::shared_ptr<ModelHost>> host = AcquireForInference(context);
  if (!host.ok()) return RejectGeneration(request_id, host.status());
  absl::StatusOr<GenerationRequest> generation = BuildGenerationRequest(
      request, request_id, (*host)->tokenizer(), (*host)->engine().options().max_context,
      options_.limits, DeadlineOf(context));
  if (!generation.ok()) return RejectGeneration(request_id, generation.status());
  return AdmittedGeneration{*std::move(host), *std::move(generation)};
}

void W8A8ServeService::StartGeneration(AdmittedGeneration admitted,
                                       const std::string& request_id,
                                       GenerationCall& call) const {
  absl::Status submitted =
      admitted.host->engine().Submit(std::move(admitted.request), call.EngineCallback());
  if (submitted.code() == absl::StatusCode::kResourceExhausted) {
    submitted = absl::ResourceExhaustedError(
        absl::StrCat(submitted.message(), " (server flag --max-queue)"));
  }
  if (!submitted.ok()) {
    call.Reject(RejectGeneration(request_id, submitted));
    return;
  }
  call.MarkSubmitted();
}

GenerationCallInfo W8A8ServeService::CallInfo(const AdmittedGeneration& admitted,
                                              const std::string& request_id,
                                              const v1::GenerateRequest& request) {
  return GenerationCallInfo{request_id, admitted.host, admitted.request.prompt_ids,
                            WantsLogprobs(request)};
}

grpc::ServerUnaryReactor* W8A8ServeService::Generate(grpc::CallbackServerContext* context,
                                                     const v1::GenerateRequest* request,
                                                     v1::GenerateResponse* response) {
  std::string request_id;
  absl::StatusOr<AdmittedGeneration> admitted = AdmitGeneration(*context, *request, request_id);
  if (!admitted.ok()) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(GenerationErrorStatus(request_id, admitted.status()));
    return reactor;
  }
  std::shared_ptr<GenerationCall> call;
  grpc::ServerUnaryReactor* reactor =
      NewUnaryGeneration(CallInfo(*admitted, request_id, *request), response, call);
  StartGeneration(*std::move(admitted), request_id, *call);
  return reactor;
}

grpc::ServerWriteReactor<v1::GenerateStreamResponse>* W8A8ServeService::GenerateStream(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  std::string request_id;
  absl::StatusOr<AdmittedGeneration> admitted = AdmitGeneration(*context, *request, request_id);
  if (!admitted.ok()) return NewRejectedStream(request_id, admitted.status());
  std::shared_ptr<GenerationCall> call;
  grpc::ServerWriteReactor<v1::GenerateStreamResponse>* reactor = NewStreamGeneration(
      CallInfo(*admitted, request_id, *request), stream_interval_, call);
  StartGeneration(*std::move(admitted), request_id, *call);
  return reactor;
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
