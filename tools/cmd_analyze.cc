// `w8a8 analyze`: per-layer weight statistics, scheme errors and the quantization plan.
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "core/checkpoint.h"
#include "core/quant_chart.h"
#include "core/quantization.h"
#include "tools/command.h"
#include "tools/flags.h"

ABSL_DECLARE_FLAG(std::string, config);
ABSL_DECLARE_FLAG(std::string, svg);

namespace w8a8::tools {
namespace {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "w8a8 analyze: %s\n", std::string(status.message()).c_str());
  return 1;
}

int RunAnalyze(const std::vector<std::string>& args) {
  const std::string model_path = absl::GetFlag(FLAGS_model);
  if (model_path.empty()) {
    return Fail(absl::InvalidArgumentError(
        "--model is missing; give a checkpoint directory or a .gguf file"));
  }
  QuantConfig config;
  if (const std::string config_path = absl::GetFlag(FLAGS_config); !config_path.empty()) {
    absl::StatusOr<QuantConfig> parsed = ReadQuantConfig(config_path);
    if (!parsed.ok()) return Fail(parsed.status());
    config = *parsed;
  }
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(model_path);
  if (!checkpoint.ok()) return Fail(checkpoint.status());
  absl::StatusOr<QuantizationReport> report = AnalyzeQuantization(**checkpoint, config);
  if (!report.ok()) return Fail(report.status());

  if (absl::GetFlag(FLAGS_json)) {
    std::printf("%s\n", QuantizationReportToJson(*report).dump(2).c_str());
  } else {
    std::printf("%s", FormatQuantizationReport(*report).c_str());
  }

  // --out writes the plan alone, ready for `w8a8 quantize --plan FILE`.
  if (const std::string out = absl::GetFlag(FLAGS_out); !out.empty()) {
    std::ofstream file(out, std::ios::binary | std::ios::trunc);
    file << PlanToJson(report->plan).dump(2) << "\n";
    if (!file) return Fail(absl::InternalError("failed to write the plan to " + out));
    std::fprintf(stderr, "wrote the plan to %s\n", out.c_str());
  }
  if (const std::string svg = absl::GetFlag(FLAGS_svg); !svg.empty()) {
    std::ofstream file(svg, std::ios::binary | std::ios::trunc);
    file << RenderLayerErrorChart(report->analysis, report->plan,
                                  "Weight quantization error per layer: " + model_path);
    if (!file) return Fail(absl::InternalError("failed to write the chart to " + svg));
    std::fprintf(stderr, "wrote the chart to %s\n", svg.c_str());
  }
  return 0;
}

}  // namespace

W8A8_COMMAND("analyze",
             "Per-layer weight statistics and the W8A8 plan: analyze --model PATH [--json] "
             "[--config FILE] [--out PLAN.json]",
             RunAnalyze);

}  // namespace w8a8::tools
