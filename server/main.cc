// w8a8-server: serves a LLaMA-family model over gRPC with W8A8 quantization.
//
// Flags can be written with dashes or underscores (--max-running, --max_running) and set by
// environment variables W8A8_<FLAG>; a command-line flag beats its environment variable.
// SIGTERM or SIGINT starts a graceful shutdown: health turns NOT_SERVING, new requests get
// UNAVAILABLE, running requests get --grace-period-seconds to finish, and the process exits 0.
#include <omp.h>
#include <pthread.h>
#include <signal.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "core/cli_args.h"
#include "kernels/threads.h"
#include "prometheus/registry.h"
#include "server/flags.h"
#include "server/server.h"
#include "spdlog/spdlog.h"

ABSL_DECLARE_FLAG(int32_t, threads);
ABSL_DECLARE_FLAG(std::string, log_level);
ABSL_DECLARE_FLAG(double, grace_period_seconds);

int main(int argc, char** argv) {
  // Blocked first, so every thread inherits the mask and only the sigwait below receives
  // SIGTERM and SIGINT.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::SetProgramUsageMessage(
      "Serves a LLaMA-family model over gRPC with W8A8 quantization.\n"
      "Usage: w8a8-server --model PATH [--plan auto] [--port 50051] [--flag=value ...]\n"
      "Every flag can also be set by the environment variable W8A8_<FLAG> (for example "
      "W8A8_MAX_RUNNING); the command line beats the environment.");
  if (absl::Status status = w8a8::server::ApplyEnvironmentToFlags(); !status.ok()) {
    std::fprintf(stderr, "w8a8-server: %s\n", std::string(status.message()).c_str());
    return 2;
  }
  std::vector<std::string> args = w8a8::NormalizeFlagNames(argc, argv);
  std::vector<char*> flag_argv = w8a8::ToArgv(args);
  std::vector<char*> positional =
      absl::ParseCommandLine(static_cast<int>(args.size()), flag_argv.data());
  if (positional.size() > 1) {
    std::fprintf(stderr, "w8a8-server: unexpected argument '%s'; every option is a --flag\n",
                 positional[1]);
    return 2;
  }

  const std::string log_level = absl::GetFlag(FLAGS_log_level);
  const spdlog::level::level_enum level = spdlog::level::from_str(log_level);
  if (level == spdlog::level::off && log_level != "off") {
    std::fprintf(stderr, "w8a8-server: --log-level=%s is invalid: use trace, debug, info, warn, "
                 "error or off\n", log_level.c_str());
    return 2;
  }
  spdlog::set_level(level);
  w8a8::kernels::SetComputeThreads(absl::GetFlag(FLAGS_threads));
  const double grace_seconds = absl::GetFlag(FLAGS_grace_period_seconds);
  if (!(grace_seconds >= 0) || std::isinf(grace_seconds)) {
    std::fprintf(stderr, "w8a8-server: --grace-period-seconds=%g is invalid: use 0 or more\n",
                 grace_seconds);
    return 2;
  }

  absl::StatusOr<w8a8::server::ServerOptions> options =
      w8a8::server::ServerOptionsFromFlags();
  if (!options.ok()) {
    std::fprintf(stderr, "w8a8-server: %s\n", std::string(options.status().message()).c_str());
    return 2;
  }

  spdlog::info("w8a8-server starting: model {}, plan {}, max running {}, max batch tokens {}, "
               "max queue {}, threads {}",
               options->host.model_path, options->host.quantization.plan,
               options->host.engine.max_running_sequences, options->host.engine.max_batch_tokens,
               options->host.engine.max_queued_requests, omp_get_max_threads());
  auto registry = std::make_shared<prometheus::Registry>();
  absl::StatusOr<std::unique_ptr<w8a8::server::Server>> server =
      w8a8::server::Server::Start(*options, registry);
  if (!server.ok()) {
    spdlog::error("start failed: {}", server.status().ToString());
    return 1;
  }

  // Loading runs on its own thread so a signal during a long load still stops the process.
  std::atomic<bool> load_failed{false};
  std::thread loader([&] {
    if (absl::Status status = (*server)->LoadModel(); !status.ok()) {
      load_failed = true;
      // Wakes the sigwait below.
      kill(getpid(), SIGTERM);
    }
  });

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  if (!load_failed) {
    spdlog::info("received {}, shutting down", signal_number == SIGTERM ? "SIGTERM" : "SIGINT");
  }
  loader.join();
  (*server)->Shutdown(absl::Seconds(grace_seconds));
  server->reset();
  return load_failed ? 1 : 0;
}
