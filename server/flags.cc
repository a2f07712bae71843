#include "server/flags.h"

#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

ABSL_FLAG(std::string, model, "",
          "Required. Checkpoint to serve: a Hugging Face directory (config.json and safetensors) "
          "or a GGUF v3 file.");
ABSL_FLAG(std::string, plan, "auto",
          "Weight quantization plan: fp32, per-channel, per-group, per-tensor, auto (per-group "
          "only for layers with outlier weights), or a path to a plan or config file.");
ABSL_FLAG(std::string, quant_config, "",
          "Path to a quantization config (JSON or YAML) or plan file; the same as --plan=FILE. "
          "Set --plan or --quant-config, not both.");
ABSL_FLAG(std::string, host, "0.0.0.0", "Address the gRPC listener binds to.");
ABSL_FLAG(int32_t, port, 50051, "Port of the gRPC listener; 0 picks a free port.");
ABSL_FLAG(int32_t, metrics_port, 9090,
          "Port of the Prometheus /metrics endpoint (same address as --host); 0 picks a free "
          "port, -1 disables it.");
ABSL_FLAG(std::string, metrics_host, "",
          "Address the metrics endpoint binds to; empty uses --host.");
ABSL_FLAG(int32_t, admin_port, 50052,
          "Port of the admin gRPC listener, bound to 127.0.0.1 only. Without --admin-token, admin "
          "RPCs are served only here. 0 picks a free port, -1 disables it.");
ABSL_FLAG(int64_t, max_running, 16, "Maximum sequences decoded together (continuous batching).");
ABSL_FLAG(int64_t, max_batch_tokens, 512,
          "Maximum tokens of one engine step (prompt chunks plus decode tokens).");
ABSL_FLAG(int64_t, max_queue, 256,
          "Maximum requests waiting for admission; more get RESOURCE_EXHAUSTED.");
ABSL_FLAG(int64_t, kv_cache_mib, 1024, "KV-cache memory in MiB.");
ABSL_FLAG(int64_t, kv_cache_bytes, 0, "KV-cache memory in bytes; overrides --kv-cache-mib when > 0.");
ABSL_FLAG(int64_t, max_context, 0,
          "Maximum prompt plus generated tokens of a request; 0 uses the model's context length.");
ABSL_FLAG(double, request_timeout_seconds, 0,
          "Time limit of a request that arrives without a deadline; 0 sets none.");
ABSL_FLAG(int32_t, threads, 0, "OpenMP threads for the model; 0 uses every core.");
ABSL_FLAG(std::string, log_level, "info", "Log level: trace, debug, info, warn, error or off.");
ABSL_FLAG(std::string, api_token, "",
          "Bearer token that inference RPCs must send (metadata 'authorization: Bearer TOKEN'); "
          "empty serves everyone. Prefer W8A8_API_TOKEN, since arguments are visible to other "
          "local users.");
ABSL_FLAG(std::string, admin_token, "",
          "Bearer token for admin RPCs (UpdateQuantizationConfig); empty serves them only on the "
          "127.0.0.1 admin listener. Prefer W8A8_ADMIN_TOKEN.");
ABSL_FLAG(std::string, tls_cert, "", "PEM file of the server certificate chain; enables TLS.");
ABSL_FLAG(std::string, tls_key, "", "PEM file of the server private key.");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM file of CA certificates; when set, clients must present a certificate they sign.");
ABSL_FLAG(double, grace_period_seconds, 30,
          "On SIGTERM or SIGINT, time running requests get to finish before they are ended.");
ABSL_FLAG(int64_t, max_message_bytes, 4 << 20, "Largest request message accepted, in bytes.");
ABSL_FLAG(int64_t, max_prompt_bytes, 1 << 20, "Largest prompt text, in bytes.");
ABSL_FLAG(int64_t, max_prompt_tokens, 0, "Maximum prompt tokens; 0 allows up to the context.");
ABSL_FLAG(int64_t, max_tokens_limit, 4096, "Maximum value of a request's max_tokens.");
ABSL_FLAG(int64_t, default_max_tokens, 256, "max_tokens of a request that does not set it.");
ABSL_FLAG(int32_t, max_stop_strings, 16, "Maximum stop strings per request.");
ABSL_FLAG(int32_t, max_stop_string_bytes, 256, "Maximum bytes of one stop string.");
ABSL_FLAG(int32_t, max_top_logprobs, 20, "Maximum top_logprobs of a request.");
ABSL_FLAG(int64_t, stream_interval, 1,
          "Generated tokens per GenerateStream message: a stream sends a message once at least "
          "this many new tokens are ready, or the request finished. 1 sends every token as soon "
          "as it exists; larger values send fewer messages and cost less CPU per token.");
