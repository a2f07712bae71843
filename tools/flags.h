// Flags of the `w8a8` tool. All live in flags.cc because several commands share names such as
// --model; a flag that a command does not use is ignored by it.
#pragma once

#include <cstdint>
#include <string>

#include "absl/flags/declare.h"

ABSL_DECLARE_FLAG(std::string, model);
ABSL_DECLARE_FLAG(std::string, out);
ABSL_DECLARE_FLAG(bool, json);
ABSL_DECLARE_FLAG(uint64_t, seed);
ABSL_DECLARE_FLAG(int32_t, threads);
ABSL_DECLARE_FLAG(std::string, log_level);
ABSL_DECLARE_FLAG(std::string, plans);

namespace w8a8::tools {

// The value of --plans, or `fallback` when it is empty: eval and bench default to different
// lists.
std::string PlansOrDefault(const std::string& fallback);

}  // namespace w8a8::tools
