// The `w8a8 bench` command of the built tool: the JSON fields exist and are positive. No
// timing is asserted, because the machine running the tests may be loaded.
#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu_features.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace w8a8 {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

using testing::CommandResult;

using testing::RunW8a8Tool;
using testing::ToolOutput;

double Number(const nlohmann::json& object, const std::string& key) {
  if (!object.contains(key) || !object[key].is_number()) return -1.0;
  return object[key].get<double>();
}

class BenchCli : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(std::filesystem::exists(testing::W8a8Tool()))
        << "build the w8a8 target first: " << testing::W8a8Tool();
  }
};

void ExpectMachineFields(const nlohmann::json& machine) {
  EXPECT_GE(Number(machine, "threads"), 1.0);
  ASSERT_TRUE(machine.contains("amx_bf16")) << machine.dump();
  ASSERT_TRUE(machine.at("amx_bf16").is_boolean()) << machine.dump();
  EXPECT_EQ(machine.at("amx_bf16").get<bool>(), kernels::AmxBf16Usable());
  // Without AVX-512 VNNI the ceilings are not measured and stay 0.
  if (!machine["avx512_probes"].get<bool>()) return;
  for (const char* ceiling : {"read_gbs", "int8_gops", "fp32_gflops"}) {
    EXPECT_GT(Number(machine[ceiling], "one_thread"), 0.0) << ceiling;
    EXPECT_GT(Number(machine[ceiling], "all_threads"), 0.0) << ceiling;
  }
  EXPECT_GE(Number(machine, "buffer_bytes"), 512.0 * (1 << 20));
  EXPECT_GE(Number(machine, "read_rounds"), 3.0);
  EXPECT_GT(Number(machine, "read_chunk_bytes"), 0.0);
  EXPECT_LT(Number(machine, "read_chunk_bytes"), Number(machine, "buffer_bytes"));
  EXPECT_GE(Number(machine, "compute_chains"), 10.0);
  EXPECT_GT(Number(machine, "int8_half_chains_gops"), 0.0);
}

// The read ceilings are the best of the patterns listed beside them, and each names a pattern
// that was tried.
void ExpectReadPatternsConsistent(const nlohmann::json& machine) {
  if (!machine["avx512_probes"].get<bool>()) return;
  const int threads = machine["threads"].get<int>();
  const nlohmann::json& patterns = machine["read_patterns"];
  // 3 stream counts x prefetch off and on, for 1 thread, `threads` (when above 1) and twice
  // as many.
  ASSERT_EQ(patterns.size(), threads > 1 ? 18u : 12u);
  double best_one = 0.0, best_all = 0.0;
  for (const nlohmann::json& pattern : patterns) {
    const int pattern_threads = pattern["threads"].get<int>();
    EXPECT_GT(Number(pattern, "gbs"), 0.0) << pattern.dump();
    // The median lies between the slowest and the fastest chunk.
    EXPECT_GT(Number(pattern, "median_gbs"), 0.0) << pattern.dump();
    EXPECT_LE(Number(pattern, "median_gbs"), Number(pattern, "gbs")) << pattern.dump();
    EXPECT_THAT(pattern["streams"].get<int>(), ::testing::AnyOf(1, 2, 4)) << pattern.dump();
    if (pattern_threads == 1) best_one = std::max(best_one, Number(pattern, "gbs"));
    if (pattern_threads >= threads) best_all = std::max(best_all, Number(pattern, "gbs"));
  }
  EXPECT_DOUBLE_EQ(Number(machine["read_gbs"], "one_thread"), best_one);
  EXPECT_DOUBLE_EQ(Number(machine["read_gbs"], "all_threads"), best_all);
  EXPECT_EQ(machine["read_best"]["one_thread"]["threads"].get<int>(), 1);
  EXPECT_GE(machine["read_best"]["all_threads"]["threads"].get<int>(), threads);
}