ABSL_FLAG(int32_t, max_concurrent_streams, 100, "Maximum concurrent calls per HTTP/2 connection.");
ABSL_FLAG(int32_t, max_threads, 512,
          "Maximum gRPC threads of the synchronous RPCs (all but Generate and GenerateStream, "
          "which hold no thread while they run); calls beyond get RESOURCE_EXHAUSTED.");
ABSL_FLAG(double, shadow_fraction, 0,
          "Fraction of finished requests, in [0, 1], replayed on a low-priority background "
          "thread through an FP32 reference model to export the KL divergence and top-1 "
          "agreement of the served model; 0 turns it off. The reference model takes 4 bytes "
          "per parameter of extra memory.");
ABSL_FLAG(int64_t, shadow_queue, 64,
          "Maximum requests waiting for the shadow comparison; more are dropped and counted "
          "in w8a8_shadow_requests_total{result=\"dropped\"}.");
ABSL_FLAG(std::string, eval_text, "",
          "Text file whose perplexity under the served model RunEvaluation reports and exports "
          "as w8a8_eval_perplexity; empty skips perplexity.");
ABSL_FLAG(std::string, eval_tasks, "",
          "Multiple-choice JSONL file (fields context, choices, gold) whose accuracy "
          "RunEvaluation reports and exports as w8a8_eval_accuracy; empty skips it.");
ABSL_FLAG(double, eval_interval_seconds, 0,
          "Seconds between scheduled evaluations with --eval-text and --eval-tasks; 0 runs "
          "them only on RunEvaluation.");

