// w8a8-client: command-line client of w8a8-server.
//
//   w8a8-client generate --prompt TEXT [--stream] [sampling flags]
//   w8a8-client chat --prompt TEXT [--system TEXT]
//   w8a8-client tokenize --prompt TEXT
//   w8a8-client info
//   w8a8-client quant get | analyze [--plan auto] | update (--plan NAME | --plan-file FILE) [--wait]
//   w8a8-client health
//   w8a8-client load [--concurrency 4] [--duration-seconds 10 | --requests N] [--max-tokens N]
//                    [--ignore-eos] [--unary] [--json]
//
// Exit codes: 0 success, 1 the RPC failed (the message names the status code), 2 invalid
// command line, 3 health check returned a status other than SERVING.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/connection.h"
#include "client/load_generator.h"
#include "core/cli_args.h"
#include "google/protobuf/util/json_util.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "w8a8serve/v1/w8a8serve.grpc.pb.h"

ABSL_FLAG(std::string, address, "127.0.0.1:50051", "Server address, host:port.");
ABSL_FLAG(std::string, token, "",
          "Bearer token (inference or admin); the W8A8_TOKEN environment variable sets it too.");
ABSL_FLAG(std::string, tls_ca, "", "PEM file of CAs to verify the server with; enables TLS.");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate, for servers that require one.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls-cert.");
ABSL_FLAG(std::string, tls_server_name, "",
          "Name to verify the server certificate against instead of the address host.");
ABSL_FLAG(double, timeout_seconds, 0, "Deadline of each call in seconds; 0 sets none.");
ABSL_FLAG(bool, json, false, "Print replies as JSON.");

ABSL_FLAG(std::string, prompt, "", "Prompt text (generate, load, tokenize) or user message (chat).");
ABSL_FLAG(std::string, system, "", "System message of `chat`.");
ABSL_FLAG(std::string, request_id, "", "Request id to send; empty lets the server choose.");
ABSL_FLAG(bool, stream, false, "generate/chat: print the text as it is generated.");
ABSL_FLAG(std::optional<int64_t>, max_tokens, std::nullopt, "Maximum generated tokens.");
ABSL_FLAG(std::optional<double>, temperature, std::nullopt, "Sampling temperature; 0 is greedy.");
ABSL_FLAG(std::optional<int64_t>, top_k, std::nullopt, "Top-k sampling; 0 keeps every token.");
ABSL_FLAG(std::optional<double>, top_p, std::nullopt, "Nucleus sampling mass in (0, 1].");
ABSL_FLAG(std::optional<double>, min_p, std::nullopt, "Min-p sampling threshold in [0, 1].");
ABSL_FLAG(std::optional<double>, repetition_penalty, std::nullopt, "Repetition penalty; 1 is off.");
ABSL_FLAG(std::optional<double>, frequency_penalty, std::nullopt, "Frequency penalty in [-2, 2].");
ABSL_FLAG(std::optional<double>, presence_penalty, std::nullopt, "Presence penalty in [-2, 2].");
ABSL_FLAG(std::optional<uint64_t>, seed, std::nullopt, "Sampling seed.");
ABSL_FLAG(std::vector<std::string>, stop, {}, "Comma-separated stop strings.");
ABSL_FLAG(std::vector<std::string>, stop_token_ids, {}, "Comma-separated stop token ids.");
ABSL_FLAG(bool, ignore_eos, false, "Keep generating past end-of-sequence tokens.");
ABSL_FLAG(bool, echo, false, "Return the prompt in front of the completion.");
ABSL_FLAG(bool, logprobs, false, "Return log-probabilities of the generated tokens.");
ABSL_FLAG(int32_t, top_logprobs, 0, "Alternatives per position with --logprobs.");

ABSL_FLAG(std::string, plan, "",
          "quant analyze/update: fp32, per-channel, per-group, per-tensor or auto.");
ABSL_FLAG(std::string, plan_file, "",
          "quant update: a plan or quantization config file (JSON or YAML) to send.");
