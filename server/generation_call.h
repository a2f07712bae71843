// The gRPC callback reactors of Generate and GenerateStream, and the state each call shares
// with the engine's update callback.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "core/engine.h"
#include "grpcpp/support/server_callback.h"
#include "server/model_host.h"
#include "w8a8serve/v1/w8a8serve.pb.h"

namespace w8a8::server {

// The gRPC status of a failed generation call: the code of `status` and its message after
// "request <request_id>: ".
grpc::Status GenerationErrorStatus(const std::string& request_id, const absl::Status& status);

// An admitted generation call.
struct GenerationCallInfo {
  std::string request_id;
  std::shared_ptr<ModelHost> host;  // Held until the call's reactor is done.
  std::vector<int32_t> prompt_ids;  // The start of the shadow sample.
  bool logprobs = false;            // Replies carry log-probabilities.
};

// The state of one Generate or GenerateStream call, shared by its gRPC reactor and the engine's
// update callback (EngineCallback). The engine may call back after the client is gone, until
// the final update. Finish is called exactly once, only after the final update (or by Reject
// when Submit failed), so the reactor, which deletes itself in OnDone, outlives every call into
// it. The engine callback's reference keeps this state alive until the engine drops it.
//
// The engine thread builds a reply message and starts its write itself when no write of the
// call is in flight, and the write's completion sends what queued meanwhile. No lock is held
// while a message is built, a write or Finish starts, or a line is logged.
class GenerationCall : public std::enable_shared_from_this<GenerationCall> {
 public:
  virtual ~GenerationCall() = default;

  // The callback to pass to Engine::Submit. It shares ownership of this state.
  GenerationCallback EngineCallback();

  // Records that Engine::Submit accepted the request, so cancellations reach the engine.
  void MarkSubmitted();

  // Ends the call with the error of a rejected Engine::Submit. Call it instead of
  // MarkSubmitted, before the method handler returns.
  virtual void Reject(const absl::Status& status) = 0;

 protected:
  explicit GenerationCall(GenerationCallInfo info);

  // Handles one update on the engine thread. Every update arrives in order and the last one
  // has `finished` set.
  virtual void OnUpdate(GenerationUpdate update) = 0;

  // Asks the engine once to stop the request (the reactor's OnCancel, or a failed write). It
  // does nothing before MarkSubmitted or after the final update arrived. `reason` goes to the
  // log.
  void CancelRequest(const char* reason);

  // Drops the host reference, from the reactor's OnDone. OnDone comes after Finish, and every
  // use of the host comes before Finish. So the engine thread never drops the last host
  // reference, which would destroy the engine from its own thread.
  void ReleaseHost();

  // Appends the generated ids of `update` to the shadow sample. Engine thread only.
  void RecordTokens(const GenerationUpdate& update);

  // Marks the final update `last` as received and returns the status the call ends with: its
  // own, or CANCELLED when it succeeded after a cancellation. Logs the request's end and, on
  // success, offers the shadow sample. Engine thread only.
  absl::Status Complete(const GenerationUpdate& last);

  const std::string& request_id() const { return info_.request_id; }
  const Tokenizer& tokenizer() const { return info_.host->tokenizer(); }
  bool logprobs() const { return info_.logprobs; }

  absl::Mutex mutex_;

 private:
  // The host is reset by ReleaseHost only, after its last use.
  GenerationCallInfo info_;
  std::vector<int32_t> sequence_;  // Prompt and generated ids. Engine thread only.
  bool submitted_ ABSL_GUARDED_BY(mutex_) = false;
  bool final_received_ ABSL_GUARDED_BY(mutex_) = false;
  bool cancel_sent_ ABSL_GUARDED_BY(mutex_) = false;
};

// Creates the reactor of a Generate call and its state in `call`. The engine thread fills
// `response` and calls Finish on the final update.
grpc::ServerUnaryReactor* NewUnaryGeneration(GenerationCallInfo info,
                                             w8a8serve::v1::GenerateResponse* response,
                                             std::shared_ptr<GenerationCall>& call);

// Creates a GenerateStream reactor that finishes at once with the error of a request rejected
// before it reached the engine.
grpc::ServerWriteReactor<w8a8serve::v1::GenerateStreamResponse>* NewRejectedStream(
    const std::string& request_id, const absl::Status& status);

// Creates the reactor of a GenerateStream call and its state in `call`. A message is written
// once `min_tokens` generated tokens or the final update are queued and no write is in flight.
// Each message carries every update queued since the previous one.
grpc::ServerWriteReactor<w8a8serve::v1::GenerateStreamResponse>* NewStreamGeneration(
    GenerationCallInfo info, int64_t min_tokens, std::shared_ptr<GenerationCall>& call);

}  // namespace w8a8::server
