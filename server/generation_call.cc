#include "server/generation_call.h"

#include <exception>
#include <optional>
#include <span>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "server/grpc_status.h"
#include "spdlog/spdlog.h"

namespace w8a8::server {
namespace {

namespace v1 = ::w8a8serve::v1;

constexpr char kClientCancelled[] = "the client cancelled the call or its deadline passed";

int64_t ModelVersion(const std::string& model_label) {
  int64_t version = 0;
  return absl::SimpleAtoi(model_label, &version) ? version : 0;
}

v1::FinishReason ToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case FinishReason::kCancelled:
    case FinishReason::kDeadline:
    case FinishReason::kError:
      return v1::FINISH_REASON_ABORT;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

void AppendLogprob(const Tokenizer& tokenizer, const GeneratedToken& token,
                   google::protobuf::RepeatedPtrField<v1::TokenLogprob>& out) {
  v1::TokenLogprob& entry = *out.Add();
  entry.set_token_id(token.token_id);
  entry.set_token(tokenizer.TokenString(token.token_id));
  if (token.logprob.has_value()) entry.set_logprob(*token.logprob);
  for (const LogprobAlternative& alternative : token.top_logprobs) {
    v1::TopLogprob& top = *entry.add_top_logprobs();
    top.set_token_id(alternative.token_id);
    top.set_token(tokenizer.TokenString(alternative.token_id));
    top.set_logprob(alternative.logprob);
  }
}

void FillUsage(const GenerationUpdate& update, v1::Usage& usage, v1::Timings& timings) {
  usage.set_prompt_tokens(static_cast<int32_t>(update.usage.prompt_tokens));
  usage.set_completion_tokens(static_cast<int32_t>(update.usage.generated_tokens));
  usage.set_total_tokens(
      static_cast<int32_t>(update.usage.prompt_tokens + update.usage.generated_tokens));
  timings.set_queue_seconds(update.timings.queue_seconds);
  timings.set_time_to_first_token_seconds(update.timings.time_to_first_token_seconds);
  timings.set_total_seconds(update.timings.end_to_end_seconds);
  timings.set_prefill_seconds(update.timings.prefill_seconds);
  timings.set_decode_seconds(update.timings.decode_seconds);
}

// Fills the tokens, log-probabilities and text of one update into a reply message (unary or
// stream), which both have the same field names.
template <typename Reply>
void AppendUpdate(const Tokenizer& tokenizer, bool logprobs, const GenerationUpdate& update,
                  Reply& reply) {
  for (const GeneratedToken& token : update.prompt_tokens) {
    reply.add_token_ids(token.token_id);
    if (logprobs) AppendLogprob(tokenizer, token, *reply.mutable_logprobs());
  }
  for (const GeneratedToken& token : update.tokens) {
    reply.add_token_ids(token.token_id);
    if (logprobs) AppendLogprob(tokenizer, token, *reply.mutable_logprobs());
  }
  reply.mutable_text()->append(update.prompt_text);
  reply.mutable_text()->append(update.text);
  if (update.finished) {
    reply.set_finish_reason(ToProto(update.finish_reason));
    FillUsage(update, *reply.mutable_usage(), *reply.mutable_timings());
  }
  reply.set_model_version(ModelVersion(update.model_label));
}

grpc::Status FinalGrpcStatus(const std::string& request_id, const absl::Status& status) {
  return status.ok() ? grpc::Status::OK : GenerationErrorStatus(request_id, status);
}

// A Generate call. The engine thread appends every update to the response and calls Finish
// on the final one.
class UnaryCall final : public GenerationCall {
 public:
  class Reactor final : public grpc::ServerUnaryReactor {
   public:
    void OnCancel() override { call_->CancelRequest(kClientCancelled); }
    void OnDone() override {
      call_->ReleaseHost();
      delete this;
    }

   private:
    friend class UnaryCall;
    std::shared_ptr<UnaryCall> call_;  // Set by Create.
  };

