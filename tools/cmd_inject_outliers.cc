// `w8a8 inject-outliers`: a labelled synthetic copy of a model with outlier weights.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/str_join.h"
#include "core/checkpoint.h"
#include "core/outliers.h"
#include "tools/command.h"
#include "tools/flags.h"

ABSL_DECLARE_FLAG(std::string, layers);
ABSL_DECLARE_FLAG(double, factor);
ABSL_DECLARE_FLAG(int64_t, outliers_per_row);

namespace w8a8::tools {
namespace {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "w8a8 inject-outliers: %s\n", std::string(status.message()).c_str());
  return 1;
}

int RunInjectOutliers(const std::vector<std::string>& args) {
  const std::string model_path = absl::GetFlag(FLAGS_model);
  const std::string out = absl::GetFlag(FLAGS_out);
  if (model_path.empty()) {
    return Fail(absl::InvalidArgumentError(
        "--model is missing; give a checkpoint directory or a .gguf file"));
  }
  if (out.empty()) {
    return Fail(absl::InvalidArgumentError("--out is missing; give the output directory"));
  }
  OutlierOptions options;
  options.factor = absl::GetFlag(FLAGS_factor);
  options.per_row = absl::GetFlag(FLAGS_outliers_per_row);
  options.seed = absl::GetFlag(FLAGS_seed);
  if (const absl::Status parsed = ParseOutlierLayers(absl::GetFlag(FLAGS_layers), options);
      !parsed.ok()) {
    return Fail(parsed);
  }
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(model_path);
  if (!checkpoint.ok()) return Fail(checkpoint.status());
  absl::StatusOr<std::vector<std::string>> modified = InjectOutliers(**checkpoint, options, out);
  if (!modified.ok()) return Fail(modified.status());
  std::printf("wrote synthetic model %s with outliers in %s\n", out.c_str(),
              absl::StrJoin(*modified, ", ").c_str());
  return 0;
}

}  // namespace

W8A8_COMMAND("inject-outliers",
             "Copy a model with outlier weights in a few layers (synthetic, labelled): "
             "inject-outliers --model SRC --out DIR --layers N|NAMES [--factor 100] [--seed S]",
             RunInjectOutliers);

}  // namespace w8a8::tools
