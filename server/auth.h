// Bearer-token checks for inference and admin RPCs.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "grpcpp/server_context.h"

namespace w8a8::server {

// Compares two strings in time that depends only on their lengths, not on where they differ,
// so a caller cannot guess a token byte by byte from response times.
bool ConstantTimeEquals(std::string_view a, std::string_view b);

// Returns the token of an "authorization: Bearer <token>" metadata entry, or an empty view when
// the entry is missing or uses another scheme. The view points into `context`.
std::string_view BearerToken(const grpc::ServerContextBase& context);

// Access rules of inference and admin RPCs. Immutable after construction, so safe to share
// between threads.
class Authorizer {
 public:
  // Empty tokens disable the check they guard: an empty `api_token` serves inference RPCs to
  // everyone, an empty `admin_token` serves admin RPCs only on the admin listener.
  Authorizer(std::string api_token, std::string admin_token);

  // OK when inference RPCs are open or the caller sent the API token (the admin token is
  // accepted too); UNAUTHENTICATED otherwise.
  absl::Status CheckInference(const grpc::ServerContextBase& context) const;

  // OK when the caller sent the admin token, or when no admin token is configured and the call
  // arrived on the admin listener (`on_admin_listener`); PERMISSION_DENIED otherwise.
  absl::Status CheckAdmin(const grpc::ServerContextBase& context, bool on_admin_listener) const;

  bool has_admin_token() const { return !admin_token_.empty(); }

 private:
  std::string api_token_;
  std::string admin_token_;
};

}  // namespace w8a8::server
