// Early-return helpers for absl::Status and absl::StatusOr.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define W8A8_CONCAT_INNER(a, b) a##b
#define W8A8_CONCAT(a, b) W8A8_CONCAT_INNER(a, b)

// Returns from the enclosing function when `expr` yields a non-OK absl::Status.
#define RETURN_IF_ERROR(expr)                        \
  do {                                               \
    if (::absl::Status w8a8_status_ = (expr); !w8a8_status_.ok()) { \
      return w8a8_status_;                           \
    }                                                \
  } while (0)

// Declares or assigns `lhs` from an absl::StatusOr, returning its status on error.
#define ASSIGN_OR_RETURN(lhs, expr) \
  W8A8_ASSIGN_OR_RETURN_IMPL(W8A8_CONCAT(w8a8_statusor_, __LINE__), lhs, expr)

#define W8A8_ASSIGN_OR_RETURN_IMPL(statusor, lhs, expr) \
  auto statusor = (expr);                               \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()
