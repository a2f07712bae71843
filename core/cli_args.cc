#include "core/cli_args.h"

namespace w8a8 {

std::vector<std::string> NormalizeFlagNames(int argc, char** argv) {
  std::vector<std::string> args;
  args.reserve(argc);
  bool after_separator = false;
  for (int i = 0; i < argc; ++i) {
    std::string arg = argv[i];
    if (i > 0 && !after_separator && arg == "--") {
      after_separator = true;
    } else if (i > 0 && !after_separator && arg.size() > 2 && arg[0] == '-') {
      const size_t name_begin = arg[1] == '-' ? 2 : 1;
      const size_t name_end = arg.find('=') == std::string::npos ? arg.size() : arg.find('=');
      for (size_t j = name_begin; j < name_end; ++j) {
        if (arg[j] == '-') arg[j] = '_';
      }
    }
    args.push_back(std::move(arg));
  }
  return args;
}

std::vector<char*> ToArgv(std::vector<std::string>& args) {
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (std::string& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  return argv;
}

}  // namespace w8a8
