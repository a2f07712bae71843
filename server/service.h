// The w8a8serve.v1.W8A8Serve gRPC service on top of a ModelHost.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "server/auth.h"
#include "server/generation_call.h"
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

// Generate and GenerateStream use the gRPC callback API, so a generation call occupies no gRPC
// thread while the engine works on it. The engine's update callback, on the engine thread,
// builds each reply message and starts its write. While a GenerateStream write is in flight,
// updates queue up, and the write's completion sends everything queued as one message, so a
// stream lagging behind the engine sends fewer, larger messages. The other RPCs are synchronous
// and run on gRPC's thread pool (--max-threads).
class W8A8ServeService final
    : public w8a8serve::v1::W8A8Serve::WithCallbackMethod_Generate<
          w8a8serve::v1::W8A8Serve::WithCallbackMethod_GenerateStream<
              w8a8serve::v1::W8A8Serve::Service>> {
 public:
  W8A8ServeService(const ServingGate& gate, const Authorizer& authorizer,
                   std::shared_ptr<ServerMetrics> metrics, ServiceOptions options);

  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context,
                                     const w8a8serve::v1::GenerateRequest* request,
                                     w8a8serve::v1::GenerateResponse* response) override;
  grpc::ServerWriteReactor<w8a8serve::v1::GenerateStreamResponse>* GenerateStream(
      grpc::CallbackServerContext* context,
      const w8a8serve::v1::GenerateRequest* request) override;
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
  // A validated generation request and the host it runs on.
  struct AdmittedGeneration {
    std::shared_ptr<ModelHost> host;
    GenerationRequest request;
  };

  // Checks the request id, the caller's token and the request, and acquires the host. Sets
  // `request_id` (the client's, or a new one when it sent none or an invalid one) and sends it
  // as x-request-id initial metadata. Rejections are counted and logged.
  absl::StatusOr<AdmittedGeneration> AdmitGeneration(grpc::CallbackServerContext& context,
                                                     const w8a8serve::v1::GenerateRequest& request,
                                                     std::string& request_id) const;
  // Submits the request to the engine with `call`'s callback. When the engine rejects it,
  // counts and logs the rejection and ends `call` with the error.
  void StartGeneration(AdmittedGeneration admitted, const std::string& request_id,
                       GenerationCall& call) const;
  static GenerationCallInfo CallInfo(const AdmittedGeneration& admitted,
                                     const std::string& request_id,
                                     const w8a8serve::v1::GenerateRequest& request);
  // Counts and logs a rejected generation request, and returns `status`.
  absl::Status RejectGeneration(const std::string& request_id, absl::Status status) const;
  absl::StatusOr<std::shared_ptr<ModelHost>> AcquireForInference(
      const grpc::ServerContextBase& context) const;

  const ServingGate& gate_;
  const Authorizer& authorizer_;
  std::shared_ptr<ServerMetrics> metrics_;
  ServiceOptions options_;
  int64_t stream_interval_;  // options_.stream_interval, at least 1.
};

}  // namespace w8a8::server
