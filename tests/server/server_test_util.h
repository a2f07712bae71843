// Helpers of the server suites: an in-process server on 127.0.0.1, the offline runtime to
// compare against, subprocesses and small network utilities.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "core/checkpoint.h"
#include "core/generator.h"
#include "core/model.h"
#include "core/quantization.h"
#include "core/status_macros.h"
#include "core/tokenizer.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "prometheus/registry.h"
#include "server/server.h"
#include "tests/test_util.h"
#include "w8a8serve/v1/w8a8serve.grpc.pb.h"

extern char** environ;

namespace w8a8::testing {

namespace v1 = ::w8a8serve::v1;

inline std::filesystem::path ServerBinary() { return BinaryDir() / "server" / "w8a8-server"; }
inline std::filesystem::path ClientBinary() { return BinaryDir() / "client" / "w8a8-client"; }

// Options for a server on 127.0.0.1 with ports chosen by the kernel, a 64 MiB KV cache and
// no metrics endpoint.
inline server::ServerOptions TestServerOptions() {
  server::ServerOptions options;
  options.host.model_path = Stories260KGguf().string();
  options.listen_host = "127.0.0.1";
  options.port = 0;
  options.admin_port = 0;
  options.metrics_port = -1;
  options.host.engine.kv_cache_bytes = int64_t{64} << 20;
  options.host.engine.max_queued_requests = 64;
  return options;
}

// A started and loaded server with a plaintext channel to it.
struct TestServer {
  std::shared_ptr<prometheus::Registry> registry;
  std::unique_ptr<server::Server> server;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::W8A8Serve::Stub> stub;

  std::string address() const { return absl::StrCat("127.0.0.1:", server->port()); }
  std::string admin_address() const { return absl::StrCat("127.0.0.1:", server->admin_port()); }
};

inline absl::StatusOr<std::unique_ptr<TestServer>> StartTestServer(
    const server::ServerOptions& options, bool load = true) {
  auto test_server = std::make_unique<TestServer>();
  test_server->registry = std::make_shared<prometheus::Registry>();
  ASSIGN_OR_RETURN(test_server->server, server::Server::Start(options, test_server->registry));
  if (load) RETURN_IF_ERROR(test_server->server->LoadModel());
  test_server->channel =
      grpc::CreateChannel(test_server->address(), grpc::InsecureChannelCredentials());
  test_server->stub = v1::W8A8Serve::NewStub(test_server->channel);
  return test_server;
}

inline std::unique_ptr<grpc::ClientContext> ContextWithDeadline(double seconds = 60) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)));
  return context;
}

inline v1::GenerateRequest GreedyRequest(const std::string& prompt, int64_t max_tokens) {
  v1::GenerateRequest request;
  request.set_text(prompt);
  request.mutable_sampling()->set_temperature(0);
  request.mutable_sampling()->set_max_tokens(max_tokens);
  return request;
}

// What a client read from one GenerateStream call, in the order of its messages.
struct StreamResult {
  grpc::Status status;
  std::vector<int> tokens_per_message;
  std::vector<int32_t> token_ids;
  std::vector<int32_t> logprob_token_ids;
  std::string text;
  std::vector<v1::GenerateStreamResponse> messages;

  // Adds one received message to the totals.
  void Append(const v1::GenerateStreamResponse& message) {
    tokens_per_message.push_back(message.token_ids_size());
    token_ids.insert(token_ids.end(), message.token_ids().begin(), message.token_ids().end());
    for (const v1::TokenLogprob& logprob : message.logprobs()) {
      logprob_token_ids.push_back(logprob.token_id());
    }
    text += message.text();
    messages.push_back(message);
  }
};

