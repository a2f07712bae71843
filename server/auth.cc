#include "server/auth.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"

namespace w8a8::server {

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  // Every byte of the longer string is visited, and the length difference is folded into the
  // result, so the loop never exits early.
  const size_t length = std::max(a.size(), b.size());
  unsigned char difference = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < length; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    difference |= static_cast<unsigned char>(x ^ y);
  }
  return difference == 0;
}

std::string_view BearerToken(const grpc::ServerContextBase& context) {
  const auto& metadata = context.client_metadata();
  const auto entry = metadata.find("authorization");
  if (entry == metadata.end()) return {};
  std::string_view value(entry->second.data(), entry->second.size());
  constexpr std::string_view kScheme = "Bearer ";
  if (value.size() < kScheme.size()) return {};
  // The scheme name is case-insensitive (RFC 7235).
  for (size_t i = 0; i < kScheme.size(); ++i) {
    if (absl::ascii_tolower(static_cast<unsigned char>(value[i])) !=
        absl::ascii_tolower(static_cast<unsigned char>(kScheme[i]))) {
      return {};
    }
  }
  std::string_view token = value.substr(kScheme.size());
  while (!token.empty() && absl::ascii_isspace(static_cast<unsigned char>(token.front()))) {
    token.remove_prefix(1);
  }
  while (!token.empty() && absl::ascii_isspace(static_cast<unsigned char>(token.back()))) {
    token.remove_suffix(1);
  }
  return token;
}

Authorizer::Authorizer(std::string api_token, std::string admin_token)
    : api_token_(std::move(api_token)), admin_token_(std::move(admin_token)) {}

absl::Status Authorizer::CheckInference(const grpc::ServerContextBase& context) const {
  if (api_token_.empty()) return absl::OkStatus();
  const std::string_view token = BearerToken(context);
  if (token.empty()) {
    return absl::UnauthenticatedError(
        "missing bearer token: send metadata 'authorization: Bearer <token>' with the server's "
        "API token");
  }
  const bool api_match = ConstantTimeEquals(token, api_token_);
  const bool admin_match = !admin_token_.empty() && ConstantTimeEquals(token, admin_token_);
  if (!api_match && !admin_match) {
    return absl::UnauthenticatedError("invalid bearer token: the token does not match the "
                                      "server's API token");
  }
  return absl::OkStatus();
}

absl::Status Authorizer::CheckAdmin(const grpc::ServerContextBase& context,
                                    bool on_admin_listener) const {
  if (admin_token_.empty()) {
    if (on_admin_listener) return absl::OkStatus();
    return absl::PermissionDeniedError(
        "admin RPCs are served only on the admin listener (127.0.0.1, --admin-port) because the "
        "server has no --admin-token");
  }
  const std::string_view token = BearerToken(context);
  if (token.empty()) {
    return absl::PermissionDeniedError(
        "admin RPC without a bearer token: send metadata 'authorization: Bearer <admin token>'");
  }
  if (!ConstantTimeEquals(token, admin_token_)) {
    return absl::PermissionDeniedError("invalid admin bearer token");
  }
  return absl::OkStatus();
}

}  // namespace w8a8::server
