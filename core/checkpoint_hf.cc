// Checkpoint over a Hugging Face model directory.
#include "core/checkpoint_formats.h"

namespace w8a8::checkpoint_internal {

absl::StatusOr<std::unique_ptr<Checkpoint>> OpenHfDirectory(const std::filesystem::path& dir) {
  return absl::UnimplementedError("Hugging Face directories are not supported yet");
}

}  // namespace w8a8::checkpoint_internal
