// The `w8a8` offline tool: w8a8 COMMAND [--flags...].

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "core/cli_args.h"
#include "kernels/threads.h"
#include "spdlog/spdlog.h"
#include "tools/command.h"
#include "tools/flags.h"

namespace w8a8::tools {
namespace {

std::vector<Command>& Registry() {
  static auto* registry = new std::vector<Command>();
  return *registry;
}

std::string UsageText() {
  std::string text = "Usage: w8a8 COMMAND [--flag=value ...]\n\nCommands:\n";
  std::vector<Command> sorted = Commands();
  std::sort(sorted.begin(), sorted.end(),
            [](const Command& a, const Command& b) { return std::string(a.name) < b.name; });
  for (const Command& command : sorted) {
    absl::StrAppend(&text, "  ", command.name, std::string(14 - std::min<size_t>(13, std::string(command.name).size()), ' '),
                    command.summary, "\n");
  }
  absl::StrAppend(&text, "\nRun `w8a8 COMMAND --help` for the flags.");
  return text;
}

}  // namespace

bool RegisterCommand(const Command& command) {
  Registry().push_back(command);
  return true;
}

const std::vector<Command>& Commands() { return Registry(); }

}  // namespace w8a8::tools

int main(int argc, char** argv) {
  using w8a8::tools::Command;
  absl::SetProgramUsageMessage(w8a8::tools::UsageText());
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" ||
      std::string(argv[1]) == "help") {
    std::printf("%s\n", w8a8::tools::UsageText().c_str());
    return argc < 2 ? 2 : 0;
  }
  const std::string name = argv[1];
  const Command* command = nullptr;
  for (const Command& candidate : w8a8::tools::Commands()) {
    if (name == candidate.name) command = &candidate;
  }
  if (command == nullptr) {
    std::fprintf(stderr, "w8a8: unknown command '%s'. Run `w8a8 --help` for the list.\n",
                 name.c_str());
    return 2;
  }
  // Parse the flags that follow the command name, keeping argv[0] as the program name.
  std::vector<std::string> args = w8a8::NormalizeFlagNames(argc - 1, argv + 1);
  args[0] = std::string(argv[0]) + " " + name;
  std::vector<char*> flag_argv = w8a8::ToArgv(args);
  std::vector<char*> positional =
      absl::ParseCommandLine(static_cast<int>(args.size()), flag_argv.data());
  std::vector<std::string> positional_args(positional.begin() + 1, positional.end());

  spdlog::set_level(spdlog::level::from_str(absl::GetFlag(FLAGS_log_level)));
  w8a8::kernels::SetComputeThreads(absl::GetFlag(FLAGS_threads));
  return command->run(positional_args);
}
