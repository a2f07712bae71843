// File helpers of the `w8a8` tool.
#pragma once

#include <fstream>
#include <sstream>
#include <string>

#include "absl/status/statusor.h"

namespace w8a8::tools {

// Reads a whole file; the error names the path.
inline absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError("cannot open " + path + ": check the path");
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

}  // namespace w8a8::tools