ABSL_FLAG(bool, wait, false, "quant update: wait until the new model serves.");
ABSL_FLAG(std::string, service, "", "health: service name to check; empty checks the server.");
ABSL_FLAG(int32_t, concurrency, 4, "load: concurrent calls.");
ABSL_FLAG(double, duration_seconds, 10, "load: run time when --requests is 0.");
ABSL_FLAG(int64_t, requests, 0, "load: total requests; 0 runs for --duration-seconds.");
ABSL_FLAG(bool, unary, false,
          "load: call Generate, one reply per request, instead of GenerateStream; reports no "
          "time to first token or inter-token latency.");

namespace w8a8::client {
namespace {

namespace v1 = ::w8a8serve::v1;

constexpr int kExitRpcFailed = 1;
constexpr int kExitUsage = 2;
constexpr int kExitNotServing = 3;

int Fail(const std::string& rpc, const grpc::Status& status) {
  std::fprintf(stderr, "w8a8-client: %s failed: %s: %s\n", rpc.c_str(),
               StatusCodeName(status.error_code()), status.error_message().c_str());
  return kExitRpcFailed;
}

int Usage(const std::string& message) {
  std::fprintf(stderr, "w8a8-client: %s\n", message.c_str());
  return kExitUsage;
}

void PrintJson(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  std::printf("%s", json.c_str());
}

ConnectionOptions ConnectionFromFlags() {
  ConnectionOptions options;
  options.address = absl::GetFlag(FLAGS_address);
  options.token = absl::GetFlag(FLAGS_token);
  if (options.token.empty()) {
    if (const char* token = std::getenv("W8A8_TOKEN"); token != nullptr) options.token = token;
  }
  options.tls_ca = absl::GetFlag(FLAGS_tls_ca);
  options.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key = absl::GetFlag(FLAGS_tls_key);
  options.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  options.timeout_seconds = absl::GetFlag(FLAGS_timeout_seconds);
  return options;
}

// Builds a GenerateRequest from the sampling and output flags; `prompt` is set by the caller.
absl::StatusOr<v1::GenerateRequest> RequestFromFlags() {
  v1::GenerateRequest request;
  request.set_request_id(absl::GetFlag(FLAGS_request_id));
  v1::SamplingParameters& sampling = *request.mutable_sampling();
  if (auto v = absl::GetFlag(FLAGS_max_tokens)) sampling.set_max_tokens(*v);
  if (auto v = absl::GetFlag(FLAGS_temperature)) sampling.set_temperature(*v);
  if (auto v = absl::GetFlag(FLAGS_top_k)) sampling.set_top_k(*v);
  if (auto v = absl::GetFlag(FLAGS_top_p)) sampling.set_top_p(*v);
  if (auto v = absl::GetFlag(FLAGS_min_p)) sampling.set_min_p(*v);
  if (auto v = absl::GetFlag(FLAGS_repetition_penalty)) sampling.set_repetition_penalty(*v);
  if (auto v = absl::GetFlag(FLAGS_frequency_penalty)) sampling.set_frequency_penalty(*v);
  if (auto v = absl::GetFlag(FLAGS_presence_penalty)) sampling.set_presence_penalty(*v);
  if (auto v = absl::GetFlag(FLAGS_seed)) sampling.set_seed(*v);
  for (const std::string& stop : absl::GetFlag(FLAGS_stop)) sampling.add_stop(stop);
  for (const std::string& id : absl::GetFlag(FLAGS_stop_token_ids)) {
    int32_t value = 0;
    if (!absl::SimpleAtoi(id, &value)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--stop-token-ids entry '", id, "' is not an integer"));
    }
    sampling.add_stop_token_ids(value);
  }
  if (absl::GetFlag(FLAGS_ignore_eos)) sampling.set_ignore_eos(true);
  request.set_echo(absl::GetFlag(FLAGS_echo));
  request.set_logprobs(absl::GetFlag(FLAGS_logprobs));
  request.set_top_logprobs(absl::GetFlag(FLAGS_top_logprobs));
  return request;
}

int RunGenerate(v1::W8A8Serve::Stub& stub, const ConnectionOptions& connection,
                const v1::GenerateRequest& request) {
  const bool json = absl::GetFlag(FLAGS_json);
  grpc::ClientContext context;
  PrepareContext(connection, context);
  if (!absl::GetFlag(FLAGS_stream)) {
    v1::GenerateResponse response;
    const grpc::Status status = stub.Generate(&context, request, &response);
    if (!status.ok()) return Fail("Generate", status);
    if (json) {
      PrintJson(response);
    } else {
      std::printf("%s\n", response.text().c_str());
    }
    return 0;
  }
  std::unique_ptr<grpc::ClientReader<v1::GenerateStreamResponse>> reader =
      stub.GenerateStream(&context, request);
  v1::GenerateStreamResponse message;
  while (reader->Read(&message)) {
    if (json) {
      std::string line;
      google::protobuf::util::JsonPrintOptions options;
      options.preserve_proto_field_names = true;
      (void)google::protobuf::util::MessageToJsonString(message, &line, options);
      std::printf("%s\n", line.c_str());
    } else {
      std::printf("%s", message.text().c_str());
    }
    std::fflush(stdout);
  }
  const grpc::Status status = reader->Finish();
  if (!json) std::printf("\n");
  if (!status.ok()) return Fail("GenerateStream", status);
  return 0;
}

int RunQuant(v1::W8A8Serve::Stub& stub, const ConnectionOptions& connection,
             const std::vector<std::string>& args) {
  if (args.size() != 2) return Usage("quant requires one action: get, analyze or update");
  grpc::ClientContext context;
  PrepareContext(connection, context);
  const std::string& action = args[1];
  if (action == "get") {
    v1::QuantizationConfig response;
    const grpc::Status status =
        stub.GetQuantizationConfig(&context, v1::GetQuantizationConfigRequest(), &response);
    if (!status.ok()) return Fail("GetQuantizationConfig", status);
    PrintJson(response);
    return 0;
  }
  if (action == "analyze") {
    v1::AnalyzeQuantizationRequest request;
    request.set_plan(absl::GetFlag(FLAGS_plan));
    v1::AnalyzeQuantizationResponse response;
    const grpc::Status status = stub.AnalyzeQuantization(&context, request, &response);
    if (!status.ok()) return Fail("AnalyzeQuantization", status);
    if (absl::GetFlag(FLAGS_json)) {
      PrintJson(response);
    } else {
      std::printf("%s\n", response.analysis_json().c_str());
    }
    return 0;
  }
  if (action == "update") {
    v1::UpdateQuantizationConfigRequest request;
    const std::string plan = absl::GetFlag(FLAGS_plan);
    const std::string plan_file = absl::GetFlag(FLAGS_plan_file);
    if (plan.empty() == plan_file.empty()) {
      return Usage("quant update needs exactly one of --plan NAME and --plan-file FILE");
    }
    if (!plan.empty()) {
      request.set_plan(plan);
    } else {
      std::ifstream in(plan_file, std::ios::binary);
      if (!in) return Usage("cannot read --plan-file '" + plan_file + "'");
      std::stringstream contents;
      contents << in.rdbuf();
      request.set_plan_json(contents.str());
    }
    request.set_wait(absl::GetFlag(FLAGS_wait));
    v1::UpdateQuantizationConfigResponse response;
    const grpc::Status status = stub.UpdateQuantizationConfig(&context, request, &response);
    if (!status.ok()) return Fail("UpdateQuantizationConfig", status);
    PrintJson(response);
    return response.update_state() == v1::UPDATE_STATE_FAILED ? kExitRpcFailed : 0;
  }
  return Usage("unknown quant action '" + action + "': use get, analyze or update");
}

int RunHealth(const std::shared_ptr<grpc::Channel>& channel,
              const ConnectionOptions& connection) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  PrepareContext(connection, context);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(absl::GetFlag(FLAGS_service));
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) return Fail("Health.Check", status);
  std::printf("%s\n",
              grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()).c_str());
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING ? 0
                                                                             : kExitNotServing;
}

