// The kernels and model suites of `w8a8 bench`. Each returns its figures as JSON, with rates
// stated as fractions of the machine ceilings measured in the same run.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/engine.h"
#include "nlohmann/json.hpp"
#include "tools/bench_machine.h"

namespace w8a8::tools {

// Int8Matmul (per-channel and per-group with G = 128) and GemmF32 on the Llama-3.2-1B linear
// shapes at m = 1, 4, 16, 64 and 512. Each case runs once untimed, then at least once and for
// at least `seconds`, and reports its fastest run.
absl::StatusOr<nlohmann::json> RunKernelSuite(const MachineCeilings& machine, double seconds);

// The plans the model suite runs: those of --plans, or per-channel, auto and fp32.
std::vector<std::string> ModelSuitePlans();

// Prefill and batched decode of the model at `model_path` under the plans of --plans (by
// default per-channel, auto and fp32, in that order), with ratios between them. With
// `interleave_rounds` > 0 and two plans or more, every plan is then loaded at once and timed
// in that many rounds, the plans taking turns on each figure, with each plan's ratio to the
// first plan per round.
absl::StatusOr<nlohmann::json> RunModelSuite(const std::string& model_path,
                                             const MachineCeilings& machine, double seconds,
                                             int interleave_rounds);

// The work of the engine suite, the same as `w8a8-client load` sends to w8a8-server.
struct EngineSuiteOptions {
  std::string model_path;
  std::string plan = "fp32";  // A --plan value; fp32 runs the checkpoint's own weights.
  std::string prompt;         // Text of every request, encoded as the server encodes it.
  int64_t requests = 64;      // Requests in total.
  int64_t concurrency = 4;    // Requests in flight at once.
  int64_t max_tokens = 64;    // Generated tokens of every request (end-of-sequence is ignored).
  EngineOptions engine;       // The defaults are the server's flag defaults.
};

// Runs `options.requests` requests through the continuous batching engine with
// `options.concurrency` in flight, each finished request submitting the next. Reports the
// fields of `w8a8-client load --json` (throughput, time to first token, inter-token and request
// latency percentiles) plus the model load time and the work settings. Blocks for the whole run.
absl::StatusOr<nlohmann::json> RunEngineSuite(const EngineSuiteOptions& options);

}  // namespace w8a8::tools
