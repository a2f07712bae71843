#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "core/checkpoint.h"
#include "core/model.h"
#include "core/quantization.h"
#include "tools/bench_common.h"
#include "tools/bench_machine.h"
#include "tools/bench_suites.h"
#include "tools/flags.h"

namespace w8a8::tools {
namespace {

constexpr int64_t kPromptLengths[] = {128, 512};
constexpr int64_t kDecodeBatchSizes[] = {1, 4, 8, 16};
constexpr int64_t kBlockSize = 16;
// Tokens in the cache of every sequence before decode is timed.
constexpr int64_t kDecodeContext = 32;
// Upper bound on timed decode steps, which sizes the KV cache.
constexpr int64_t kMaxDecodeSteps = 64;
constexpr int kMinDecodeSteps = 3;

double PeakResidentMib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux.
}

std::vector<int32_t> RandomTokens(int64_t count, int64_t vocab_size, uint32_t seed) {
  std::mt19937 engine(seed);
  std::uniform_int_distribution<int32_t> distribution(0, static_cast<int32_t>(vocab_size - 1));
  std::vector<int32_t> tokens(count);
  for (int32_t& token : tokens) token = distribution(engine);
  return tokens;
}

// Block tables of `sequences` sequences with `blocks_each` blocks each, numbered in order.
std::vector<std::vector<int32_t>> BlockTables(int64_t sequences, int64_t blocks_each) {
  std::vector<std::vector<int32_t>> tables(sequences, std::vector<int32_t>(blocks_each));
  for (int64_t i = 0; i < sequences; ++i) {
    std::iota(tables[i].begin(), tables[i].end(), static_cast<int32_t>(i * blocks_each));
  }
  return tables;
}

// Prefills one prompt of `length` tokens in a fresh cache and returns the fastest run. Runs
// repeat for `seconds`, at least twice, because the first run creates oneDNN primitives.
absl::StatusOr<double> FastestPrefill(const Model& model, int64_t length, double seconds) {
  const int64_t blocks = (length + kBlockSize - 1) / kBlockSize;
  KvCache cache(model.config(), blocks, kBlockSize);
  const std::vector<int32_t> tokens = RandomTokens(length, model.config().vocab_size, 5);
  const std::vector<std::vector<int32_t>> tables = BlockTables(1, blocks);
  const SequenceStep step{tokens, 0, tables[0], SequenceStep::Logits::kLast};
  std::vector<float> logits;
  double fastest = 0.0;
  const double start = omp_get_wtime();
  for (int run = 0; run < 2 || omp_get_wtime() - start < seconds; ++run) {
    logits.clear();
    const double begin = omp_get_wtime();
    if (absl::Status status = model.Forward({&step, 1}, cache, logits); !status.ok()) {
      return status;
    }
    const double elapsed = omp_get_wtime() - begin;
    if (run == 0 || elapsed < fastest) fastest = elapsed;
  }
  return fastest;
}

// Seconds of the timed decode steps of one batch size.
struct DecodeTiming {
  double mean_seconds = 0.0;
  double fastest_seconds = 0.0;
};

// Prefills `sequences` sequences with kDecodeContext tokens each, then runs decode steps of
// one token per sequence, one Model::Forward per step over the whole batch. Times at least
// kMinDecodeSteps steps and at least `seconds` (at most kMaxDecodeSteps steps).
absl::StatusOr<DecodeTiming> TimeDecodeSteps(const Model& model, int64_t sequences,
                                             double seconds) {
  const int64_t blocks_each =
      (kDecodeContext + kMaxDecodeSteps + 1 + kBlockSize - 1) / kBlockSize;
  KvCache cache(model.config(), sequences * blocks_each, kBlockSize);
  const std::vector<std::vector<int32_t>> tables = BlockTables(sequences, blocks_each);
  const std::vector<int32_t> prompt =
      RandomTokens(kDecodeContext, model.config().vocab_size, 6);
  std::vector<SequenceStep> batch(sequences);
  for (int64_t i = 0; i < sequences; ++i) {
    batch[i] = {prompt, 0, tables[i], SequenceStep::Logits::kLast};
  }
  std::vector<float> logits;
  if (absl::Status status = model.Forward(batch, cache, logits); !status.ok()) return status;

  const std::vector<int32_t> next_tokens = RandomTokens(sequences, model.config().vocab_size, 7);
  auto step = [&](int64_t position) {
    for (int64_t i = 0; i < sequences; ++i) {
      batch[i] = {std::span<const int32_t>(&next_tokens[i], 1), position, tables[i],
                  SequenceStep::Logits::kLast};
    }
    logits.clear();
    return model.Forward(batch, cache, logits);
  };
  // One untimed step creates the oneDNN primitives for this batch size.
  int64_t position = kDecodeContext;
  if (absl::Status status = step(position++); !status.ok()) return status;
  const double start = omp_get_wtime();
  double step_start = start;
  int64_t steps = 0;
  DecodeTiming timing;
  while (steps < kMaxDecodeSteps - 1 &&
         (steps < kMinDecodeSteps || step_start - start < seconds)) {
    if (absl::Status status = step(position++); !status.ok()) return status;
    const double step_end = omp_get_wtime();
    const double step_seconds = step_end - step_start;
    if (steps == 0 || step_seconds < timing.fastest_seconds) timing.fastest_seconds = step_seconds;
    step_start = step_end;
    ++steps;
  }
  timing.mean_seconds = (step_start - start) / static_cast<double>(steps);
  return timing;
}

// Bytes of weights one decode step reads: every linear layer, the norms, and the embedding
// when it serves as lm_head. An embedding that is not the lm_head (untied, or tied but
// replaced by a quantized copy) is only looked up row by row, so it is left out.
double DecodeBytesPerStep(const Model& model) {
  double bytes = static_cast<double>(model.weight_bytes());
  const bool head_reads_embedding = model.LinearLayers().back().weight_bytes == 0;
  if (!head_reads_embedding) bytes -= static_cast<double>(model.embedding_bytes());
  return bytes;
}

struct LoadedPlan {
  std::unique_ptr<Model> model;
  double load_seconds = 0.0;
};

absl::StatusOr<LoadedPlan> LoadPlan(const Checkpoint& checkpoint, const std::string& plan) {
  const double load_start = omp_get_wtime();
  // fp32 becomes the empty plan, which serves the checkpoint's weights in FP32.
  absl::StatusOr<LinearFactory> factory =
      LinearFactoryForPlan(checkpoint, plan == "fp32" ? std::string() : plan);
  if (!factory.ok()) return factory.status();
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Create(checkpoint, *factory);
  if (!model.ok()) return model.status();
  return LoadedPlan{*std::move(model), omp_get_wtime() - load_start};
}

absl::StatusOr<nlohmann::json> BenchPlan(const Checkpoint& checkpoint, const std::string& plan,
                                         const MachineCeilings& machine, double seconds) {
  absl::StatusOr<LoadedPlan> loaded = LoadPlan(checkpoint, plan);
  if (!loaded.ok()) return loaded.status();
  const std::unique_ptr<Model>& model = loaded->model;

  nlohmann::json result = {{"plan", plan},
                           {"load_seconds", loaded->load_seconds},
                           {"weight_bytes", model->weight_bytes()}};
  nlohmann::json prefill = nlohmann::json::array();
  for (int64_t length : kPromptLengths) {
    absl::StatusOr<double> run_seconds = FastestPrefill(*model, length, seconds);
    if (!run_seconds.ok()) return run_seconds.status();
    prefill.push_back({{"prompt_tokens", length},
                       {"seconds", *run_seconds},
                       {"tokens_per_second", static_cast<double>(length) / *run_seconds}});
  }
  result["prefill"] = prefill;

  // Bandwidth drifts on shared machines, so it is read again right before this plan's decode
  // figures, with the thread count that read fastest at the start of the run. The fractions
  // divide by the larger of this reading and the start ceiling, which keeps them conservative.
  const double read_gbs_now =
      MeasureReadBandwidth(std::max(1, machine.read_best_all_threads.threads), 0.5);
  const double read_gbs = std::max(machine.read_gbs.all_threads, read_gbs_now);
  result["read_gbs_before_decode"] = read_gbs_now;
  result["read_gbs_for_fractions"] = read_gbs;
  const double bytes_per_step = DecodeBytesPerStep(*model);
  nlohmann::json decode = nlohmann::json::array();
  for (int64_t sequences : kDecodeBatchSizes) {
    absl::StatusOr<DecodeTiming> timing = TimeDecodeSteps(*model, sequences, seconds);
    if (!timing.ok()) return timing.status();
    nlohmann::json entry = {
        {"sequences", sequences},
        {"step_seconds", timing->mean_seconds},
        {"fastest_step_seconds", timing->fastest_seconds},
        {"tokens_per_second", static_cast<double>(sequences) / timing->mean_seconds}};
    if (read_gbs > 0) {
      entry["bandwidth_fraction"] = bytes_per_step / timing->mean_seconds / (read_gbs * 1e9);
      // The least disturbed step, like the ceiling's fastest chunk. One step reads about a
      // hundred chunks' worth, so this stays below what an undisturbed chunk would give.
      entry["fastest_step_bandwidth_fraction"] =
          bytes_per_step / timing->fastest_seconds / (read_gbs * 1e9);
    }
    decode.push_back(entry);
  }
  result["decode"] = decode;
  result["decode_bytes_per_step"] = bytes_per_step;
  // The process peak so far, so a later plan's figure includes the earlier plans' peaks.
  result["peak_rss_mib"] = PeakResidentMib();
  return result;
}

double PrefillRate(const nlohmann::json& plan, int64_t length) {
  for (const nlohmann::json& entry : plan["prefill"]) {
    if (entry["prompt_tokens"] == length) return entry["tokens_per_second"];
  }
  return 0.0;
}

double DecodeRate(const nlohmann::json& plan, int64_t sequences) {
  for (const nlohmann::json& entry : plan["decode"]) {
    if (entry["sequences"] == sequences) return entry["tokens_per_second"];
  }
  return 0.0;
}

// The key of a plan in the ratios: its name, or the stem of its file, with '-' as '_'.
std::string RatioKey(const std::string& plan) {
  std::string key = std::filesystem::path(plan).stem().string();
  std::replace(key.begin(), key.end(), '-', '_');
  return key;
}

// Ratios between plans and batch sizes: every plan over fp32 and over per-channel when those
// ran, and 8-sequence over 1-sequence decode for every plan.
nlohmann::json Ratios(const nlohmann::json& plans) {
  nlohmann::json ratios = nlohmann::json::object();
  for (const char* base_name : {"fp32", "per-channel"}) {
    const nlohmann::json* base = nullptr;
    for (const nlohmann::json& plan : plans) {
      if (plan["plan"] == base_name) base = &plan;
    }
    if (base == nullptr) continue;
    for (const nlohmann::json& plan : plans) {
      if (&plan == base) continue;
      const std::string name =
          RatioKey(plan["plan"].get<std::string>()) + "_over_" + RatioKey(base_name);
      for (int64_t length : kPromptLengths) {
        ratios["prefill_" + std::to_string(length)][name] =
            PrefillRate(plan, length) / PrefillRate(*base, length);
      }
      for (int64_t sequences : kDecodeBatchSizes) {
        ratios["decode_" + std::to_string(sequences)][name] =
            DecodeRate(plan, sequences) / DecodeRate(*base, sequences);
      }
    }
  }
  for (const nlohmann::json& plan : plans) {
    ratios["decode_8_over_1"][plan["plan"].get<std::string>()] =
        DecodeRate(plan, 8) / DecodeRate(plan, 1);
  }
  return ratios;
}

// One timed figure of the suite: a prefill of `prompt_tokens`, or a decode step of
// `sequences` sequences when prompt_tokens is 0.
struct Figure {
  std::string key;
  int64_t prompt_tokens = 0;
  int64_t sequences = 0;
};

absl::StatusOr<double> TokensPerSecond(const Model& model, const Figure& figure,
                                       double seconds) {
  if (figure.prompt_tokens > 0) {
    absl::StatusOr<double> run_seconds = FastestPrefill(model, figure.prompt_tokens, seconds);
    if (!run_seconds.ok()) return run_seconds.status();
    return static_cast<double>(figure.prompt_tokens) / *run_seconds;
  }
  absl::StatusOr<DecodeTiming> timing = TimeDecodeSteps(model, figure.sequences, seconds);
  if (!timing.ok()) return timing.status();
  return static_cast<double>(figure.sequences) / timing->mean_seconds;
}

// Loads every plan at once and times each figure on every plan in turn, `rounds` times, in
// the order of `plan_names` in even rounds and in reverse in odd ones. A plan's ratio to the
// first plan is taken per round, from runs seconds apart, so drift of the machine's speed
// over minutes cancels out of it.
absl::StatusOr<nlohmann::json> Interleave(const Checkpoint& checkpoint,
                                          const std::vector<std::string>& plan_names,
                                          double seconds, int rounds) {
  std::vector<LoadedPlan> loaded;
  for (const std::string& plan : plan_names) {
    absl::StatusOr<LoadedPlan> next = LoadPlan(checkpoint, plan);
    if (!next.ok()) return next.status();
    loaded.push_back(*std::move(next));
  }
  std::vector<Figure> figures;
  for (int64_t length : kPromptLengths) {
    figures.push_back({"prefill_" + std::to_string(length), length, 0});
  }
  for (int64_t sequences : kDecodeBatchSizes) {
    figures.push_back({"decode_" + std::to_string(sequences), 0, sequences});
  }
  const size_t count = loaded.size();
  // per_round[figure][plan]: the ratio to the first plan in each round.
  std::vector<std::vector<std::vector<double>>> per_round(
      figures.size(), std::vector<std::vector<double>>(count));
  for (int round = 0; round < rounds; ++round) {
    for (size_t f = 0; f < figures.size(); ++f) {
      std::vector<double> rates(count);
      for (size_t turn = 0; turn < count; ++turn) {
        const size_t plan = round % 2 == 0 ? turn : count - 1 - turn;
        absl::StatusOr<double> rate =
            TokensPerSecond(*loaded[plan].model, figures[f], seconds);
        if (!rate.ok()) return rate.status();
        rates[plan] = *rate;
      }
      for (size_t plan = 1; plan < count; ++plan) {
        per_round[f][plan].push_back(rates[plan] / rates[0]);
      }
    }
  }
  nlohmann::json ratios = nlohmann::json::object();
  for (size_t f = 0; f < figures.size(); ++f) {
    for (size_t plan = 1; plan < count; ++plan) {
      const std::vector<double>& values = per_round[f][plan];
      const std::string name =
          RatioKey(plan_names[plan]) + "_over_" + RatioKey(plan_names[0]);
      ratios[figures[f].key][name] = {
          {"rounds", values},
          {"median", Median(values)},
          {"min", *std::min_element(values.begin(), values.end())},
          {"max", *std::max_element(values.begin(), values.end())}};
    }
  }
  return nlohmann::json{{"rounds", rounds}, {"base", plan_names[0]}, {"ratios", ratios}};
}

}  // namespace

