#include "server/server.h"

#include <chrono>
#include <exception>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status_macros.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/resource_quota.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "spdlog/spdlog.h"

namespace w8a8::server {
namespace {

constexpr char kServiceName[] = "w8a8serve.v1.W8A8Serve";
// Time the listeners give calls other than generation (which the engine drain ends) to return.
constexpr auto kListenerShutdownTimeout = std::chrono::seconds(2);

absl::StatusOr<std::string> ReadPemFile(const std::string& path, const char* flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read ", flag, " file '", path, "': check the path and permissions"));
  }
  std::stringstream contents;
  contents << in.rdbuf();
  if (contents.str().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " file '", path, "' is empty"));
  }
  return contents.str();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeCredentials(
    const ServerOptions& options) {
  if (options.tls_cert.empty() && options.tls_key.empty()) {
    if (!options.tls_client_ca.empty()) {
      return absl::InvalidArgumentError(
          "--tls-client-ca requires TLS: set --tls-cert and --tls-key as well");
    }
    return grpc::InsecureServerCredentials();
  }
  if (options.tls_cert.empty() || options.tls_key.empty()) {
    return absl::InvalidArgumentError("TLS needs both --tls-cert and --tls-key");
  }
  grpc::SslServerCredentialsOptions ssl;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  ASSIGN_OR_RETURN(pair.cert_chain, ReadPemFile(options.tls_cert, "--tls-cert"));
  ASSIGN_OR_RETURN(pair.private_key, ReadPemFile(options.tls_key, "--tls-key"));
  ssl.pem_key_cert_pairs.push_back(std::move(pair));
  if (!options.tls_client_ca.empty()) {
    ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPemFile(options.tls_client_ca, "--tls-client-ca"));
    ssl.client_certificate_request =
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

std::string HostPort(const std::string& host, int port) {
  if (host.find(':') != std::string::npos && host.front() != '[') {
    return absl::StrCat("[", host, "]:", port);
  }
  return absl::StrCat(host, ":", port);
}

// Builds and starts one gRPC listener; returns the bound port in `bound_port`.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartListener(
    const std::string& address, std::shared_ptr<grpc::ServerCredentials> credentials,
    grpc::Service* service, const ServerOptions& options, int& bound_port) {
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, std::move(credentials), &bound_port);
  builder.RegisterService(service);
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, options.max_concurrent_streams);
  grpc::ResourceQuota quota("w8a8-server");
  quota.SetMaxThreads(options.max_threads);
  builder.SetResourceQuota(quota);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || bound_port == 0) {
    return absl::UnavailableError(absl::StrCat(
        "failed to listen on ", address,
        ": the port is in use or the address is not local; choose another --host or port"));
  }
  return server;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(
    const ServerOptions& options, std::shared_ptr<prometheus::Registry> registry) {
  if (options.host.model_path.empty()) {
    return absl::InvalidArgumentError("--model is required: pass a checkpoint directory or a "
                                      ".gguf file");
  }
  std::unique_ptr<Server> server(new Server());
  server->options_ = options;
  server->registry_ = std::move(registry);
  server->metrics_ = std::make_shared<ServerMetrics>(*server->registry_);
  server->authorizer_ = std::make_unique<Authorizer>(options.api_token, options.admin_token);

  ServiceOptions service_options{options.limits, /*admin_listener=*/false};
  service_options.stream_interval = options.stream_interval;
  server->service_ = std::make_unique<W8A8ServeService>(server->gate_, *server->authorizer_,
                                                        server->metrics_, service_options);
  service_options.admin_listener = true;
  server->admin_service_ = std::make_unique<W8A8ServeService>(
      server->gate_, *server->authorizer_, server->metrics_, service_options);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials,
                   MakeCredentials(options));

  ASSIGN_OR_RETURN(server->server_,
                   StartListener(HostPort(options.listen_host, options.port), credentials,
                                 server->service_.get(), options, server->port_));
  if (options.admin_port >= 0) {
    ASSIGN_OR_RETURN(server->admin_server_,
                     StartListener(HostPort("127.0.0.1", options.admin_port), credentials,
                                   server->admin_service_.get(), options, server->admin_port_));
  }
  server->SetHealth(false);

  if (options.metrics_port >= 0) {
    const std::string metrics_address = HostPort(
        options.metrics_host.empty() ? options.listen_host : options.metrics_host,
        options.metrics_port);
    try {
      server->exposer_ = std::make_unique<prometheus::Exposer>(metrics_address, 1);
    } catch (const std::exception& error) {
      return absl::UnavailableError(absl::StrCat("failed to serve metrics on ", metrics_address,
                                                 ": ", error.what(),
                                                 "; choose another --metrics-port"));
    }
    server->exposer_->RegisterCollectable(server->registry_);
    const std::vector<int> ports = server->exposer_->GetListeningPorts();
    server->metrics_port_ = ports.empty() ? options.metrics_port : ports.front();
  }

  spdlog::info("listening on {} (gRPC, {}), admin {}, metrics {}; inference token {}, admin "
               "token {}",
               HostPort(options.listen_host, server->port_),
               options.tls_cert.empty() ? "plaintext"
                                        : (options.tls_client_ca.empty() ? "TLS" : "mutual TLS"),
               server->admin_port_ >= 0 ? HostPort("127.0.0.1", server->admin_port_) : "off",
               server->metrics_port_ >= 0 ? absl::StrCat(":", server->metrics_port_, "/metrics")
                                          : "off",
               options.api_token.empty() ? "off" : "on",
               options.admin_token.empty() ? "off" : "on");
  return server;
}

