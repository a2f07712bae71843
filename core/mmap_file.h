// Read-only memory mapping of a whole file.
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>
#include <span>

#include "absl/status/statusor.h"

namespace w8a8 {

// Owns a read-only, private mapping of one file for its lifetime. The bytes never change
// while mapped unless another process truncates or rewrites the file, which the loaders do
// not guard against. Thread-safe: the object is immutable after Open.
class MappedFile {
 public:
  // Maps the regular file at `path`. An empty file maps to an empty span. Fails with
  // NotFound when the file does not exist and names the path in every error.
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::filesystem::path& path);

  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::span<const std::byte> bytes() const { return {data_, size_}; }
  size_t size() const { return size_; }

 private:
  MappedFile(std::filesystem::path path, const std::byte* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}

  std::filesystem::path path_;
  const std::byte* data_;
  size_t size_;
};

}  // namespace w8a8
