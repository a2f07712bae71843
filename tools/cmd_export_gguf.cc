// `w8a8 export-gguf`: writes a checkpoint as a GGUF file that llama.cpp loads.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/str_join.h"
#include "core/checkpoint.h"
#include "core/gguf_writer.h"
#include "tools/command.h"
#include "tools/flags.h"

ABSL_DECLARE_FLAG(std::string, outtype);

namespace w8a8::tools {
namespace {

int Fail(const std::string& message) {
  std::fprintf(stderr, "w8a8 export-gguf: %s\n", message.c_str());
  return 1;
}

int RunExportGguf(const std::vector<std::string>& args) {
  const std::string model_path = absl::GetFlag(FLAGS_model);
  const std::string out = absl::GetFlag(FLAGS_out);
  if (!args.empty()) return Fail("unexpected argument '" + args[0] + "'.");
  if (model_path.empty()) {
    return Fail("--model is missing; give a Hugging Face checkpoint directory or a .gguf file.");
  }
  if (out.empty()) return Fail("--out is missing; give the GGUF file to write, e.g. model.gguf.");
  const absl::StatusOr<GgufOutType> out_type = ParseGgufOutType(absl::GetFlag(FLAGS_outtype));
  if (!out_type.ok()) return Fail(std::string(out_type.status().message()) + " (--outtype).");
  std::error_code error;
  if (!std::filesystem::exists(model_path, error)) {
    return Fail("model " + model_path +
                " not found; give a Hugging Face checkpoint directory or a .gguf file.");
  }

  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(model_path);
  if (!checkpoint.ok()) return Fail(std::string(checkpoint.status().message()));
  GgufExportOptions options;
  options.out_type = *out_type;
  const absl::StatusOr<GgufExportSummary> summary = ExportGguf(**checkpoint, out, options);
  if (!summary.ok()) return Fail(std::string(summary.status().message()));

  std::printf("wrote %s: %lld tensors, %.1f MiB, %s\n", out.c_str(),
              static_cast<long long>(summary->tensor_count),
              static_cast<double>(summary->file_bytes) / (1 << 20),
              std::string(GgufOutTypeName(*out_type)).c_str());
  if (!summary->q8_0_fallbacks.empty()) {
    std::printf("written as F16 because their rows are not a multiple of 32: %s\n",
                absl::StrJoin(summary->q8_0_fallbacks, ", ").c_str());
  }
  return 0;
}

}  // namespace

W8A8_COMMAND("export-gguf",
             "Write a GGUF file for llama.cpp: export-gguf --model DIR --out FILE.gguf "
             "[--outtype f32|f16|bf16|q8_0]",
             RunExportGguf);

}  // namespace w8a8::tools