Server::~Server() { Shutdown(absl::ZeroDuration()); }

absl::Status Server::LoadModel() {
  ModelHostOptions host_options = options_.host;
  auto on_update = [this](const UpdateStatus& status) { OnUpdateFinished(status); };
  absl::StatusOr<std::unique_ptr<ModelHost>> host =
      ModelHost::Load(host_options, metrics_, on_update);
  if (!host.ok()) {
    spdlog::error("loading {} failed: {}", options_.host.model_path, host.status().ToString());
    return host.status();
  }
  const EngineOptions& engine = (*host)->engine().options();
  spdlog::info("engine: max running {}, max batch tokens {}, max queue {}, KV cache {} MiB, "
               "context {} tokens",
               engine.max_running_sequences, engine.max_batch_tokens, engine.max_queued_requests,
               engine.kv_cache_bytes >> 20, engine.max_context);
  gate_.Open(std::shared_ptr<ModelHost>(std::move(*host)));
  SetHealth(true);
  return absl::OkStatus();
}

void Server::SetHealth(bool serving) {
  std::lock_guard<std::mutex> lock(health_mutex_);
  if (shut_down_) serving = false;
  for (grpc::Server* listener : {server_.get(), admin_server_.get()}) {
    if (listener == nullptr || listener->GetHealthCheckService() == nullptr) continue;
    listener->GetHealthCheckService()->SetServingStatus(serving);
    listener->GetHealthCheckService()->SetServingStatus(kServiceName, serving);
  }
}

void Server::OnUpdateFinished(const UpdateStatus& status) {
  // A failed re-quantization keeps the old model serving but reports NOT_SERVING, so an
  // operator or orchestrator notices; the next successful update restores SERVING.
  SetHealth(status.state != UpdateState::kFailed);
}

void Server::Shutdown(absl::Duration grace) {
  {
    std::lock_guard<std::mutex> lock(health_mutex_);
    if (shut_down_) return;
  }
  SetHealth(false);
  {
    std::lock_guard<std::mutex> lock(health_mutex_);
    shut_down_ = true;
  }
  gate_.Close();
  std::shared_ptr<ModelHost> host = gate_.host();
  if (host != nullptr) {
    const EngineStats stats = host->engine().Stats();
    spdlog::info("draining: {} running and {} waiting requests, grace period {}", stats.running,
                 stats.waiting, absl::FormatDuration(grace));
    host->engine().Drain(grace);
  }
  const auto deadline = std::chrono::system_clock::now() + kListenerShutdownTimeout;
  for (grpc::Server* listener : {server_.get(), admin_server_.get()}) {
    if (listener == nullptr) continue;
    if (listener->GetHealthCheckService() != nullptr) {
      listener->GetHealthCheckService()->Shutdown();
    }
    listener->Shutdown(deadline);
  }
  host.reset();
  gate_.Release();
  exposer_.reset();
  spdlog::info("server stopped");
}

}  // namespace w8a8::server