std::vector<std::string> ModelSuitePlans() {
  return absl::StrSplit(PlansOrDefault("per-channel,auto,fp32"), ',', absl::SkipEmpty());
}

absl::StatusOr<nlohmann::json> RunModelSuite(const std::string& model_path,
                                             const MachineCeilings& machine, double seconds,
                                             int interleave_rounds) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(model_path);
  if (!checkpoint.ok()) return checkpoint.status();
  const std::vector<std::string> plan_names = ModelSuitePlans();
  if (plan_names.empty()) {
    return absl::InvalidArgumentError(
        "--plans names no plan: list fp32, per-channel, per-group, per-tensor, auto, or the "
        "paths of plan or config files, separated by commas");
  }
  nlohmann::json plans = nlohmann::json::array();
  // By default fp32 runs last because it needs the most memory, so the peak resident figures
  // of the int8 plans are not raised by it.
  for (const std::string& plan : plan_names) {
    absl::StatusOr<nlohmann::json> result = BenchPlan(**checkpoint, plan, machine, seconds);
    if (!result.ok()) return result.status();
    plans.push_back(*std::move(result));
  }
  nlohmann::json report = {{"path", model_path}, {"plans", plans}, {"ratios", Ratios(plans)}};
  // After the per-plan figures, so that their peak resident memory is each plan's own.
  // A failure here, such as too little memory for every plan at once, keeps the figures above.
  if (interleave_rounds > 0 && plan_names.size() >= 2) {
    absl::StatusOr<nlohmann::json> interleaved =
        Interleave(**checkpoint, plan_names, seconds, interleave_rounds);
    if (interleaved.ok()) {
      report["interleaved"] = *std::move(interleaved);
    } else {
      report["interleaved_error"] = interleaved.status().ToString();
    }
  }
  return report;
}

}  // namespace w8a8::tools
