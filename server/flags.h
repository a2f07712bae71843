// Command-line flags of w8a8-server and their environment variables.
//
// Every flag can also be set by an environment variable W8A8_<FLAG> with the name upper-cased
// (--max-running is W8A8_MAX_RUNNING). A flag on the command line beats the environment, which
// beats the default.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/server.h"

namespace w8a8::server {

// The names of the server's flags, as Abseil spells them ("max_running").
const std::vector<std::string>& ServerFlagNames();

// Returns the environment variable of a flag: "max_running" -> "W8A8_MAX_RUNNING".
std::string EnvironmentVariableForFlag(const std::string& flag_name);

// Sets every server flag whose environment variable is set. Call before parsing the command
// line, so the command line overrides these values. Errors name the variable and its value.
absl::Status ApplyEnvironmentToFlags();

// Builds the options from the current flag values; errors name the flag at fault.
absl::StatusOr<ServerOptions> ServerOptionsFromFlags();

}  // namespace w8a8::server
