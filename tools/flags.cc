#include "tools/flags.h"

#include "absl/flags/flag.h"

ABSL_FLAG(std::string, model, "",
          "Model to load: a Hugging Face checkpoint directory, a .gguf file, or (for tokenize) "
          "a tokenizer.json or tokenizer.model file.");
ABSL_FLAG(std::string, out, "", "Output directory or file.");
ABSL_FLAG(bool, json, false, "Print machine-readable JSON instead of a table.");
ABSL_FLAG(uint64_t, seed, 0, "Random seed.");
ABSL_FLAG(int32_t, threads, 0, "Worker threads for compute; 0 uses every core.");
ABSL_FLAG(std::string, log_level, "warn", "Log level: trace, debug, info, warn, error or off.");

// tokenize
ABSL_FLAG(bool, special, false,
          "tokenize: encode special-token strings such as <|eot_id|> as their ids instead of "
          "as plain text.");
