// The w8a8-server process without its command line: listeners, TLS, health, reflection,
// metrics exposer, model loading and graceful shutdown.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/server.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"
#include "server/auth.h"
#include "server/metrics.h"
#include "server/model_host.h"
#include "server/service.h"

namespace w8a8::server {

struct ServerOptions {
  ModelHostOptions host;
  std::string listen_host = "0.0.0.0";
  int port = 50051;          // 0 picks a free port.
  int metrics_port = 9090;   // 0 picks a free port; -1 disables the exposer.
  std::string metrics_host;  // Empty binds the exposer to listen_host.
  int admin_port = 50052;    // Bound to 127.0.0.1; 0 picks a free port; -1 disables.

  std::string api_token;    // Bearer token for inference RPCs; empty serves everyone.
  std::string admin_token;  // Bearer token for admin RPCs; empty serves them on the admin port.
  std::string tls_cert;     // PEM file of the server certificate chain; empty is plaintext.
  std::string tls_key;      // PEM file of its private key.
  std::string tls_client_ca;  // PEM file of CAs that client certificates must chain to.

  RequestLimits limits;
  int64_t stream_interval = 1;          // Generated tokens per GenerateStream message.
  int64_t max_message_bytes = 4 << 20;  // Largest request message accepted.
  int max_concurrent_streams = 100;     // Per HTTP/2 connection.
  // gRPC threads of the synchronous RPCs (not Generate or GenerateStream); calls beyond get
  // RESOURCE_EXHAUSTED.
  int max_threads = 512;
};

// Thread safety: Start, LoadModel and Shutdown are called from one thread (main); the
// accessors from any thread.
class Server {
 public:
  // Binds the listeners and starts serving health checks (NOT_SERVING) and RPCs (UNAVAILABLE
  // until LoadModel finishes). Errors name the address, port or file at fault.
  static absl::StatusOr<std::unique_ptr<Server>> Start(
      const ServerOptions& options, std::shared_ptr<prometheus::Registry> registry);

  // Stops immediately (no grace period) when Shutdown was not called.
  ~Server();

  // Loads the checkpoint and builds the model; health turns SERVING on success. Blocks for the
  // whole load.
  absl::Status LoadModel();

  // Graceful stop: health NOT_SERVING, new requests get UNAVAILABLE, running and queued
  // requests get up to `grace` to finish and are then ended with UNAVAILABLE, and the listeners
  // close. Blocks until done.
  // NOTE: an UpdateQuantizationConfig call with `wait` keeps its handler, and so this method,
  // busy until the re-quantization ends, which the grace period does not bound.
  void Shutdown(absl::Duration grace);

  int port() const { return port_; }
  int admin_port() const { return admin_port_; }
  int metrics_port() const { return metrics_port_; }
  // The loaded host, or null before LoadModel and after Shutdown.
  std::shared_ptr<ModelHost> host() const { return gate_.host(); }

 private:
  Server() = default;
  void SetHealth(bool serving);
  void OnUpdateFinished(const UpdateStatus& status);

  ServerOptions options_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<ServerMetrics> metrics_;
  std::unique_ptr<Authorizer> authorizer_;
  ServingGate gate_;
  std::unique_ptr<W8A8ServeService> service_;
  std::unique_ptr<W8A8ServeService> admin_service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::Server> admin_server_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
  int admin_port_ = -1;
  int metrics_port_ = -1;
  std::mutex health_mutex_;
  bool shut_down_ = false;
};

}  // namespace w8a8::server