  UnaryCall(GenerationCallInfo info, Reactor* reactor, v1::GenerateResponse* response)
      : GenerationCall(std::move(info)), reactor_(reactor), response_(response) {}

  static std::shared_ptr<UnaryCall> Create(GenerationCallInfo info,
                                           v1::GenerateResponse* response, Reactor*& reactor) {
    reactor = new Reactor();
    auto call = std::make_shared<UnaryCall>(std::move(info), reactor, response);
    reactor->call_ = call;
    return call;
  }

  void Reject(const absl::Status& status) override {
    reactor_->Finish(GenerationErrorStatus(request_id(), status));
  }

 private:
  void OnUpdate(GenerationUpdate update) override {
    RecordTokens(update);
    AppendUpdate(tokenizer(), logprobs(), update, *response_);
    if (!update.finished) return;

    const absl::Status status = Complete(update);
    response_->set_request_id(request_id());
    if (!status.ok()) response_->Clear();
    // Nothing touches this call's reactor or response after Finish, since OnDone may run at
    // any time from now on.
    reactor_->Finish(FinalGrpcStatus(request_id(), status));
  }

  Reactor* const reactor_;
  v1::GenerateResponse* const response_;  // Owned by gRPC until OnDone.
};

// A GenerateStream call. Updates queue up until a message is due: at least `min_tokens`
// generated tokens or the final update queued, and no write in flight. The engine thread
// writes it when it queues such an update, or OnWriteDone writes it when the previous write
// completes. The final message goes out with the status through StartWriteAndFinish. A failed
// final update adds no message: the call finishes with its status after the queued tokens are
// written.
class StreamCall final : public GenerationCall {
 public:
  class Reactor final : public grpc::ServerWriteReactor<v1::GenerateStreamResponse> {
   public:
    void OnWriteDone(bool ok) override { call_->WriteDone(ok); }
    void OnCancel() override { call_->Stop(kClientCancelled); }
    void OnDone() override {
      call_->ReleaseHost();
      delete this;
    }

   private:
    friend class StreamCall;
    std::shared_ptr<StreamCall> call_;  // Set by Create.
  };

  StreamCall(GenerationCallInfo info, int64_t min_tokens, Reactor* reactor)
      : GenerationCall(std::move(info)), reactor_(reactor), min_tokens_(min_tokens) {}

  static std::shared_ptr<StreamCall> Create(GenerationCallInfo info, int64_t min_tokens,
                                            Reactor*& reactor) {
    reactor = new Reactor();
    auto call = std::make_shared<StreamCall>(std::move(info), min_tokens, reactor);
    reactor->call_ = call;
    return call;
  }

  void Reject(const absl::Status& status) override {
    {
      absl::MutexLock lock(&mutex_);
      finished_ = true;
    }
    reactor_->Finish(GenerationErrorStatus(request_id(), status));
  }

 private:
  void OnUpdate(GenerationUpdate update) override {
    RecordTokens(update);
    std::optional<absl::Status> final_status;
    if (update.finished) final_status = Complete(update);
    {
      absl::MutexLock lock(&mutex_);
      if (final_status.has_value()) final_status_ = final_status;
      // A failed final update is not queued, so it sends no message.
      const bool sendable = !update.finished || final_status->ok();
      if (!stopped_ && sendable) {
        queued_tokens_ += static_cast<int64_t>(update.tokens.size());
        queued_.push_back(std::move(update));
      }
    }
    Advance();
  }

  void WriteDone(bool ok) {
    {
      absl::MutexLock lock(&mutex_);
      writing_ = false;
    }
    if (!ok) {
      Stop("the client stopped reading the stream");
      return;
    }
    Advance();
  }

  // Writes nothing more and cancels the engine request (the client cancelled, the deadline
  // passed or a write failed). The call finishes once the final update arrives.
  void Stop(const char* reason) {
    {
      absl::MutexLock lock(&mutex_);
      stopped_ = true;
    }
    CancelRequest(reason);
    Advance();
  }

