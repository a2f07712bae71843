// Conversion of the project's absl::Status errors to gRPC status codes.
#pragma once

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace w8a8::server {

// Returns the gRPC status with the same code and message. absl::StatusCode and grpc::StatusCode
// share their numbering (both follow google.rpc.Code); a code outside that range, which only a
// bug produces, becomes INTERNAL.
grpc::Status ToGrpcStatus(const absl::Status& status);

// The reverse, for code that calls gRPC and reports absl::Status.
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace w8a8::server