TEST_F(BenchCli, MachineAndKernelsJson) {
  const CommandResult result =
      RunW8a8Tool("bench --suite machine,kernels --seconds 0.05 --json", ToolOutput::kStdout);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const nlohmann::json report = nlohmann::json::parse(result.output, nullptr, false);
  ASSERT_FALSE(report.is_discarded()) << result.output;
  ASSERT_TRUE(report.contains("machine"));
  ExpectMachineFields(report["machine"]);
  ExpectReadPatternsConsistent(report["machine"]);
  ASSERT_TRUE(report.contains("machine_end"));
  ExpectMachineFields(report["machine_end"]);
  ExpectReadPatternsConsistent(report["machine_end"]);
  const bool probes = report["machine"]["avx512_probes"].get<bool>();
  const double l3_bytes = Number(report["machine"], "l3_bytes");

  ASSERT_TRUE(report.contains("kernels"));
  // 4 shapes x 5 row counts x 3 kernels.
  ASSERT_EQ(report["kernels"].size(), 60u);
  for (const nlohmann::json& entry : report["kernels"]) {
    const std::string label = entry.dump();
    EXPECT_GT(Number(entry, "gops"), 0.0) << label;
    EXPECT_GT(Number(entry, "seconds"), 0.0) << label;
    // The kernels cycle through copies of the weights. A tiny --seconds uses fewer copies.
    EXPECT_GE(Number(entry, "weight_copies"), 1.0) << label;
    EXPECT_DOUBLE_EQ(Number(entry, "rotation_bytes"),
                     Number(entry, "weight_copies") * Number(entry, "weight_bytes"))
        << label;
    ASSERT_TRUE(entry.contains("dram_resident") && entry["dram_resident"].is_boolean()) << label;
    EXPECT_EQ(entry["dram_resident"].get<bool>(),
              l3_bytes > 0 && Number(entry, "rotation_bytes") >= 2 * l3_bytes)
        << label;
    if (!probes) continue;
    EXPECT_GT(Number(entry, "peak_fraction"), 0.0) << label;
    if (entry["m"].get<int64_t>() <= 16) {
      EXPECT_GT(Number(entry, "bandwidth_fraction"), 0.0) << label;
    } else {
      EXPECT_FALSE(entry.contains("bandwidth_fraction")) << label;
    }
  }
  EXPECT_FALSE(report.contains("model"));
}

TEST_F(BenchCli, MachineTablePrintsBothMeasurements) {
  const CommandResult result =
      RunW8a8Tool("bench --suite machine --seconds 0.05", ToolOutput::kStdout);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_THAT(result.output, HasSubstr("machine at the start"));
  EXPECT_THAT(result.output, HasSubstr("machine at the end"));
  EXPECT_THAT(result.output, ::testing::Not(HasSubstr("kernels (")));
  if (result.output.find("ceilings not measured") == std::string::npos) {
    EXPECT_THAT(result.output, HasSubstr("read patterns, GB/s, fastest and median chunk"));
    EXPECT_THAT(result.output, HasSubstr("2 streams, prefetch"));
  }
}

TEST_F(BenchCli, ModelSuiteOnStories260K) {
  const std::string model = testing::Stories260KGguf().string();
  ASSERT_TRUE(std::filesystem::exists(model)) << model;
  const CommandResult result = RunW8a8Tool(
      "bench --suite model --seconds 0.01 --json --model " + model, ToolOutput::kStdout);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const nlohmann::json report = nlohmann::json::parse(result.output, nullptr, false);
  ASSERT_FALSE(report.is_discarded()) << result.output;
  EXPECT_FALSE(report.contains("kernels"));
  ASSERT_TRUE(report.contains("model"));
  const nlohmann::json& plans = report["model"]["plans"];
  ASSERT_EQ(plans.size(), 3u);
  for (const nlohmann::json& plan : plans) {
    const std::string name = plan["plan"].get<std::string>();
    EXPECT_GT(Number(plan, "weight_bytes"), 0.0) << name;
    EXPECT_GT(Number(plan, "peak_rss_mib"), 0.0) << name;
    ASSERT_EQ(plan["prefill"].size(), 2u) << name;
    for (const nlohmann::json& entry : plan["prefill"]) {
      EXPECT_GT(Number(entry, "tokens_per_second"), 0.0) << name;
    }
    ASSERT_EQ(plan["decode"].size(), 4u) << name;
    for (const nlohmann::json& entry : plan["decode"]) {
      EXPECT_GT(Number(entry, "tokens_per_second"), 0.0) << name;
      // The fastest step is one of the steps that make up the mean.
      EXPECT_GT(Number(entry, "fastest_step_seconds"), 0.0) << name;
      EXPECT_LE(Number(entry, "fastest_step_seconds"), Number(entry, "step_seconds")) << name;
      if (!entry.contains("bandwidth_fraction")) continue;
      EXPECT_GE(Number(entry, "fastest_step_bandwidth_fraction"),
                Number(entry, "bandwidth_fraction"))
          << name;
    }
  }
  const nlohmann::json& ratios = report["model"]["ratios"];
  EXPECT_GT(Number(ratios["prefill_512"], "per_channel_over_fp32"), 0.0);
  EXPECT_GT(Number(ratios["prefill_128"], "auto_over_per_channel"), 0.0);
  EXPECT_GT(Number(ratios["decode_8_over_1"], "auto"), 0.0);
}

