// Command-line helpers shared by the binaries.
#pragma once

#include <string>
#include <vector>

namespace w8a8 {

// Abseil flag names cannot contain '-', while users type `--max-tokens` as in vLLM and
// llama.cpp. Returns argv with dashes in flag names turned into underscores, so
// "--max-tokens=5" becomes "--max_tokens=5". Values, positional arguments and everything after
// a bare "--" are unchanged.
std::vector<std::string> NormalizeFlagNames(int argc, char** argv);

// Views of `args` as a mutable argv array for absl::ParseCommandLine; the strings must outlive it.
std::vector<char*> ToArgv(std::vector<std::string>& args);

}  // namespace w8a8
