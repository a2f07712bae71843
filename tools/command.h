// Subcommands of the `w8a8` offline tool. Each command lives in its own tools/cmd_*.cc file
// and registers itself with W8A8_COMMAND.
#pragma once

#include <string>
#include <vector>

namespace w8a8::tools {

// Runs a subcommand after Abseil has parsed the flags. `args` contains the positional arguments
// after the command name. Returns the process exit code.
using CommandFunction = int (*)(const std::vector<std::string>& args);

struct Command {
  const char* name;
  const char* summary;  // One line for `w8a8 --help`.
  CommandFunction run;
};

bool RegisterCommand(const Command& command);
const std::vector<Command>& Commands();

}  // namespace w8a8::tools

#define W8A8_COMMAND(name, summary, function)                                      \
  static const bool w8a8_command_registered_##function =                           \
      ::w8a8::tools::RegisterCommand({name, summary, function})
