// Channel and per-call settings shared by the w8a8-client commands.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"

namespace w8a8::client {

struct ConnectionOptions {
  std::string address = "127.0.0.1:50051";
  std::string token;        // Bearer token sent as "authorization" metadata; empty sends none.
  std::string tls_ca;       // PEM file of CAs to verify the server with; empty is plaintext.
  std::string tls_cert;     // PEM client certificate chain, for servers that require one.
  std::string tls_key;      // PEM private key of that certificate.
  std::string tls_server_name;  // Overrides the name checked against the server certificate.
  double timeout_seconds = 0;   // Deadline of each call; 0 sets none.
};

// Creates the channel; errors name the file that could not be read.
absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateChannel(const ConnectionOptions& options);

// Returns the canonical name of a gRPC status code ("INVALID_ARGUMENT").
const char* StatusCodeName(grpc::StatusCode code);

// Applies the token and the deadline to `context`.
void PrepareContext(const ConnectionOptions& options, grpc::ClientContext& context);

}  // namespace w8a8::client
