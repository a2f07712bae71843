// `w8a8 quantize`: writes a W8A8 checkpoint in the compressed-tensors format.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "core/checkpoint.h"
#include "core/compressed_tensors.h"
#include "core/quantization.h"
#include "tools/command.h"
#include "tools/flags.h"

ABSL_DECLARE_FLAG(std::string, plan);

namespace w8a8::tools {
namespace {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "w8a8 quantize: %s\n", std::string(status.message()).c_str());
  return 1;
}

int RunQuantize(const std::vector<std::string>& args) {
  const std::string model_path = absl::GetFlag(FLAGS_model);
  const std::string out = absl::GetFlag(FLAGS_out);
  const std::string plan_argument = absl::GetFlag(FLAGS_plan);
  if (model_path.empty()) {
    return Fail(absl::InvalidArgumentError(
        "--model is missing; give a checkpoint directory or a .gguf file"));
  }
  if (out.empty()) {
    return Fail(absl::InvalidArgumentError("--out is missing; give the output directory"));
  }
  if (plan_argument.empty() || plan_argument == "fp32") {
    return Fail(absl::InvalidArgumentError(
        "--plan is missing or fp32; pass auto, per-channel, per-group, per-tensor, or a plan "
        "or config file"));
  }
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(model_path);
  if (!checkpoint.ok()) return Fail(checkpoint.status());
  absl::StatusOr<QuantPlan> plan = ResolvePlan(**checkpoint, plan_argument);
  if (!plan.ok()) return Fail(plan.status());
  const absl::Status written = WriteCompressedTensors(**checkpoint, *plan, out);
  if (!written.ok()) return Fail(written);
  std::printf("wrote %s: %lld per-channel, %lld per-group, %lld per-tensor, %lld fp layers\n",
              out.c_str(), static_cast<long long>(plan->CountScheme(WeightScheme::kPerChannel)),
              static_cast<long long>(plan->CountScheme(WeightScheme::kPerGroup)),
              static_cast<long long>(plan->CountScheme(WeightScheme::kPerTensor)),
              static_cast<long long>(plan->CountScheme(WeightScheme::kFp)));
  return 0;
}

}  // namespace

W8A8_COMMAND("quantize",
             "Write a W8A8 compressed-tensors checkpoint: quantize --model PATH "
             "--plan auto|per-channel|per-group|FILE --out DIR",
             RunQuantize);

}  // namespace w8a8::tools
