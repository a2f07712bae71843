// Paths and temporary files shared by the test suites.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

namespace w8a8::testing {

// The folder of shared model files: $W8A8_MODELS_DIR, else ../shared/models beside the source.
inline std::filesystem::path ModelsDir() {
  if (const char* dir = std::getenv("W8A8_MODELS_DIR"); dir != nullptr && *dir != '\0') {
    return dir;
  }
  return std::filesystem::path(W8A8_SOURCE_DIR).parent_path() / "shared" / "models";
}

inline std::filesystem::path Stories260KDir() { return ModelsDir() / "stories260K"; }
inline std::filesystem::path Stories260KGguf() { return Stories260KDir() / "stories260K.gguf"; }

inline std::filesystem::path SourceDir() { return W8A8_SOURCE_DIR; }
inline std::filesystem::path BinaryDir() { return W8A8_BINARY_DIR; }
// The built `w8a8` tool.
inline std::filesystem::path W8a8Tool() { return BinaryDir() / "tools" / "w8a8"; }

// A fresh directory under the system temp dir, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir() {
    std::random_device random;
    path_ = std::filesystem::temp_directory_path() /
            ("w8a8-test-" + std::to_string(::getpid()) + "-" + std::to_string(random()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

inline std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void WriteFile(const std::filesystem::path& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary);
  out << contents;
}

struct CommandResult {
  int exit_code = -1;  // -1 when the command could not start or did not exit normally.
  std::string output;  // Standard output.
};

// Runs `command` with /bin/sh and waits for it.
inline CommandResult RunShellCommand(const std::string& command) {
  CommandResult result;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return result;
  std::array<char, 4096> buffer;
  size_t read = 0;
  while ((read = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0) {
    result.output.append(buffer.data(), read);
  }
  const int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

// The streams of the w8a8 tool that RunW8a8Tool returns.
enum class ToolOutput { kStdout, kStdoutAndStderr };

// Runs the w8a8 tool with `arguments` (shell syntax) and waits for it. OpenMP threads sleep
// when idle, as in the test script, so tests running in parallel do not starve each other.
inline CommandResult RunW8a8Tool(const std::string& arguments,
                                 ToolOutput output = ToolOutput::kStdoutAndStderr) {
  return RunShellCommand("OMP_WAIT_POLICY=passive " + W8a8Tool().string() + " " + arguments +
                         (output == ToolOutput::kStdout ? " 2>/dev/null" : " 2>&1"));
}

}  // namespace w8a8::testing
