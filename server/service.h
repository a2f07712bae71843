// The w8a8serve.v1.W8A8Serve gRPC service on top of a ModelHost.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "server/auth.h"
#include "server/metrics.h"
#include "server/model_host.h"
#include "server/request_builder.h"
#include "w8a8serve/v1/w8a8serve.grpc.pb.h"

namespace w8a8::server {

// Hands the loaded ModelHost to RPC handlers while the server admits requests. Thread-safe.
// A handler keeps the returned shared_ptr for the whole call, so the host outlives every
// handler that acquired it.
class ServingGate {
 public:
  // Returns the host, or UNAVAILABLE while the model loads or the server shuts down.
  absl::StatusOr<std::shared_ptr<ModelHost>> Acquire() const;

  void Open(std::shared_ptr<ModelHost> host);
  // Stops admitting; the host stays reachable through host() for the drain.
  void Close();
  // Drops the gate's reference to the host.
  std::shared_ptr<ModelHost> Release();
  std::shared_ptr<ModelHost> host() const;

 private:
  mutable std::mutex mutex_;
  std::shared_ptr<ModelHost> host_;
  bool admitting_ = false;
  bool loaded_ = false;
};

struct ServiceOptions {
  RequestLimits limits;
  // The service instance on the 127.0.0.1 admin listener serves admin RPCs without a token
  // when no admin token is configured.
  bool admin_listener = false;
  // GenerateStream sends a message once at least this many generated tokens are ready, or the
  // request finished. 1 sends every token as soon as the engine produces it. Values below 1
  // count as 1.
  int64_t stream_interval = 1;
};

// Sync gRPC handlers: each call runs on a gRPC thread, and generation calls block that thread
// until the engine finishes the request, polling for client cancellation every 20 ms.
// GenerateStream writes one message per wake-up of its thread, with every update queued since
// the previous message, so a stream lagging behind the engine sends fewer, larger messages.
class W8A8ServeService final : public w8a8serve::v1::W8A8Serve::Service {
 public:
  W8A8ServeService(const ServingGate& gate, const Authorizer& authorizer,
                   std::shared_ptr<ServerMetrics> metrics, ServiceOptions options);

  grpc::Status Generate(grpc::ServerContext* context,
                        const w8a8serve::v1::GenerateRequest* request,
                        w8a8serve::v1::GenerateResponse* response) override;
  grpc::Status GenerateStream(
      grpc::ServerContext* context, const w8a8serve::v1::GenerateRequest* request,
      grpc::ServerWriter<w8a8serve::v1::GenerateStreamResponse>* writer) override;
  grpc::Status Tokenize(grpc::ServerContext* context,
                        const w8a8serve::v1::TokenizeRequest* request,
                        w8a8serve::v1::TokenizeResponse* response) override;
  grpc::Status Detokenize(grpc::ServerContext* context,
                          const w8a8serve::v1::DetokenizeRequest* request,
                          w8a8serve::v1::DetokenizeResponse* response) override;
  grpc::Status GetModelInfo(grpc::ServerContext* context,
                            const w8a8serve::v1::GetModelInfoRequest* request,
                            w8a8serve::v1::ModelInfo* response) override;
  grpc::Status GetQuantizationConfig(grpc::ServerContext* context,
                                     const w8a8serve::v1::GetQuantizationConfigRequest* request,
                                     w8a8serve::v1::QuantizationConfig* response) override;
  grpc::Status AnalyzeQuantization(grpc::ServerContext* context,
                                   const w8a8serve::v1::AnalyzeQuantizationRequest* request,
                                   w8a8serve::v1::AnalyzeQuantizationResponse* response) override;
  grpc::Status UpdateQuantizationConfig(
      grpc::ServerContext* context, const w8a8serve::v1::UpdateQuantizationConfigRequest* request,
      w8a8serve::v1::UpdateQuantizationConfigResponse* response) override;
  grpc::Status RunEvaluation(grpc::ServerContext* context,
                             const w8a8serve::v1::RunEvaluationRequest* request,
                             w8a8serve::v1::RunEvaluationResponse* response) override;

 private:
  // Runs one generation request. Whenever at least `min_tokens` generated tokens or the final
  // update are queued, passes every queued engine update, in order, to `on_updates`
  // (bool(std::span<const GenerationUpdate>), false when the client stopped reading). Returns
  // the final status; fills `request_id`.
  template <typename OnUpdates>
  absl::Status RunGeneration(grpc::ServerContext* context,
                             const w8a8serve::v1::GenerateRequest& request, int64_t min_tokens,
                             std::string& request_id, OnUpdates on_updates);
  absl::StatusOr<std::shared_ptr<ModelHost>> AcquireForInference(
      const grpc::ServerContext& context) const;

  const ServingGate& gate_;
  const Authorizer& authorizer_;
  std::shared_ptr<ServerMetrics> metrics_;
  ServiceOptions options_;
  int64_t stream_interval_;  // options_.stream_interval, at least 1.
};

}  // namespace w8a8::server