  // Starts the next write, or Finish, when one is due and no write is in flight. Runs on the
  // engine thread after an update, and on a gRPC thread after a write or a cancellation.
  void Advance() {
    while (true) {
      std::vector<GenerationUpdate> updates;
      absl::Status final_status;
      {
        absl::MutexLock lock(&mutex_);
        if (writing_ || finished_) return;
        if (stopped_) {
          queued_.clear();
          queued_tokens_ = 0;
        }
        if (queued_.empty()) {
          // Everything before the final update is written: finish with its status.
          if (!final_status_.has_value()) return;
          finished_ = true;
          final_status = *final_status_;
        } else {
          if (!final_status_.has_value() && queued_tokens_ < min_tokens_) return;
          updates.swap(queued_);
          queued_tokens_ = 0;
          // Only the caller that set writing_ or finished_ touches message_ until the write
          // completes.
          writing_ = true;
          finished_ = updates.back().finished;
        }
      }
      if (updates.empty()) {
        reactor_->Finish(FinalGrpcStatus(request_id(), final_status));
        return;
      }
      bool started = false;
      try {
        started = Write(updates);
      } catch (const std::exception& error) {
        // Building the message failed (out of memory). The call writes nothing more, cancels
        // its request and finishes once the final update has arrived: with INTERNAL when the
        // failed message was the final one, and CANCELLED otherwise.
        spdlog::error("request {}: building a stream message failed: {}", request_id(),
                      error.what());
        {
          absl::MutexLock lock(&mutex_);
          writing_ = false;
          stopped_ = true;
          if (finished_) {
            finished_ = false;
            final_status_ = absl::InternalError(
                absl::StrCat("building the final stream message failed: ", error.what()));
          }
        }
        CancelRequest("building a stream message failed");
        continue;
      }
      if (started) return;
      absl::MutexLock lock(&mutex_);
      writing_ = false;
    }
  }

  // Builds one message from `updates` and starts its write. Returns false, writing nothing,
  // when the updates carry no token, text or end.
  bool Write(std::span<const GenerationUpdate> updates) {
    // The tokens, log-probabilities and text concatenate in order, and the final update adds
    // the finish reason, usage and timings.
    message_.Clear();
    message_.set_request_id(request_id());
    for (const GenerationUpdate& update : updates) {
      AppendUpdate(tokenizer(), logprobs(), update, message_);
    }
    const bool last = updates.back().finished;
    if (message_.token_ids_size() == 0 && message_.text().empty() && !last) return false;
    if (last) {
      // Nothing touches this call's reactor after this, since OnDone may run at any time.
      reactor_->StartWriteAndFinish(&message_, grpc::WriteOptions().set_last_message(),
                                    grpc::Status::OK);
    } else {
      reactor_->StartWrite(&message_);
    }
    return true;
  }

