// `w8a8 bench`: machine ceilings, kernel throughput and model throughput, measured in one run
// so that kernel and model figures are stated as fractions of the machine's own ceilings.
#include <omp.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <set>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/str_split.h"
#include "kernels/cpu_features.h"
#include "kernels/threads.h"
#include "tools/bench_machine.h"
#include "tools/bench_suites.h"
#include "tools/command.h"
#include "tools/flags.h"

ABSL_DECLARE_FLAG(std::string, suite);
ABSL_DECLARE_FLAG(double, seconds);
ABSL_DECLARE_FLAG(int32_t, interleave);
ABSL_DECLARE_FLAG(std::string, plan);
ABSL_DECLARE_FLAG(std::string, prompt);
ABSL_DECLARE_FLAG(int64_t, max_tokens);
ABSL_DECLARE_FLAG(int32_t, concurrency);
ABSL_DECLARE_FLAG(int64_t, requests);
ABSL_DECLARE_FLAG(int64_t, max_running);
ABSL_DECLARE_FLAG(int64_t, max_batch_tokens);

namespace w8a8::tools {
namespace {

int Fail(const std::string& message) {
  std::fprintf(stderr, "w8a8 bench: %s\n", message.c_str());
  return 1;
}

nlohmann::json CeilingJson(const Ceiling& ceiling) {
  return {{"one_thread", ceiling.one_thread}, {"all_threads", ceiling.all_threads}};
}

nlohmann::json PatternJson(const ReadPattern& pattern) {
  return {{"threads", pattern.threads},
          {"streams", pattern.streams},
          {"prefetch", pattern.prefetch}};
}

nlohmann::json MachineJson(const MachineCeilings& machine) {
  nlohmann::json read_patterns = nlohmann::json::array();
  for (const ReadResult& result : machine.read_results) {
    nlohmann::json entry = PatternJson(result.pattern);
    entry["gbs"] = result.gbs;
    entry["median_gbs"] = result.median_gbs;
    read_patterns.push_back(std::move(entry));
  }
  return {{"threads", machine.threads},
          {"isa", std::string(kernels::IsaName(kernels::ActiveIsa()))},
          {"amx_bf16", kernels::AmxBf16Usable()},
          {"avx512_probes", machine.avx512},
          {"buffer_bytes", machine.buffer_bytes},
          {"l3_bytes", machine.l3_bytes},
          {"read_gbs", CeilingJson(machine.read_gbs)},
          {"read_best", {{"one_thread", PatternJson(machine.read_best_one_thread)},
                         {"all_threads", PatternJson(machine.read_best_all_threads)}}},
          {"read_rounds", machine.read_rounds},
          {"read_chunk_bytes", machine.read_chunk_bytes},
          {"read_patterns", read_patterns},
          {"int8_gops", CeilingJson(machine.int8_gops)},
          {"fp32_gflops", CeilingJson(machine.fp32_gflops)},
          {"compute_chains", machine.compute_chains},
          {"int8_half_chains_gops", machine.int8_half_chains_gops}};
}

// A JSON number, or 0 when the field is missing (fractions are left out without the probes).
double Number(const nlohmann::json& object, const char* key) {
  return object.contains(key) && object[key].is_number() ? object[key].get<double>() : 0.0;
}

void PrintMachine(const std::string& title, const MachineCeilings& machine) {
  std::printf("%s (%d threads, best run)   1 thread   all threads\n", title.c_str(),
              machine.threads);
  std::printf("  read bandwidth, GB/s         %10.1f %12.1f\n", machine.read_gbs.one_thread,
              machine.read_gbs.all_threads);
  std::printf("  int8 vpdpbusd peak, GOPS     %10.1f %12.1f\n", machine.int8_gops.one_thread,
              machine.int8_gops.all_threads);
  std::printf("  fp32 FMA peak, GFLOPS        %10.1f %12.1f\n", machine.fp32_gflops.one_thread,
              machine.fp32_gflops.all_threads);
  if (!machine.avx512) {
    std::printf("  (no AVX-512 VNNI on this CPU: ceilings not measured)\n");
    return;
  }
  std::printf("  read: fastest %lld MiB chunk of %d rounds over %lld MiB (L3 %lld MiB); "
              "1 thread: %s; all threads: %s\n",
              static_cast<long long>(machine.read_chunk_bytes >> 20), machine.read_rounds,
              static_cast<long long>(machine.buffer_bytes >> 20),
              static_cast<long long>(machine.l3_bytes >> 20),
              machine.read_best_one_thread.Describe().c_str(),
              machine.read_best_all_threads.Describe().c_str());
  std::printf("  read patterns, GB/s, fastest and median chunk:");
  int column = 0;
  for (const ReadResult& result : machine.read_results) {
    std::printf("%s%-32s %5.1f %5.1f", column % 2 == 0 ? "\n    " : "   ",
                result.pattern.Describe().c_str(), result.gbs, result.median_gbs);
    ++column;
  }
  std::printf("\n");
  const double half_ratio = machine.int8_gops.one_thread > 0
                                ? machine.int8_half_chains_gops / machine.int8_gops.one_thread
                                : 0.0;
  std::printf("  int8 and fp32 peaks: %d accumulator chains; int8 with %d chains on 1 thread: "
              "%.1f GOPS (%.2f of %d chains)\n",
              machine.compute_chains, machine.compute_chains / 2, machine.int8_half_chains_gops,
              half_ratio, machine.compute_chains);
}

void PrintKernels(const nlohmann::json& cases) {
  std::printf("\nkernels (fastest run; peak: int8 or fp32 all-thread peak; bandwidth: weight "
              "bytes / read bandwidth / time; weights: DRAM when the copies cycled through are "
              "at least 2 x L3, else cache)\n");
  std::printf("  %-20s %-12s %5s %10s %8s %8s %10s %8s\n", "kernel", "shape", "m", "time us",
              "GOPS", "peak", "bandwidth", "weights");
  for (const nlohmann::json& entry : cases) {
    std::string bandwidth = "";
    if (entry.contains("bandwidth_fraction")) {
      char text[32];
      std::snprintf(text, sizeof(text), "%.2f", entry["bandwidth_fraction"].get<double>());
      bandwidth = text;
    }
    const bool dram = entry.contains("dram_resident") && entry["dram_resident"].get<bool>();
    std::printf("  %-20s %-12s %5lld %10.1f %8.1f %8.3f %10s %8s\n",
                entry["kernel"].get<std::string>().c_str(),
                entry["shape"].get<std::string>().c_str(),
                static_cast<long long>(entry["m"].get<int64_t>()),
                entry["seconds"].get<double>() * 1e6, entry["gops"].get<double>(),
                Number(entry, "peak_fraction"), bandwidth.c_str(), dram ? "DRAM" : "cache");
  }
}

void PrintModel(const nlohmann::json& model) {
  std::printf("\nmodel %s\n", model["path"].get<std::string>().c_str());
  for (const nlohmann::json& plan : model["plans"]) {
    std::printf("  plan %s: load %.1f s, weights %.1f MiB, peak resident %.0f MiB\n",
                plan["plan"].get<std::string>().c_str(), plan["load_seconds"].get<double>(),
                plan["weight_bytes"].get<double>() / (1 << 20),
                plan["peak_rss_mib"].get<double>());
    for (const nlohmann::json& entry : plan["prefill"]) {
      std::printf("    prefill %4lld tokens: %9.1f tokens/s\n",
                  static_cast<long long>(entry["prompt_tokens"].get<int64_t>()),
                  entry["tokens_per_second"].get<double>());
    }
    for (const nlohmann::json& entry : plan["decode"]) {
      std::printf(
          "    decode %2lld sequences: %8.1f tokens/s, %7.1f ms/step, bandwidth %.2f; fastest "
          "step %7.1f ms, bandwidth %.2f\n",
          static_cast<long long>(entry["sequences"].get<int64_t>()),
          entry["tokens_per_second"].get<double>(), entry["step_seconds"].get<double>() * 1e3,
          Number(entry, "bandwidth_fraction"), entry["fastest_step_seconds"].get<double>() * 1e3,
          Number(entry, "fastest_step_bandwidth_fraction"));
    }
  }
  std::printf("  ratios\n");
  for (const auto& [group, values] : model["ratios"].items()) {
    for (const auto& [name, value] : values.items()) {
      std::printf("    %-18s %-24s %.2f\n", group.c_str(), name.c_str(),
                  value.is_number() ? value.get<double>() : 0.0);
    }
  }
  if (model.contains("interleaved_error")) {
    std::printf("  interleaved rounds failed: %s\n",
                model["interleaved_error"].get<std::string>().c_str());
  }
  if (!model.contains("interleaved")) return;
  const nlohmann::json& interleaved = model["interleaved"];
  std::printf("  interleaved: every plan loaded, %d rounds, ratio to %s per round\n",
              interleaved["rounds"].get<int>(), interleaved["base"].get<std::string>().c_str());
  for (const auto& [group, values] : interleaved["ratios"].items()) {
    for (const auto& [name, value] : values.items()) {
      std::printf("    %-18s %-24s median %.3f (%.3f to %.3f)\n", group.c_str(), name.c_str(),
                  Number(value, "median"), Number(value, "min"), Number(value, "max"));
    }
  }
}

// The layout of `w8a8-client load`, so the two tables line up.
void PrintEngine(const nlohmann::json& engine) {
  std::printf("\nengine %s, plan %s: %lld requests x %lld tokens, prompt %lld tokens\n",
              engine["path"].get<std::string>().c_str(), engine["plan"].get<std::string>().c_str(),
              static_cast<long long>(engine["requests"].get<int64_t>()),
              static_cast<long long>(engine["max_tokens"].get<int64_t>()),
              static_cast<long long>(engine["prompt_tokens"].get<int64_t>()));
  std::printf("%lld in flight, %.2f s: %lld succeeded, %lld failed; %.2f requests/s, %.1f "
              "generated tokens/s\n",
              static_cast<long long>(engine["concurrency"].get<int64_t>()),
              engine["seconds"].get<double>(),
              static_cast<long long>(engine["succeeded"].get<int64_t>()),
              static_cast<long long>(engine["failed"].get<int64_t>()),
              engine["requests_per_second"].get<double>(),
              engine["tokens_per_second"].get<double>());
  if (!engine["first_error"].get<std::string>().empty()) {
    std::printf("  first error: %s\n", engine["first_error"].get<std::string>().c_str());
  }
  std::printf("%-22s %10s %10s %10s %10s %10s\n", "latency (ms)", "mean", "p50", "p90", "p99",
              "max");
  for (const auto& [label, key] :
       {std::pair{"time to first token", "time_to_first_token_seconds"},
        std::pair{"inter-token", "inter_token_latency_seconds"},
        std::pair{"request", "request_latency_seconds"}}) {
    const nlohmann::json& p = engine[key];
    std::printf("%-22s %10.2f %10.2f %10.2f %10.2f %10.2f\n", label, Number(p, "mean") * 1e3,
                Number(p, "p50") * 1e3, Number(p, "p90") * 1e3, Number(p, "p99") * 1e3,
                Number(p, "max") * 1e3);
  }
}

int RunBench(const std::vector<std::string>& args) {
  if (!args.empty()) return Fail("unexpected argument '" + args[0] + "'.");
  const double seconds = absl::GetFlag(FLAGS_seconds);
  if (!(seconds > 0)) {
    return Fail("--seconds must be positive, got " + std::to_string(seconds) + ".");
  }
  const std::string model_path = absl::GetFlag(FLAGS_model);
  const int interleave = absl::GetFlag(FLAGS_interleave);
  if (interleave < 0) {
    return Fail("--interleave must be 0 (no rounds) or a positive number of rounds, got " +
                std::to_string(interleave) + ".");
  }
  std::set<std::string> suites;
  const std::string suite_flag = absl::GetFlag(FLAGS_suite);
  if (suite_flag.empty()) {
    suites = {"machine", "kernels"};
    if (!model_path.empty()) suites.insert("model");
  }
  for (const absl::string_view name : absl::StrSplit(suite_flag, ',', absl::SkipEmpty())) {
    if (name != "machine" && name != "kernels" && name != "model" && name != "engine") {
      return Fail("unknown suite '" + std::string(name) +
                  "' in --suite; use machine, kernels, model or engine.");
    }
    suites.insert(std::string(name));
  }
  for (const char* suite : {"model", "engine"}) {
    if (suites.contains(suite) && model_path.empty()) {
      return Fail(std::string("the ") + suite +
                  " suite needs --model: a checkpoint directory or a .gguf file.");
    }
  }
  // Checked here, because the machine suite runs first and takes several seconds.
  if (suites.contains("model") || suites.contains("engine")) {
    std::error_code error;
    const bool exists = std::filesystem::exists(model_path, error);
    if (error) {
      return Fail("cannot read --model " + model_path + ": " + error.message() + ".");
    }
    if (!exists) {
      return Fail("--model " + model_path +
                  " does not exist; pass a checkpoint directory or a .gguf file.");
    }
  }
  if (interleave > 0) {
    if (!suites.contains("model")) {
      return Fail("--interleave times the plans of the model suite; add model to --suite.");
    }
    if (ModelSuitePlans().size() < 2) {
      return Fail("--interleave compares plans and needs at least two in --plans, got '" +
                  absl::GetFlag(FLAGS_plans) + "'.");
    }
  }

  const bool json = absl::GetFlag(FLAGS_json);
  nlohmann::json report = nlohmann::json::object();
  // The engine suite states no fractions of the ceilings and runs a fixed amount of work
  // instead of --seconds, so alone it skips the machine measurement.
  const bool engine_only = suites.size() == 1 && suites.contains("engine");
  // Every suite runs on a thread of its own, so that the OpenMP workers of one suite do not
  // outlive it (see kernels::RunOnTransientThread).
  const MachineCeilings machine =
      engine_only ? MachineCeilings{}
                  : kernels::RunOnTransientThread([&] { return MeasureMachine(seconds); });
  if (!engine_only) {
    report["seconds"] = seconds;
    report["machine"] = MachineJson(machine);
    if (!json) PrintMachine("machine at the start", machine);
  }
  if (suites.contains("kernels")) {
    absl::StatusOr<nlohmann::json> cases =
        kernels::RunOnTransientThread([&] { return RunKernelSuite(machine, seconds); });
    if (!cases.ok()) return Fail(std::string(cases.status().message()));
    report["kernels"] = *cases;
    if (!json) PrintKernels(*cases);
  }
  if (suites.contains("model")) {
    absl::StatusOr<nlohmann::json> model = kernels::RunOnTransientThread(
        [&] { return RunModelSuite(model_path, machine, seconds, interleave); });
    if (!model.ok()) return Fail(std::string(model.status().message()));
    report["model"] = *model;
    if (!json) PrintModel(*model);
  }
  if (suites.contains("engine")) {
    EngineSuiteOptions options;
    options.model_path = model_path;
    options.plan = absl::GetFlag(FLAGS_plan);
    options.prompt = absl::GetFlag(FLAGS_prompt);
    options.requests = absl::GetFlag(FLAGS_requests);
    options.concurrency = absl::GetFlag(FLAGS_concurrency);
    options.max_tokens = absl::GetFlag(FLAGS_max_tokens);
    options.engine.max_running_sequences = absl::GetFlag(FLAGS_max_running);
    options.engine.max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens);
    absl::StatusOr<nlohmann::json> engine = RunEngineSuite(options);
    if (!engine.ok()) return Fail(std::string(engine.status().message()));
    report["engine"] = *engine;
    if (!json) PrintEngine(*engine);
  }
  // The ceilings again, so that a reader sees whether the load on the machine changed while
  // the suites ran. Fractions above are stated against the ceilings from the start.
  if (!engine_only) {
    const MachineCeilings machine_end =
        kernels::RunOnTransientThread([&] { return MeasureMachine(seconds); });
    report["machine_end"] = MachineJson(machine_end);
    if (!json) {
      std::printf("\n");
      PrintMachine("machine at the end", machine_end);
    }
  }
  if (json) std::printf("%s\n", report.dump(2).c_str());
  return 0;
}

}  // namespace

W8A8_COMMAND("bench",
             "Measure machine ceilings, kernel and model throughput as ratios, and engine "
             "serving throughput",
             RunBench);

}  // namespace w8a8::tools
