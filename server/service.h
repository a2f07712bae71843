// The w8a8serve.v1.W8A8Serve gRPC service on top of a ModelHost.
#pragma once

#include <atomic>
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
};

// Sync gRPC handlers: each call runs on a gRPC thread, and generation calls block that thread
// until the engine finishes the request, polling for client cancellation every 20 ms.
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
  // Runs one generation request, passing every engine update to `on_update`. Returns the
  // final status; fills `request_id`.
  template <typename OnUpdate>
  absl::Status RunGeneration(grpc::ServerContext* context,
                             const w8a8serve::v1::GenerateRequest& request,
                             std::string& request_id, OnUpdate on_update);
  absl::StatusOr<std::shared_ptr<ModelHost>> AcquireForInference(
      const grpc::ServerContext& context) const;

  const ServingGate& gate_;
  const Authorizer& authorizer_;
  std::shared_ptr<ServerMetrics> metrics_;
  ServiceOptions options_;
};

}  // namespace w8a8::server
