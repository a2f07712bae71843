// The kernels and model suites of `w8a8 bench`. Each returns its figures as JSON, with rates
// stated as fractions of the machine ceilings measured in the same run.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "tools/bench_machine.h"

namespace w8a8::tools {

// Int8Matmul (per-channel and per-group with G = 128) and GemmF32 on the Llama-3.2-1B linear
// shapes at m = 1, 4, 16, 64 and 512. Each case runs once untimed, then at least once and for
// at least `seconds`, and reports its fastest run.
absl::StatusOr<nlohmann::json> RunKernelSuite(const MachineCeilings& machine, double seconds);

// Prefill and batched decode of the model at `model_path` under the plans per-channel, auto
// and fp32, in that order, with ratios between them.
absl::StatusOr<nlohmann::json> RunModelSuite(const std::string& model_path,
                                             const MachineCeilings& machine, double seconds);

}  // namespace w8a8::tools
