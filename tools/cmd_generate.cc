// `w8a8 generate`: streams the prompt and its continuation to stdout, statistics to stderr.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "core/checkpoint.h"
#include "core/generator.h"
#include "core/model.h"
#include "core/quantization.h"
#include "core/tokenizer.h"
#include "tools/command.h"
#include "tools/flags.h"

ABSL_DECLARE_FLAG(std::string, prompt);
ABSL_DECLARE_FLAG(int64_t, max_tokens);
ABSL_DECLARE_FLAG(double, temperature);
ABSL_DECLARE_FLAG(int64_t, top_k);
ABSL_DECLARE_FLAG(double, top_p);
ABSL_DECLARE_FLAG(double, min_p);
ABSL_DECLARE_FLAG(double, repetition_penalty);
ABSL_DECLARE_FLAG(double, frequency_penalty);
ABSL_DECLARE_FLAG(double, presence_penalty);
ABSL_DECLARE_FLAG(std::vector<std::string>, stop);
ABSL_DECLARE_FLAG(bool, ignore_eos);
ABSL_DECLARE_FLAG(bool, chat);
ABSL_DECLARE_FLAG(std::string, plan);

namespace w8a8::tools {
namespace {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "w8a8 generate: %s\n", std::string(status.message()).c_str());
  return 1;
}

SamplingParams SamplingFromFlags() {
  SamplingParams params;
  params.temperature = absl::GetFlag(FLAGS_temperature);
  params.top_k = absl::GetFlag(FLAGS_top_k);
  params.top_p = absl::GetFlag(FLAGS_top_p);
  params.min_p = absl::GetFlag(FLAGS_min_p);
  params.repetition_penalty = absl::GetFlag(FLAGS_repetition_penalty);
  params.frequency_penalty = absl::GetFlag(FLAGS_frequency_penalty);
  params.presence_penalty = absl::GetFlag(FLAGS_presence_penalty);
  params.max_tokens = absl::GetFlag(FLAGS_max_tokens);
  params.seed = absl::GetFlag(FLAGS_seed);
  params.has_seed = true;
  params.stop = absl::GetFlag(FLAGS_stop);
  params.ignore_eos = absl::GetFlag(FLAGS_ignore_eos);
  return params;
}

int RunGenerate(const std::vector<std::string>& args) {
  const std::string model_path = absl::GetFlag(FLAGS_model);
  const std::string prompt = absl::GetFlag(FLAGS_prompt);
  if (model_path.empty()) {
    return Fail(absl::InvalidArgumentError("--model is missing; give a checkpoint directory "
                                           "or a .gguf file."));
  }
  if (!args.empty()) {
    return Fail(absl::InvalidArgumentError("unexpected argument '" + args[0] +
                                           "'; pass the prompt with --prompt."));
  }
  GenerationOptions options;
  options.sampling = SamplingFromFlags();
  if (absl::Status status = options.sampling.Validate(); !status.ok()) return Fail(status);

  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(model_path);
  if (!checkpoint.ok()) return Fail(checkpoint.status());
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::FromSource((*checkpoint)->tokenizer_source());
  if (!tokenizer.ok()) return Fail(tokenizer.status());
  // fp32 becomes the empty plan, which runs a compressed-tensors checkpoint as stored (its
  // FP32 weights are gone) and any other checkpoint in FP32.
  const std::string plan = absl::GetFlag(FLAGS_plan);
  absl::StatusOr<LinearFactory> factory =
      LinearFactoryForPlan(**checkpoint, plan == "fp32" ? std::string() : plan);
  if (!factory.ok()) return Fail(factory.status());
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Create(**checkpoint, *factory);
  if (!model.ok()) return Fail(model.status());

  std::vector<int32_t> prompt_tokens;
  if (absl::GetFlag(FLAGS_chat)) {
    if (!(*tokenizer)->TokenId("<|start_header_id|>").has_value()) {
      return Fail(absl::InvalidArgumentError(
          "--chat needs a Llama 3 tokenizer, but this model's vocabulary has no "
          "<|start_header_id|> token; drop --chat."));
    }
    absl::StatusOr<std::string> chat = FormatLlama3Chat({{"user", prompt}});
    if (!chat.ok()) return Fail(chat.status());
    // The template starts with <|begin_of_text|> itself, so no second BOS is added.
    prompt_tokens = (*tokenizer)->Encode(*chat, /*add_bos=*/false, /*parse_special=*/true);
  } else {
    prompt_tokens = (*tokenizer)->Encode(prompt, /*add_bos=*/true, /*parse_special=*/true);
  }

  std::fputs(prompt.c_str(), stdout);
  std::fflush(stdout);
  const Generator generator(**model, **tokenizer);
  absl::StatusOr<GenerationResult> result =
      generator.Generate(prompt_tokens, options, [](std::string_view piece) {
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
      });
  std::fputs("\n", stdout);
  std::fflush(stdout);
  if (!result.ok()) return Fail(result.status());

  // The first token comes from the prefill; the rest from one decode step each.
  const size_t decoded = result->tokens.size() - 1;
  const double decode_rate =
      result->decode_seconds > 0 ? static_cast<double>(decoded) / result->decode_seconds : 0.0;
  std::fprintf(stderr,
               "prompt: %zu tokens in %.3f s; generated: %zu tokens, %zu decode steps in %.3f s "
               "(%.1f tokens/s); finish reason: %s\n",
               result->prompt_tokens.size(), result->prefill_seconds, result->tokens.size(),
               decoded, result->decode_seconds, decode_rate, result->finish_reason.c_str());
  return 0;
}

}  // namespace

W8A8_COMMAND("generate", "Generate text from a prompt with a model", RunGenerate);

}  // namespace w8a8::tools