  Reactor* const reactor_;
  const int64_t min_tokens_;
  std::vector<GenerationUpdate> queued_ ABSL_GUARDED_BY(mutex_);
  int64_t queued_tokens_ ABSL_GUARDED_BY(mutex_) = 0;  // Generated tokens in queued_.
  // The status the call ends with, set when the final update arrives.
  std::optional<absl::Status> final_status_ ABSL_GUARDED_BY(mutex_);
  bool writing_ ABSL_GUARDED_BY(mutex_) = false;   // A message is being built or written.
  bool finished_ ABSL_GUARDED_BY(mutex_) = false;  // Finish or StartWriteAndFinish started.
  bool stopped_ ABSL_GUARDED_BY(mutex_) = false;   // Nothing more is written.
  v1::GenerateStreamResponse message_;  // The message of the write in flight.
};

// A GenerateStream call rejected before it reached the engine.
class RejectedStreamReactor final : public grpc::ServerWriteReactor<v1::GenerateStreamResponse> {
 public:
  explicit RejectedStreamReactor(grpc::Status status) { Finish(std::move(status)); }
  void OnDone() override { delete this; }
};

}  // namespace

grpc::Status GenerationErrorStatus(const std::string& request_id, const absl::Status& status) {
  return ToGrpcStatus(
      absl::Status(status.code(), absl::StrCat("request ", request_id, ": ", status.message())));
}

GenerationCall::GenerationCall(GenerationCallInfo info)
    : info_(std::move(info)), sequence_(info_.prompt_ids) {}

GenerationCallback GenerationCall::EngineCallback() {
  return [call = shared_from_this()](GenerationUpdate update) {
    call->OnUpdate(std::move(update));
  };
}

void GenerationCall::MarkSubmitted() {
  absl::MutexLock lock(&mutex_);
  submitted_ = true;
}

void GenerationCall::CancelRequest(const char* reason) {
  {
    absl::MutexLock lock(&mutex_);
    if (!submitted_ || final_received_ || cancel_sent_) return;
    cancel_sent_ = true;
    // Complete cannot run while this lock is held, and the engine keeps the id in flight until
    // the final callback returns, so the id still names this call's request. NOT_FOUND means
    // that the engine finished it meanwhile, and its final update is on its way.
    (void)info_.host->engine().Cancel(request_id());
  }
  spdlog::info("request {} cancelled: {}", request_id(), reason);
}

void GenerationCall::ReleaseHost() {
  std::shared_ptr<ModelHost> host;
  absl::MutexLock lock(&mutex_);
  host = std::move(info_.host);
}

void GenerationCall::RecordTokens(const GenerationUpdate& update) {
  for (const GeneratedToken& token : update.tokens) sequence_.push_back(token.token_id);
}

absl::Status GenerationCall::Complete(const GenerationUpdate& last) {
  bool cancel_sent = false;
  {
    absl::MutexLock lock(&mutex_);
    final_received_ = true;
    cancel_sent = cancel_sent_;
  }
  absl::Status status = last.status;
  if (status.ok() && cancel_sent) status = absl::CancelledError("the client cancelled the call");
  spdlog::info("request {} finished: {} prompt tokens, {} generated, finish {}, queue {:.4f} s, "
               "first token {:.4f} s, total {:.4f} s, model version {}, status {}",
               request_id(), last.usage.prompt_tokens, last.usage.generated_tokens,
               FinishReasonName(last.finish_reason), last.timings.queue_seconds,
               last.timings.time_to_first_token_seconds, last.timings.end_to_end_seconds,
               last.model_label, absl::StatusCodeToString(status.code()));
  if (!status.ok() && status.code() != absl::StatusCode::kCancelled &&
      status.code() != absl::StatusCode::kDeadlineExceeded) {
    spdlog::error("request {} failed: {}", request_id(), status.ToString());
  }
  if (status.ok()) info_.host->OfferShadowSample(std::move(sequence_), last.model_label);
  return status;
}

grpc::ServerUnaryReactor* NewUnaryGeneration(GenerationCallInfo info,
                                             v1::GenerateResponse* response,
                                             std::shared_ptr<GenerationCall>& call) {
  UnaryCall::Reactor* reactor = nullptr;
  call = UnaryCall::Create(std::move(info), response, reactor);
  return reactor;
}

grpc::ServerWriteReactor<v1::GenerateStreamResponse>* NewRejectedStream(
    const std::string& request_id, const absl::Status& status) {
  return new RejectedStreamReactor(GenerationErrorStatus(request_id, status));
}

grpc::ServerWriteReactor<v1::GenerateStreamResponse>* NewStreamGeneration(
    GenerationCallInfo info, int64_t min_tokens, std::shared_ptr<GenerationCall>& call) {
  StreamCall::Reactor* reactor = nullptr;
  call = StreamCall::Create(std::move(info), min_tokens, reactor);
  return reactor;
}

}  // namespace w8a8::server
