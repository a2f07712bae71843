// The safetensors format: an 8-byte little-endian header length, a JSON header that maps each
// tensor name to its dtype, shape and byte range [begin, end) in the data area, then the data.
// A reader over a memory mapping and a streaming writer.
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/mmap_file.h"
#include "core/tensor.h"

namespace w8a8 {

// Maps a safetensors dtype name to DType. Supported: F32, F16, BF16, I8, I32; other names
// (F64, I64, U8, BOOL, F8_E4M3, ...) fail with a message naming the dtype.
absl::StatusOr<DType> ParseSafetensorsDType(std::string_view name);

// A parsed safetensors file. Every tensor's range is checked to lie inside the data area, to
// match dtype times shape and not to overlap another before the file is returned.
// Thread-safe: immutable after parsing.
class SafetensorsFile {
 public:
  // Maps and parses `path`; errors name the file and the tensor or key at fault.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::filesystem::path& path);
  // Parses bytes that the caller keeps alive for the lifetime of the result. `source` names
  // the bytes in error messages.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Parse(std::span<const std::byte> bytes,
                                                                std::string source);

  const std::string& source() const { return source_; }
  // Tensors in the order of their data offsets.
  const std::vector<TensorView>& tensors() const { return tensors_; }
  const TensorView* FindTensor(std::string_view name) const;
  // The "__metadata__" object of the header; empty when absent.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;

  std::unique_ptr<MappedFile> file_;  // Null when parsed from caller bytes.
  std::string source_;
  std::vector<TensorView> tensors_;
  std::map<std::string, size_t> index_;  // Name to position in tensors_.
  std::map<std::string, std::string> metadata_;
};

// Writes a safetensors file whose tensors are all declared upfront, so that tensor data can
// arrive one tensor at a time and a model larger than memory can be written. The header is
// written by Create; WriteTensor appends data in the declared order; Finish flushes the file
// and renames it from "<path>.partial" to `path`. A writer destroyed before Finish removes
// the partial file. Tensors are packed without padding, as the safetensors library requires,
// and the header is padded with spaces so that the data area starts 8-byte aligned.
// Not thread-safe. Blocks on file I/O.
class SafetensorsWriter {
 public:
  struct TensorSpec {
    std::string name;
    DType dtype = DType::kF32;
    std::vector<int64_t> shape;
  };

  static absl::StatusOr<std::unique_ptr<SafetensorsWriter>> Create(
      const std::filesystem::path& path, std::vector<TensorSpec> tensors,
      const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Appends the data of the next declared tensor. Fails when `name` is not the next tensor or
  // the size does not match its dtype and shape.
  absl::Status WriteTensor(const std::string& name, std::span<const std::byte> data);
  // Checks that every tensor was written, then flushes, closes and renames the file.
  absl::Status Finish();

 private:
  SafetensorsWriter() = default;

  std::filesystem::path path_;
  std::filesystem::path partial_path_;
  std::FILE* file_ = nullptr;
  std::vector<TensorSpec> tensors_;
  std::vector<uint64_t> sizes_;
  size_t next_ = 0;
  bool finished_ = false;
};

}  // namespace w8a8
