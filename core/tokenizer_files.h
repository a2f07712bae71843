// Carries a checkpoint's tokenizer into a new checkpoint directory written from it.
#pragma once

#include <filesystem>

#include "absl/status/status.h"
#include "core/checkpoint.h"

namespace w8a8 {

// Writes the tokenizer of `source` into `out_dir`. A Hugging Face source has its tokenizer and
// generation files copied. A GGUF source with a SentencePiece ("llama") tokenizer gets an
// equivalent tokenizer.model written from its metadata, so the new checkpoint serves alone.
// A GGUF byte-level BPE ("gpt2") tokenizer is not converted: the caller gets a
// FAILED_PRECONDITION status it may log and ignore, and must then serve with a separate
// tokenizer.
absl::Status WriteTokenizerFiles(const Checkpoint& source, const std::filesystem::path& out_dir);

// Serializes a GGUF SentencePiece tokenizer as a tokenizer.model protobuf.
absl::Status WriteSentencePieceModel(const GgufTokenizerData& data,
                                     const std::filesystem::path& path);

}  // namespace w8a8
