#include "client/load_generator.h"

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"

namespace w8a8::client {
namespace {

namespace v1 = ::w8a8serve::v1;
using Clock = std::chrono::steady_clock;

double SecondsBetween(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

// User plus system CPU seconds of every thread of this process so far.
double ProcessCpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& time) {
    return static_cast<double>(time.tv_sec) + static_cast<double>(time.tv_usec) * 1e-6;
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

// Nearest-rank percentiles.
Percentiles Summarize(std::vector<double> samples) {
  Percentiles result;
  if (samples.empty()) return result;
  std::sort(samples.begin(), samples.end());
  auto rank = [&](double q) {
    const size_t index = static_cast<size_t>(std::ceil(q * static_cast<double>(samples.size())));
    return samples[std::clamp<size_t>(index, 1, samples.size()) - 1];
  };
  result.count = static_cast<int64_t>(samples.size());
  double sum = 0;
  for (double sample : samples) sum += sample;
  result.mean = sum / static_cast<double>(samples.size());
  result.p50 = rank(0.5);
  result.p90 = rank(0.9);
  result.p99 = rank(0.99);
  result.max = samples.back();
  return result;
}

nlohmann::json PercentilesToJson(const Percentiles& p) {
  return {{"count", p.count}, {"mean", p.mean}, {"p50", p.p50},
          {"p90", p.p90},     {"p99", p.p99},   {"max", p.max}};
}

}  // namespace

LoadReport RunLoad(const std::shared_ptr<grpc::Channel>& channel,
                   const ConnectionOptions& connection, const LoadOptions& options) {
  std::unique_ptr<v1::W8A8Serve::Stub> stub = v1::W8A8Serve::NewStub(channel);
  std::mutex mutex;
  LoadReport report;
  report.concurrency = options.concurrency;
  report.unary = options.unary;
  std::vector<double> ttft, itl, latency;
  std::atomic<int64_t> started{0};

  const double cpu_start = ProcessCpuSeconds();
  const Clock::time_point start = Clock::now();
  const Clock::time_point end =
      start + std::chrono::microseconds(static_cast<int64_t>(options.duration_seconds * 1e6));
  auto take_request = [&] {
    if (options.requests > 0) return started.fetch_add(1) < options.requests;
    return Clock::now() < end;
  };

  // One call: the tokens it generated, the seconds to its first token (negative when
  // unknown) and the gaps between tokens.
  struct Call {
    grpc::Status status;
    int64_t tokens = 0;
    double first_token = -1;
    std::vector<double> gaps;
  };
  auto stream_call = [&](grpc::ClientContext& context, Clock::time_point sent) {
    Call call;
    std::unique_ptr<grpc::ClientReader<v1::GenerateStreamResponse>> reader =
        stub->GenerateStream(&context, options.request);
    // The arrival time and token count of each message. With echo the first messages carry
    // the prompt's ids too, and only the last message's usage gives their number.
    std::vector<std::pair<Clock::time_point, int64_t>> arrivals;
    int64_t echoed = 0;
    v1::GenerateStreamResponse message;
    while (reader->Read(&message)) {
      if (message.has_usage() && options.request.echo()) {
        echoed = message.usage().prompt_tokens();
      }
      if (message.token_ids_size() > 0) {
        arrivals.emplace_back(Clock::now(), message.token_ids_size());
      }
    }
    call.status = reader->Finish();

    Clock::time_point previous = sent;
    for (auto [now, count] : arrivals) {
      const int64_t prompt_ids = std::min(echoed, count);
      echoed -= prompt_ids;
      count -= prompt_ids;
      if (count == 0) continue;
      if (call.first_token < 0) {
        call.first_token = SecondsBetween(sent, now);
        // Tokens that arrive with the first one share its latency.
        for (int64_t i = 1; i < count; ++i) call.gaps.push_back(0.0);
      } else {
        for (int64_t i = 0; i < count; ++i) {
          call.gaps.push_back(SecondsBetween(previous, now) / static_cast<double>(count));
        }
      }
      previous = now;
      call.tokens += count;
    }
    return call;
  };
  auto unary_call = [&](grpc::ClientContext& context) {
    Call call;
    v1::GenerateResponse response;
    call.status = stub->Generate(&context, options.request, &response);
    // With echo, token_ids also contains the prompt, so the count comes from usage.
    call.tokens = response.usage().completion_tokens();
    return call;
  };

  auto worker = [&] {
    while (take_request()) {
      grpc::ClientContext context;
      PrepareContext(connection, context);
      const Clock::time_point sent = Clock::now();
      Call call = options.unary ? unary_call(context) : stream_call(context, sent);
      const double total = SecondsBetween(sent, Clock::now());
      std::lock_guard<std::mutex> lock(mutex);
      if (call.status.ok()) {
        ++report.succeeded;
        report.generated_tokens += call.tokens;
        if (call.first_token >= 0) ttft.push_back(call.first_token);
        itl.insert(itl.end(), call.gaps.begin(), call.gaps.end());
        latency.push_back(total);
      } else {
        ++report.failed;
        ++report.errors[StatusCodeName(call.status.error_code())];
        if (report.first_error.empty()) report.first_error = call.status.error_message();
      }
    }
  };
  std::vector<std::thread> threads;
  for (int i = 0; i < options.concurrency; ++i) threads.emplace_back(worker);
  for (std::thread& thread : threads) thread.join();

  report.seconds = SecondsBetween(start, Clock::now());
  report.cpu_seconds = ProcessCpuSeconds() - cpu_start;
  if (report.seconds > 0) {
    report.requests_per_second = static_cast<double>(report.succeeded) / report.seconds;
    report.tokens_per_second = static_cast<double>(report.generated_tokens) / report.seconds;
  }
  report.time_to_first_token = Summarize(std::move(ttft));
  report.inter_token_latency = Summarize(std::move(itl));
  report.request_latency = Summarize(std::move(latency));
  return report;
}

nlohmann::json LoadReportToJson(const LoadReport& report) {
  return {{"concurrency", report.concurrency},
          {"unary", report.unary},
          {"succeeded", report.succeeded},
          {"failed", report.failed},
          {"errors", report.errors},
          {"first_error", report.first_error},
          {"generated_tokens", report.generated_tokens},
          {"seconds", report.seconds},
          {"cpu_seconds", report.cpu_seconds},
          {"requests_per_second", report.requests_per_second},
          {"tokens_per_second", report.tokens_per_second},
          {"time_to_first_token_seconds", PercentilesToJson(report.time_to_first_token)},
          {"inter_token_latency_seconds", PercentilesToJson(report.inter_token_latency)},
          {"request_latency_seconds", PercentilesToJson(report.request_latency)}};
}

std::string FormatLoadReport(const LoadReport& report) {
  auto row = [](const char* name, const Percentiles& p) {
    if (p.count == 0) return absl::StrFormat("%-22s %10s\n", name, "none");
    return absl::StrFormat("%-22s %10.2f %10.2f %10.2f %10.2f %10.2f\n", name, p.mean * 1e3,
                           p.p50 * 1e3, p.p90 * 1e3, p.p99 * 1e3, p.max * 1e3);
  };
  std::string text = absl::StrFormat(
      "%d concurrent %s, %.2f s: %d succeeded, %d failed; %.2f requests/s, "
      "%.1f generated tokens/s\n",
      report.concurrency, report.unary ? "unary calls" : "streams", report.seconds,
      report.succeeded, report.failed, report.requests_per_second, report.tokens_per_second);
  for (const auto& [code, count] : report.errors) {
    text += absl::StrFormat("  %s: %d\n", code, count);
  }
  if (!report.first_error.empty()) text += "  first error: " + report.first_error + "\n";
  text += absl::StrFormat("%-22s %10s %10s %10s %10s %10s\n", "latency (ms)", "mean", "p50",
                          "p90", "p99", "max");
  text += row("time to first token", report.time_to_first_token);
  text += row("inter-token", report.inter_token_latency);
  text += row("request", report.request_latency);
  return text;
}

}  // namespace w8a8::client
