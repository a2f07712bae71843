#include "tools/flags.h"

#include <cstdint>
#include <string>
#include <vector>

#include "absl/flags/flag.h"

ABSL_FLAG(std::string, model, "",
          "Model to load: a Hugging Face checkpoint directory, a .gguf file, or (for tokenize) "
          "a tokenizer.json or tokenizer.model file.");
ABSL_FLAG(std::string, out, "", "Output directory or file.");
ABSL_FLAG(bool, json, false, "Print machine-readable JSON instead of a table.");
ABSL_FLAG(uint64_t, seed, 0, "Random seed.");
ABSL_FLAG(int32_t, threads, 0, "Worker threads for compute; 0 uses every core.");
ABSL_FLAG(std::string, log_level, "warn", "Log level: trace, debug, info, warn, error or off.");

// generate
ABSL_FLAG(std::string, prompt, "", "Prompt text for generate.");
ABSL_FLAG(int64_t, max_tokens, 256, "Maximum number of tokens to generate.");
ABSL_FLAG(double, temperature, 1.0, "Sampling temperature; 0 selects greedy decoding.");
ABSL_FLAG(int64_t, top_k, 0, "Sample only among the k most likely tokens; 0 keeps every token.");
ABSL_FLAG(double, top_p, 1.0,
          "Sample only among the most likely tokens whose probabilities sum to top_p, in (0, 1].");
ABSL_FLAG(double, min_p, 0.0,
          "Drop tokens whose probability is below min_p times the top token's, in [0, 1].");
ABSL_FLAG(double, repetition_penalty, 1.0,
          "Divide positive (multiply negative) logits of tokens already seen; 1 disables it.");
ABSL_FLAG(double, frequency_penalty, 0.0,
          "Subtract this times the count of each token already seen, in [-2, 2].");
ABSL_FLAG(double, presence_penalty, 0.0,
          "Subtract this once from every token already seen, in [-2, 2].");
ABSL_FLAG(std::vector<std::string>, stop, {},
          "Comma-separated stop strings; the output ends before the first one.");
ABSL_FLAG(bool, ignore_eos, false, "Keep generating past end-of-sequence tokens.");
ABSL_FLAG(bool, chat, false,
          "Wrap the prompt as one user message in the Llama 3 chat template.");
ABSL_FLAG(std::string, plan, "fp32",
          "Linear-layer quantization: fp32, per-channel, per-group, per-tensor, auto, or a plan "
          "or config file. fp32 runs a compressed-tensors checkpoint as stored.");

// make-model
ABSL_FLAG(std::string, preset, "",
          "Architecture for make-model: llama-3.2-1b, llama-3.1-8b or llama3-tiny.");
ABSL_FLAG(std::string, config, "",
          "make-model: a Hugging Face config.json, instead of --preset. analyze: a quantization "
          "config file (JSON or YAML) with scheme, group_size, activations, thresholds and "
          "overrides.");
ABSL_FLAG(std::string, tokenizer, "",
          "tokenizer.json to copy into the model made by make-model; by default the Llama 3 "
          "tokenizer under tests/reference/node_modules.");
ABSL_FLAG(int64_t, max_shard_mb, 2048,
          "make-model splits weights into shards of at most this many MiB.");

ABSL_FLAG(std::string, plans, "",
          "eval and bench: comma-separated plans (fp32, per-channel, per-group, per-tensor, "
          "auto, or plan/config files). eval compares them, by default "
          "fp32,per-channel,per-group,auto, with the first fp32 entry as the fidelity "
          "reference; the bench model suite measures them, by default per-channel,auto,fp32.");
ABSL_FLAG(std::string, text, "", "eval: UTF-8 text file for perplexity and fidelity.");
ABSL_FLAG(std::vector<std::string>, tasks, {},
          "eval: comma-separated multiple-choice JSONL files, one item per line.");
ABSL_FLAG(std::string, fields, "context=context,choices=choices,gold=gold",
          "eval: which JSONL fields hold the context, the choices and the gold answer.");
ABSL_FLAG(int64_t, context_length, 512, "eval: tokens per perplexity window.");
ABSL_FLAG(int64_t, stride, 256, "eval: tokens between the starts of perplexity windows.");

// tokenize
ABSL_FLAG(bool, special, false,
          "tokenize: encode special-token strings such as <|eot_id|> as their ids instead of "
          "as plain text.");

// inject-outliers
ABSL_FLAG(std::string, layers, "",
          "inject-outliers: how many linear layers to modify (drawn with --seed), or their "
          "comma-separated names such as model.layers.2.mlp.down_proj; at most 3% of the "
          "layers (at least 1).");
ABSL_FLAG(double, factor, 100.0,
          "inject-outliers: size of the outlier weights as a multiple of the RMS of the other "
          "weights.");
ABSL_FLAG(int64_t, outliers_per_row, 1, "inject-outliers: outlier weights in every row.");
ABSL_FLAG(std::string, svg, "",
          "analyze: also write an SVG chart of per-channel and per-group error per layer.");

// bench
ABSL_FLAG(std::string, suite, "",
          "bench: comma-separated suites to run: machine, kernels, model, engine. Empty runs "
          "machine and kernels, plus model when --model is set. The machine figures are always "
          "measured, except when engine is the only suite.");
ABSL_FLAG(double, seconds, 0.5,
          "bench: minimum seconds of timed runs per figure. Each figure is the fastest run, "
          "except decode, which reports the mean step and the fastest step.");
ABSL_FLAG(int32_t, interleave, 0,
          "bench model suite: after each plan's own figures, load every plan at once and time "
          "them in this many rounds, taking turns figure by figure, and report each plan's "
          "ratio to the first plan per round. Shared machines drift over minutes; ratios of "
          "runs seconds apart do not. The order reverses every round, so pass an even number. "
          "Needs the memory of every plan at once. 0 skips the rounds.");

// bench --suite engine: the same names and meanings as `w8a8-client load` and w8a8-server.
ABSL_FLAG(int32_t, concurrency, 4,
          "bench engine suite: requests in flight at once; each finished request submits the "
          "next.");
ABSL_FLAG(int64_t, requests, 64,
          "bench engine suite: requests in total, each generating exactly --max-tokens tokens.");
ABSL_FLAG(int64_t, max_running, 16,
          "bench engine suite: maximum sequences decoded together, as w8a8-server --max-running.");
ABSL_FLAG(int64_t, max_batch_tokens, 512,
          "bench engine suite: maximum tokens of one engine step, as w8a8-server "
          "--max-batch-tokens.");

// export-gguf
ABSL_FLAG(std::string, outtype, "f16",
          "export-gguf: element type of the 2-D weights: f32, f16, bf16 or q8_0 (blocks of 32 "
          "int8 values with an FP16 scale). The default f16 is that of llama.cpp's "
          "convert_hf_to_gguf.py. Norm weights are always F32.");

namespace w8a8::tools {

std::string PlansOrDefault(const std::string& fallback) {
  const std::string plans = absl::GetFlag(FLAGS_plans);
  return plans.empty() ? fallback : plans;
}

}  // namespace w8a8::tools