// With --interleave, every plan after the first has a ratio per round for every figure, and
// the median lies within the rounds.
TEST_F(BenchCli, InterleavedRoundsReportRatiosPerRound) {
  const std::string model = testing::Stories260KGguf().string();
  ASSERT_TRUE(std::filesystem::exists(model)) << model;
  const CommandResult result = RunW8a8Tool(
      "bench --suite model --plans per-channel,auto,fp32 --interleave 3 --seconds 0.01 "
      "--json --model " + model,
      ToolOutput::kStdout);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const nlohmann::json report = nlohmann::json::parse(result.output, nullptr, false);
  ASSERT_FALSE(report.is_discarded()) << result.output;
  ASSERT_TRUE(report["model"].contains("interleaved")) << result.output;
  const nlohmann::json& interleaved = report["model"]["interleaved"];
  EXPECT_EQ(interleaved["rounds"].get<int>(), 3);
  EXPECT_EQ(interleaved["base"].get<std::string>(), "per-channel");
  const nlohmann::json& ratios = interleaved["ratios"];
  ASSERT_EQ(ratios.size(), 6u) << ratios.dump();
  for (const char* figure : {"prefill_128", "prefill_512", "decode_1", "decode_4", "decode_8",
                             "decode_16"}) {
    ASSERT_TRUE(ratios.contains(figure)) << figure;
    ASSERT_EQ(ratios[figure].size(), 2u) << ratios[figure].dump();
    for (const char* name : {"auto_over_per_channel", "fp32_over_per_channel"}) {
      const nlohmann::json& entry = ratios[figure][name];
      ASSERT_EQ(entry["rounds"].size(), 3u) << figure << " " << name;
      for (const nlohmann::json& value : entry["rounds"]) EXPECT_GT(value.get<double>(), 0.0);
      EXPECT_GT(Number(entry, "min"), 0.0) << figure << " " << name;
      EXPECT_LE(Number(entry, "min"), Number(entry, "median")) << figure << " " << name;
      EXPECT_LE(Number(entry, "median"), Number(entry, "max")) << figure << " " << name;
    }
  }
}

TEST_F(BenchCli, NegativeInterleaveIsRejected) {
  const CommandResult result = RunW8a8Tool("bench --suite machine --interleave -1");
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("--interleave must be 0"));
}

TEST_F(BenchCli, InterleaveWithoutModelSuiteIsRejected) {
  const CommandResult result = RunW8a8Tool("bench --suite machine --interleave 2");
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("add model to --suite"));
  EXPECT_THAT(result.output, Not(HasSubstr("read bandwidth")));
}

TEST_F(BenchCli, InterleaveWithOnePlanIsRejected) {
  const CommandResult result =
      RunW8a8Tool("bench --suite model --plans auto --interleave 2 --model " +
                  testing::Stories260KGguf().string());
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("needs at least two in --plans, got 'auto'"));
  EXPECT_THAT(result.output, Not(HasSubstr("read bandwidth")));
}

TEST_F(BenchCli, UnknownSuiteIsRejected) {
  const CommandResult result = RunW8a8Tool("bench --suite disk");
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("unknown suite 'disk'"));
}

TEST_F(BenchCli, ModelSuiteWithoutModelIsRejected) {
  const CommandResult result = RunW8a8Tool("bench --suite model");
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("needs --model"));
}

TEST_F(BenchCli, MissingModelIsRejectedBeforeMeasuring) {
  const std::string missing =
      (std::filesystem::temp_directory_path() / "w8a8-no-such-model").string();
  const CommandResult result = RunW8a8Tool("bench --suite machine,model --model " + missing);
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("--model " + missing + " does not exist"));
  EXPECT_THAT(result.output, Not(HasSubstr("read bandwidth")));
}

TEST_F(BenchCli, NonPositiveSecondsIsRejected) {
  const CommandResult result = RunW8a8Tool("bench --seconds 0");
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("--seconds must be positive"));
}

}  // namespace
}  // namespace w8a8
