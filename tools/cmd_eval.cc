// `w8a8 eval`: perplexity, quantization fidelity and multiple-choice accuracy of several
// quantization plans of one checkpoint, printed as one table or as JSON.
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/checkpoint.h"
#include "core/eval.h"
#include "core/model.h"
#include "core/quantization.h"
#include "core/tokenizer.h"
#include "nlohmann/json.hpp"
#include "tools/command.h"
#include "tools/flags.h"
#include "tools/file_util.h"

ABSL_DECLARE_FLAG(std::string, plans);
ABSL_DECLARE_FLAG(std::string, text);
ABSL_DECLARE_FLAG(std::vector<std::string>, tasks);
ABSL_DECLARE_FLAG(std::string, fields);
ABSL_DECLARE_FLAG(int64_t, context_length);
ABSL_DECLARE_FLAG(int64_t, stride);

namespace w8a8::tools {
namespace {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "w8a8 eval: %s\n", std::string(status.message()).c_str());
  return 1;
}

struct PlanRun {
  std::string name;
  std::unique_ptr<Model> model;
  int64_t per_channel = 0;
  int64_t per_group = 0;
  int64_t per_tensor = 0;
  int64_t full_precision = 0;
  std::optional<PerplexityResult> perplexity;
  std::optional<FidelityResult> fidelity;
  std::vector<MultipleChoiceResult> tasks;
};

absl::Status LoadPlan(const Checkpoint& checkpoint, PlanRun& run) {
  if (run.name != "fp32") {
    absl::StatusOr<QuantPlan> plan = ResolvePlan(checkpoint, run.name);
    if (!plan.ok()) return plan.status();
    run.per_channel = plan->CountScheme(WeightScheme::kPerChannel);
    run.per_group = plan->CountScheme(WeightScheme::kPerGroup);
    run.per_tensor = plan->CountScheme(WeightScheme::kPerTensor);
    run.full_precision = plan->CountScheme(WeightScheme::kFp);
  }
  absl::StatusOr<LinearFactory> factory = LinearFactoryForPlan(checkpoint, run.name);
  if (!factory.ok()) return factory.status();
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Create(checkpoint, *factory);
  if (!model.ok()) return model.status();
  run.model = std::move(*model);
  return absl::OkStatus();
}

std::string Figure(const std::optional<double>& value, const char* format) {
  return value.has_value() ? absl::StrFormat(format, *value) : std::string("-");
}

