#include "server/grpc_status.h"

#include <string>

namespace w8a8::server {
namespace {

constexpr int kMaxStatusCode = static_cast<int>(grpc::StatusCode::UNAUTHENTICATED);

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const int code = static_cast<int>(status.code());
  if (code <= 0 || code > kMaxStatusCode) {
    return grpc::Status(grpc::StatusCode::INTERNAL,
                        "unknown status code " + std::to_string(code) + ": " +
                            std::string(status.message()));
  }
  return grpc::Status(static_cast<grpc::StatusCode>(code), std::string(status.message()));
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  const int code = static_cast<int>(status.error_code());
  if (code <= 0 || code > kMaxStatusCode) {
    return absl::InternalError("unknown gRPC status code " + std::to_string(code) + ": " +
                               status.error_message());
  }
  return absl::Status(static_cast<absl::StatusCode>(code), status.error_message());
}

}  // namespace w8a8::server