int Run(const std::vector<std::string>& args) {
  const ConnectionOptions connection = ConnectionFromFlags();
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = CreateChannel(connection);
  if (!channel.ok()) return Usage(std::string(channel.status().message()));
  auto stub = v1::W8A8Serve::NewStub(*channel);
  const std::string& command = args[0];
  const std::string prompt = absl::GetFlag(FLAGS_prompt);

  if (command == "generate" || command == "chat" || command == "load") {
    if (prompt.empty()) return Usage(command + " needs --prompt");
    absl::StatusOr<v1::GenerateRequest> request = RequestFromFlags();
    if (!request.ok()) return Usage(std::string(request.status().message()));
    if (command == "chat") {
      v1::ChatMessages& chat = *request->mutable_chat();
      if (const std::string system = absl::GetFlag(FLAGS_system); !system.empty()) {
        v1::ChatMessage& message = *chat.add_messages();
        message.set_role("system");
        message.set_content(system);
      }
      v1::ChatMessage& message = *chat.add_messages();
      message.set_role("user");
      message.set_content(prompt);
    } else {
      request->set_text(prompt);
    }
    if (command != "load") return RunGenerate(*stub, connection, *request);

    LoadOptions load;
    load.concurrency = absl::GetFlag(FLAGS_concurrency);
    load.duration_seconds = absl::GetFlag(FLAGS_duration_seconds);
    load.requests = absl::GetFlag(FLAGS_requests);
    load.unary = absl::GetFlag(FLAGS_unary);
    if (load.concurrency < 1) return Usage("--concurrency must be at least 1");
    if (load.requests < 0 || (load.requests == 0 && !(load.duration_seconds > 0))) {
      return Usage("load needs --requests > 0 or --duration-seconds > 0");
    }
    request->clear_request_id();
    load.request = *std::move(request);
    const LoadReport report = RunLoad(*channel, connection, load);
    if (absl::GetFlag(FLAGS_json)) {
      std::printf("%s\n", LoadReportToJson(report).dump(2).c_str());
    } else {
      std::printf("%s", FormatLoadReport(report).c_str());
    }
    return report.failed > 0 ? kExitRpcFailed : 0;
  }
  if (command == "tokenize") {
    grpc::ClientContext context;
    PrepareContext(connection, context);
    v1::TokenizeRequest request;
    request.set_text(prompt);
    v1::TokenizeResponse response;
    const grpc::Status status = stub->Tokenize(&context, request, &response);
    if (!status.ok()) return Fail("Tokenize", status);
    if (absl::GetFlag(FLAGS_json)) {
      PrintJson(response);
    } else {
      std::string ids;
      for (int i = 0; i < response.token_ids_size(); ++i) {
        absl::StrAppend(&ids, i == 0 ? "" : " ", response.token_ids(i));
      }
      std::printf("%s\n", ids.c_str());
    }
    return 0;
  }
  if (command == "info") {
    grpc::ClientContext context;
    PrepareContext(connection, context);
    v1::ModelInfo response;
    const grpc::Status status = stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &response);
    if (!status.ok()) return Fail("GetModelInfo", status);
    PrintJson(response);
    return 0;
  }
  if (command == "quant") return RunQuant(*stub, connection, args);
  if (command == "health") return RunHealth(*channel, connection);
  return Usage("unknown command '" + command +
               "': use generate, chat, tokenize, info, quant, health or load");
}

}  // namespace
}  // namespace w8a8::client

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Client of w8a8-server.\nUsage: w8a8-client COMMAND [--flag=value ...]\n"
      "Commands: generate, chat, tokenize, info, quant get|analyze|update, health, load.");
  std::vector<std::string> args = w8a8::NormalizeFlagNames(argc, argv);
  std::vector<char*> flag_argv = w8a8::ToArgv(args);
  std::vector<char*> positional =
      absl::ParseCommandLine(static_cast<int>(args.size()), flag_argv.data());
  if (positional.size() < 2) {
    std::fprintf(stderr, "w8a8-client: missing command; run `w8a8-client --help`\n");
    return 2;
  }
  return w8a8::client::Run(std::vector<std::string>(positional.begin() + 1, positional.end()));
}