int RunEval(const std::vector<std::string>& args) {
  const std::string model_path = absl::GetFlag(FLAGS_model);
  if (model_path.empty()) {
    return Fail(absl::InvalidArgumentError(
        "--model is missing; give a checkpoint directory or a .gguf file"));
  }
  if (!args.empty()) {
    return Fail(absl::InvalidArgumentError("unexpected argument '" + args[0] + "'"));
  }
  const std::string text_path = absl::GetFlag(FLAGS_text);
  const std::vector<std::string> task_paths = absl::GetFlag(FLAGS_tasks);
  if (text_path.empty() && task_paths.empty()) {
    return Fail(absl::InvalidArgumentError(
        "nothing to evaluate: give --text FILE for perplexity and fidelity, --tasks FILE for "
        "multiple-choice accuracy, or both"));
  }
  WindowOptions windows;
  windows.context_length = absl::GetFlag(FLAGS_context_length);
  windows.stride = absl::GetFlag(FLAGS_stride);
  if (absl::Status status = windows.Validate(); !status.ok()) return Fail(status);
  absl::StatusOr<TaskFieldMapping> fields = ParseTaskFieldMapping(absl::GetFlag(FLAGS_fields));
  if (!fields.ok()) return Fail(fields.status());

  std::vector<PlanRun> runs;
  for (absl::string_view name : absl::StrSplit(PlansOrDefault("fp32,per-channel,per-group,auto"), ',',
                                              absl::SkipWhitespace())) {
    PlanRun run;
    run.name = std::string(name);
    runs.push_back(std::move(run));
  }
  if (runs.empty()) return Fail(absl::InvalidArgumentError("--plans is empty"));

  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(model_path);
  if (!checkpoint.ok()) return Fail(checkpoint.status());
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::FromSource((*checkpoint)->tokenizer_source());
  if (!tokenizer.ok()) return Fail(tokenizer.status());

  std::vector<std::vector<MultipleChoiceItem>> tasks;
  for (const std::string& path : task_paths) {
    absl::StatusOr<std::vector<MultipleChoiceItem>> items = ReadMultipleChoiceJsonl(path, *fields);
    if (!items.ok()) return Fail(items.status());
    tasks.push_back(std::move(*items));
  }
  std::vector<int32_t> tokens;
  if (!text_path.empty()) {
    absl::StatusOr<std::string> text = ReadTextFile(text_path);
    if (!text.ok()) return Fail(text.status());
    tokens = (*tokenizer)->Encode(*text, /*add_bos=*/true, /*parse_special=*/false);
  }

  for (PlanRun& run : runs) {
    if (absl::Status status = LoadPlan(**checkpoint, run); !status.ok()) {
      return Fail(absl::Status(status.code(), "plan " + run.name + ": " +
                                                  std::string(status.message())));
    }
  }
  const PlanRun* reference = nullptr;
  for (const PlanRun& run : runs) {
    if (run.name == "fp32" && reference == nullptr) reference = &run;
  }
  for (PlanRun& run : runs) {
    if (!tokens.empty()) {
      if (reference != nullptr) {
        absl::StatusOr<FidelityResult> fidelity =
            CompareModels(*reference->model, *run.model, tokens, windows);
        if (!fidelity.ok()) return Fail(fidelity.status());
        run.fidelity = *fidelity;
        run.perplexity = fidelity->candidate;
      } else {
        absl::StatusOr<PerplexityResult> perplexity =
            ComputePerplexity(*run.model, tokens, windows);
        if (!perplexity.ok()) return Fail(perplexity.status());
        run.perplexity = *perplexity;
      }
    }
    for (const std::vector<MultipleChoiceItem>& items : tasks) {
      absl::StatusOr<MultipleChoiceResult> result =
          EvaluateMultipleChoice(*run.model, **tokenizer, items);
      if (!result.ok()) return Fail(result.status());
      run.tasks.push_back(*result);
    }
  }

  std::optional<double> reference_perplexity;
  if (reference != nullptr && reference->perplexity.has_value()) {
    reference_perplexity = reference->perplexity->perplexity();
  }
  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::json output = {{"model", model_path},
                             {"text", text_path},
                             {"text_tokens", tokens.size()},
                             {"context_length", windows.context_length},
                             {"stride", windows.stride},
                             {"tasks", task_paths},
                             {"plans", nlohmann::json::array()}};
    for (const PlanRun& run : runs) {
      nlohmann::json plan = {{"plan", run.name},
                             {"layers", {{"per-channel", run.per_channel},
                                         {"per-group", run.per_group},
                                         {"per-tensor", run.per_tensor},
                                         {"fp", run.full_precision}}}};
      if (run.perplexity.has_value()) {
        plan["perplexity"] = run.perplexity->perplexity();
        plan["tokens_scored"] = run.perplexity->tokens_scored;
        if (reference != nullptr && reference->perplexity.has_value()) {
          plan["perplexity_delta"] =
              run.perplexity->perplexity() - reference->perplexity->perplexity();
        }
      }
      if (run.fidelity.has_value()) {
        plan["mean_kl"] = run.fidelity->mean_kl;
        plan["p99_kl"] = run.fidelity->p99_kl;
        plan["top1_agreement"] = run.fidelity->top1_agreement;
      }
      plan["tasks"] = nlohmann::json::array();
      for (size_t t = 0; t < run.tasks.size(); ++t) {
        const MultipleChoiceResult& result = run.tasks[t];
        plan["tasks"].push_back({{"task", task_paths[t]},
                                 {"items", result.items},
                                 {"acc", result.accuracy},
                                 {"acc_stderr", result.accuracy_stderr},
                                 {"acc_norm", result.accuracy_norm},
                                 {"acc_norm_stderr", result.accuracy_norm_stderr}});
      }
      output["plans"].push_back(std::move(plan));
    }
    std::printf("%s\n", output.dump(2).c_str());
    return 0;
  }

  std::printf("model %s", model_path.c_str());
  if (!tokens.empty()) {
    std::printf(", text %s (%zu tokens, windows of %lld every %lld)", text_path.c_str(),
                tokens.size(), static_cast<long long>(windows.context_length),
                static_cast<long long>(windows.stride));
  }
  std::printf("\n\n");
  std::string header = absl::StrFormat("%-16s %-14s %10s %9s %10s %10s %8s", "plan",
                                       "layers c/g/t/fp", "perplexity", "delta", "mean KL",
                                       "p99 KL", "top-1");
  for (size_t t = 0; t < tasks.size(); ++t) {
    absl::StrAppend(&header, absl::StrFormat("  %-22s", absl::StrCat("task ", t + 1,
                                                                      " acc / acc_norm")));
  }
  std::printf("%s\n", header.c_str());
  for (const PlanRun& run : runs) {
    const std::optional<double> perplexity =
        run.perplexity.has_value() ? std::optional<double>(run.perplexity->perplexity())
                                   : std::nullopt;
    std::optional<double> delta;
    if (perplexity.has_value() && reference_perplexity.has_value()) {
      delta = *perplexity - *reference_perplexity;
    }
    // A plan file is shown by its file name, so the columns stay aligned.
    const std::string label = run.name.substr(run.name.find_last_of('/') + 1);
    std::string row = absl::StrFormat(
        "%-16s %-14s %10s %9s %10s %10s %8s", label,
        absl::StrCat(run.per_channel, "/", run.per_group, "/", run.per_tensor, "/",
                     run.full_precision),
        Figure(perplexity, "%.4f"), Figure(delta, "%+.4f"),
        Figure(run.fidelity ? std::optional<double>(run.fidelity->mean_kl) : std::nullopt, "%.6f"),
        Figure(run.fidelity ? std::optional<double>(run.fidelity->p99_kl) : std::nullopt, "%.6f"),
        Figure(run.fidelity ? std::optional<double>(100.0 * run.fidelity->top1_agreement)
                            : std::nullopt,
               "%.2f%%"));
    for (const MultipleChoiceResult& result : run.tasks) {
      absl::StrAppend(&row, absl::StrFormat("  %5.1f±%.1f / %5.1f±%.1f", 100 * result.accuracy,
                                            100 * result.accuracy_stderr,
                                            100 * result.accuracy_norm,
                                            100 * result.accuracy_norm_stderr));
    }
    std::printf("%s\n", row.c_str());
  }
  for (size_t t = 0; t < tasks.size(); ++t) {
    std::printf("task %zu: %s (%zu items)\n", t + 1, task_paths[t].c_str(), tasks[t].size());
  }
  std::printf("layers c/g/t/fp: linear layers per-channel / per-group / per-tensor / kept FP32 "
              "by the plan (fp32 plan: all FP32).\n");
  return 0;
}

}  // namespace

W8A8_COMMAND("eval", "Perplexity, fidelity to FP32 and task accuracy of quantization plans",
             RunEval);

}  // namespace w8a8::tools