// Sends `request` as a Generate call and returns the response. A failed call fails the test.
inline v1::GenerateResponse Unary(TestServer& server, const v1::GenerateRequest& request) {
  auto context = ContextWithDeadline();
  v1::GenerateResponse response;
  const grpc::Status status = server.stub->Generate(context.get(), request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response;
}

// The offline runtime of core/generator.h on the same checkpoint and plan as the server.
struct OfflineRuntime {
  std::unique_ptr<Checkpoint> checkpoint;
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Generator> generator;
};

inline absl::StatusOr<std::unique_ptr<OfflineRuntime>> LoadOfflineRuntime(
    const std::string& plan = "auto") {
  auto runtime = std::make_unique<OfflineRuntime>();
  ASSIGN_OR_RETURN(runtime->checkpoint, Checkpoint::Open(Stories260KGguf()));
  ASSIGN_OR_RETURN(LinearFactory factory, LinearFactoryForPlan(*runtime->checkpoint, plan));
  ASSIGN_OR_RETURN(runtime->model, Model::Create(*runtime->checkpoint, factory));
  ASSIGN_OR_RETURN(runtime->tokenizer,
                   Tokenizer::FromSource(runtime->checkpoint->tokenizer_source()));
  runtime->generator = std::make_unique<Generator>(*runtime->model, *runtime->tokenizer);
  return runtime;
}

// Polls `condition` every 10 ms for up to `seconds`; returns whether it became true.
inline bool WaitFor(const std::function<bool()>& condition, double seconds = 30) {
  const auto end = std::chrono::steady_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
  while (std::chrono::steady_clock::now() < end) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return condition();
}

// The status a health check reports, or UNKNOWN when the call fails.
inline grpc::health::v1::HealthCheckResponse::ServingStatus CheckHealth(
    const std::shared_ptr<grpc::Channel>& channel, const std::string& service = "") {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  auto context = ContextWithDeadline(5);
  if (!stub->Check(context.get(), request, &response).ok()) {
    return grpc::health::v1::HealthCheckResponse::UNKNOWN;
  }
  return response.status();
}

// A TCP port on 127.0.0.1 that was free a moment ago: the kernel picks it for a socket that is
// closed again. Another process may take it before the caller binds it.
inline int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0) {
    socklen_t length = sizeof(address);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
    port = ntohs(address.sin_port);
  }
  ::close(fd);
  return port;
}

// Runs a shell command and returns its exit status, with its standard output in `output`.
inline int RunCommand(const std::string& command, std::string* output = nullptr) {
  CommandResult result = RunShellCommand(command);
  if (output != nullptr) *output = std::move(result.output);
  return result.exit_code;
}

// A child process with standard output and error sent to `log_path`. The destructor kills it
// (SIGKILL, by its pid) when it still runs.
class Subprocess {
 public:
  Subprocess(const std::vector<std::string>& argv, const std::filesystem::path& log_path,
             const std::vector<std::string>& extra_environment = {}) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    std::vector<std::string> arguments = argv;
    std::vector<char*> raw_argv;
    for (std::string& argument : arguments) raw_argv.push_back(argument.data());
    raw_argv.push_back(nullptr);
    std::vector<std::string> environment(extra_environment);
    for (char** entry = environ; *entry != nullptr; ++entry) environment.emplace_back(*entry);
    std::vector<char*> raw_environment;
    for (std::string& entry : environment) raw_environment.push_back(entry.data());
    raw_environment.push_back(nullptr);
    if (posix_spawn(&pid_, raw_argv[0], &actions, nullptr, raw_argv.data(),
                    raw_environment.data()) != 0) {
      pid_ = -1;
    }
    posix_spawn_file_actions_destroy(&actions);
  }

  ~Subprocess() {
    if (pid_ > 0 && !exit_code_.has_value()) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      ::waitpid(pid_, &status, 0);
    }
  }

  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  bool started() const { return pid_ > 0; }
  void Signal(int signal_number) const {
    if (pid_ > 0) ::kill(pid_, signal_number);
  }

  // Waits up to `seconds` for the exit; returns the exit code, 128 + signal when a signal
  // ended it, or nullopt when it still runs.
  std::optional<int> Wait(double seconds) {
    if (exit_code_.has_value()) return exit_code_;
    const bool exited = WaitFor(
        [&] {
          int status = 0;
          if (::waitpid(pid_, &status, WNOHANG) != pid_) return false;
          exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
          return true;
        },
        seconds);
    return exited ? exit_code_ : std::nullopt;
  }

 private:
  pid_t pid_ = -1;
  std::optional<int> exit_code_;
};

}  // namespace w8a8::testing
