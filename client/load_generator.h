// The `load` command: concurrent GenerateStream calls (or unary Generate calls) with latency
// percentiles.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "client/connection.h"
#include "nlohmann/json.hpp"
#include "w8a8serve/v1/w8a8serve.grpc.pb.h"

namespace w8a8::client {

struct LoadOptions {
  int concurrency = 4;            // Calls in flight at once.
  double duration_seconds = 10;   // Used when `requests` is 0.
  int64_t requests = 0;           // Total requests; 0 runs for duration_seconds.
  // Calls Generate, which returns the whole completion in one reply, instead of
  // GenerateStream. The report then has no time to first token and no inter-token latency.
  bool unary = false;
  w8a8serve::v1::GenerateRequest request;  // Sent by every call; request_id stays empty.
};

struct Percentiles {
  int64_t count = 0;
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
};

struct LoadReport {
  int concurrency = 0;
  bool unary = false;
  int64_t succeeded = 0;
  int64_t failed = 0;
  std::map<std::string, int64_t> errors;  // gRPC status code name -> count.
  std::string first_error;                // Message of the first failure.
  int64_t generated_tokens = 0;
  double seconds = 0;
  double cpu_seconds = 0;  // User plus system CPU time of this process during the load.
  double requests_per_second = 0;
  double tokens_per_second = 0;
  Percentiles time_to_first_token;  // Seconds from sending to the first token (streams only).
  Percentiles inter_token_latency;  // Seconds per token after the first (streams only).
  Percentiles request_latency;      // Seconds from sending to the end of the call.
};

// Runs the load and blocks until every call has finished.
LoadReport RunLoad(const std::shared_ptr<grpc::Channel>& channel,
                   const ConnectionOptions& connection, const LoadOptions& options);

nlohmann::json LoadReportToJson(const LoadReport& report);
std::string FormatLoadReport(const LoadReport& report);

}  // namespace w8a8::client