namespace w8a8::server {

const std::vector<std::string>& ServerFlagNames() {
  static const auto* names = new std::vector<std::string>{
      "model", "plan", "quant_config", "host", "port", "metrics_port", "metrics_host",
      "admin_port", "max_running", "max_batch_tokens", "max_queue", "kv_cache_mib",
      "kv_cache_bytes", "max_context", "request_timeout_seconds", "threads", "log_level",
      "api_token", "admin_token", "tls_cert", "tls_key", "tls_client_ca", "grace_period_seconds",
      "max_message_bytes", "max_prompt_bytes", "max_prompt_tokens", "max_tokens_limit",
      "default_max_tokens", "max_stop_strings", "max_stop_string_bytes", "max_top_logprobs",
      "stream_interval", "max_concurrent_streams", "max_threads", "shadow_fraction", "shadow_queue",
      "eval_text", "eval_tasks", "eval_interval_seconds"};
  return *names;
}

std::string EnvironmentVariableForFlag(const std::string& flag_name) {
  return "W8A8_" + absl::AsciiStrToUpper(flag_name);
}

absl::Status ApplyEnvironmentToFlags() {
  for (const std::string& name : ServerFlagNames()) {
    const std::string variable = EnvironmentVariableForFlag(name);
    const char* value = std::getenv(variable.c_str());
    if (value == nullptr) continue;
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr) {
      return absl::InternalError(absl::StrCat("flag --", name, " is not defined"));
    }
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      return absl::InvalidArgumentError(
          absl::StrCat("environment variable ", variable, "='", value, "' is invalid: ", error));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ServerOptions> ServerOptionsFromFlags() {
  ServerOptions options;
  options.host.model_path = absl::GetFlag(FLAGS_model);
  if (options.host.model_path.empty()) {
    return absl::InvalidArgumentError(
        "--model is required (or W8A8_MODEL): pass a checkpoint directory or a .gguf file");
  }
  const std::string plan = absl::GetFlag(FLAGS_plan);
  const std::string quant_config = absl::GetFlag(FLAGS_quant_config);
  if (!quant_config.empty() && plan != "auto") {
    return absl::InvalidArgumentError(absl::StrCat("--plan=", plan, " and --quant-config=",
                                                   quant_config, " both set the plan; keep one"));
  }
  options.host.quantization.plan = quant_config.empty() ? plan : quant_config;

  EngineOptions& engine = options.host.engine;
  engine.max_running_sequences = absl::GetFlag(FLAGS_max_running);
  engine.max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens);
  engine.max_queued_requests = absl::GetFlag(FLAGS_max_queue);
  const int64_t kv_bytes = absl::GetFlag(FLAGS_kv_cache_bytes);
  const int64_t kv_mib = absl::GetFlag(FLAGS_kv_cache_mib);
  if (kv_bytes < 0 || (kv_bytes == 0 && kv_mib <= 0)) {
    return absl::InvalidArgumentError(absl::StrCat("--kv-cache-bytes=", kv_bytes,
                                                   " / --kv-cache-mib=", kv_mib,
                                                   " is invalid: set a positive size"));
  }
  engine.kv_cache_bytes = kv_bytes > 0 ? kv_bytes : kv_mib << 20;
  engine.max_context = absl::GetFlag(FLAGS_max_context);
  const double timeout = absl::GetFlag(FLAGS_request_timeout_seconds);
  if (!(timeout >= 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--request-timeout-seconds=", timeout, " is invalid: use 0 or more"));
  }
  engine.default_timeout =
      timeout > 0 ? absl::Seconds(timeout) : absl::InfiniteDuration();
  engine.max_top_logprobs = absl::GetFlag(FLAGS_max_top_logprobs);
  if (absl::Status status = engine.Validate(); !status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("engine flags: ", status.message()));
  }
  options.host.model.max_batch_tokens = engine.max_batch_tokens;
  options.host.shadow.fraction = absl::GetFlag(FLAGS_shadow_fraction);
  options.host.shadow.queue_capacity = absl::GetFlag(FLAGS_shadow_queue);
  RETURN_IF_ERROR(options.host.shadow.Validate());
  options.host.evaluation.text_path = absl::GetFlag(FLAGS_eval_text);
  options.host.evaluation.tasks_path = absl::GetFlag(FLAGS_eval_tasks);
  options.host.evaluation.interval_seconds = absl::GetFlag(FLAGS_eval_interval_seconds);
  RETURN_IF_ERROR(options.host.evaluation.Validate());

  options.listen_host = absl::GetFlag(FLAGS_host);
  options.port = absl::GetFlag(FLAGS_port);
  options.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  options.metrics_host = absl::GetFlag(FLAGS_metrics_host);
  options.admin_port = absl::GetFlag(FLAGS_admin_port);
  for (const auto& [name, port, minimum] :
       {std::tuple{"--port", options.port, 0}, std::tuple{"--metrics-port", options.metrics_port, -1},
        std::tuple{"--admin-port", options.admin_port, -1}}) {
    if (port < minimum || port > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, "=", port, " is invalid: use a port in [", minimum, ", 65535]"));
    }
  }

  options.api_token = absl::GetFlag(FLAGS_api_token);
  options.admin_token = absl::GetFlag(FLAGS_admin_token);
  options.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key = absl::GetFlag(FLAGS_tls_key);
  options.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);

  RequestLimits& limits = options.limits;
  limits.max_prompt_bytes = absl::GetFlag(FLAGS_max_prompt_bytes);
  limits.max_prompt_tokens = absl::GetFlag(FLAGS_max_prompt_tokens);
  limits.max_tokens = absl::GetFlag(FLAGS_max_tokens_limit);
  limits.default_max_tokens = absl::GetFlag(FLAGS_default_max_tokens);
  limits.max_stop_strings = absl::GetFlag(FLAGS_max_stop_strings);
  limits.max_stop_string_bytes = absl::GetFlag(FLAGS_max_stop_string_bytes);
  limits.max_top_logprobs = absl::GetFlag(FLAGS_max_top_logprobs);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.stream_interval = absl::GetFlag(FLAGS_stream_interval);
  options.max_concurrent_streams = absl::GetFlag(FLAGS_max_concurrent_streams);
  options.max_threads = absl::GetFlag(FLAGS_max_threads);
  for (const auto& [name, value] :
       {std::pair{"--max-prompt-bytes", limits.max_prompt_bytes},
        std::pair{"--max-tokens-limit", limits.max_tokens},
        std::pair{"--default-max-tokens", limits.default_max_tokens},
        std::pair{"--max-message-bytes", options.max_message_bytes},
        std::pair{"--stream-interval", options.stream_interval},
        std::pair{"--max-concurrent-streams", int64_t{options.max_concurrent_streams}},
        std::pair{"--max-threads", int64_t{options.max_threads}}}) {
    if (value < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, "=", value, " is invalid: use a positive value"));
    }
  }
  if (options.max_message_bytes > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-message-bytes=", options.max_message_bytes, " is invalid: use at most 1 GiB"));
  }
  for (const auto& [name, value] :
       {std::pair{"--max-prompt-tokens", limits.max_prompt_tokens},
        std::pair{"--max-stop-strings", int64_t{limits.max_stop_strings}},
        std::pair{"--max-stop-string-bytes", int64_t{limits.max_stop_string_bytes}},
        std::pair{"--max-top-logprobs", int64_t{limits.max_top_logprobs}}}) {
    if (value < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, "=", value, " is invalid: use 0 or more"));
    }
  }
  return options;
}

}  // namespace w8a8::server
