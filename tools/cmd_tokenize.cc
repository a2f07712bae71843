// `w8a8 tokenize`: reads text from standard input and prints its token ids as a JSON array.
#include <cstdio>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "core/tokenizer.h"
#include "nlohmann/json.hpp"
#include "tools/command.h"
#include "tools/flags.h"

ABSL_DECLARE_FLAG(bool, special);

namespace w8a8::tools {
namespace {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "w8a8 tokenize: %s\n", std::string(status.message()).c_str());
  return 1;
}

int RunTokenize(const std::vector<std::string>& args) {
  if (!args.empty()) {
    return Fail(absl::InvalidArgumentError(
        "unexpected argument \"" + args[0] + "\"; pass the text on standard input"));
  }
  const std::string model_path = absl::GetFlag(FLAGS_model);
  if (model_path.empty()) {
    return Fail(absl::InvalidArgumentError(
        "--model is missing; give a checkpoint directory, a .gguf file, a tokenizer.json or a "
        "tokenizer.model"));
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromPath(model_path);
  if (!tokenizer.ok()) return Fail(tokenizer.status());

  const std::string text(std::istreambuf_iterator<char>(std::cin), {});
  if (std::cin.bad()) {
    return Fail(absl::DataLossError("reading standard input failed"));
  }
  const std::vector<int32_t> ids =
      (*tokenizer)->Encode(text, (*tokenizer)->adds_bos(), absl::GetFlag(FLAGS_special));
  std::printf("%s\n", nlohmann::json(ids).dump().c_str());
  return 0;
}

}  // namespace

W8A8_COMMAND("tokenize",
             "Print the token ids of standard input as a JSON array (--model, --special).",
             RunTokenize);

}  // namespace w8a8::tools
