// GGUF, the llama.cpp model format: a parser of the header, metadata and tensor table of
// versions 2 and 3 (little-endian), a writer, and the mapping of llama tensor names and
// rotary row layouts to Hugging Face's.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "core/mmap_file.h"
#include "core/tensor.h"

namespace w8a8 {

// Metadata value types, numbered as in the GGUF specification.
enum class GgufType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

std::string_view GgufTypeName(GgufType type);

// One metadata value. `type` and, for arrays, `element_type` keep the width stored in the
// file, so a value read and written again keeps its encoding.
struct GgufValue {
  // Storage by type: integers other than uint64 and bools (0 or 1) as int64_t, uint64 as
  // uint64_t, floats as double, strings as std::string. Arrays use the vector of the same
  // element storage; arrays of arrays use std::vector<GgufValue>.
  using Storage =
      std::variant<int64_t, uint64_t, double, std::string, std::vector<int64_t>,
                   std::vector<uint64_t>, std::vector<double>, std::vector<std::string>,
                   std::vector<GgufValue>>;

  GgufType type = GgufType::kUint32;
  GgufType element_type = GgufType::kUint8;  // Arrays only.
  Storage value = int64_t{0};

  static GgufValue Uint32(uint32_t value);
  static GgufValue Int32(int32_t value);
  static GgufValue Uint64(uint64_t value);
  static GgufValue Float32(float value);
  static GgufValue Bool(bool value);
  static GgufValue String(std::string value);
  static GgufValue StringArray(std::vector<std::string> values);
  static GgufValue Float32Array(const std::vector<float>& values);
  static GgufValue Int32Array(const std::vector<int32_t>& values);

  // Typed reads; nullopt or nullptr when the value has another type. AsInt accepts every
  // integer type (uint64 only below 2^63), AsDouble every integer and float type.
  std::optional<int64_t> AsInt() const;
  std::optional<double> AsDouble() const;
  std::optional<bool> AsBool() const;
  const std::string* AsString() const;
  const std::vector<std::string>* AsStringArray() const;
  // Elements of an integer or bool array, or of a float array, converted; nullopt otherwise.
  std::optional<std::vector<int64_t>> AsIntArray() const;
  std::optional<std::vector<double>> AsDoubleArray() const;
};

// The GGML tensor types this project reads, numbered as in ggml.h.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ8_0 = 8,
  kI8 = 24,
  kI32 = 26,
  kBF16 = 30,
};

// Name of a GGML tensor type number ("Q4_K" for 12), or "unknown".
std::string_view GgmlTypeName(uint32_t ggml_type);

// A parsed GGUF file. Tensors are views into the mapping with row-major shapes (the reverse
// of GGUF's ne0-first dimensions) and their GGUF names. Thread-safe: immutable after parsing.
class GgufFile {
 public:
  // Maps and parses the file. Every length, count and offset is checked against the file size
  // before use; errors name the file, the key or tensor, and the byte offset.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::filesystem::path& path);
  // Parses bytes that the caller keeps alive for the lifetime of the result. `source` names
  // the bytes in error messages.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Parse(std::span<const std::byte> bytes,
                                                         std::string source);

  const std::string& source() const { return source_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  // Metadata in file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return metadata_; }
  const GgufValue* FindMetadata(std::string_view key) const;
  // Tensors in file order.
  const std::vector<TensorView>& tensors() const { return tensors_; }
  const TensorView* FindTensor(std::string_view name) const;

 private:
  GgufFile() = default;

  std::unique_ptr<MappedFile> file_;  // Null when parsed from caller bytes.
  std::string source_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::vector<TensorView> tensors_;
};

// Builds a GGUF v3 file: metadata, then tensors in the order added. Not thread-safe.
class GgufWriter {
 public:
  // `alignment` of the tensor data; a value other than 32 is also stored as
  // "general.alignment".
  explicit GgufWriter(uint32_t alignment = 32);

  // Adds or replaces a metadata key.
  void SetMetadata(const std::string& key, GgufValue value);
  // Adds a tensor with a row-major `shape`. The writer does not copy `data`: it must stay
  // valid until Serialize or WriteFile returns. Fails when data does not match dtype and shape
  // or the name repeats.
  absl::Status AddTensor(const std::string& name, DType dtype, std::vector<int64_t> shape,
                         std::span<const std::byte> data);

  absl::StatusOr<std::string> Serialize() const;
  absl::Status WriteFile(const std::filesystem::path& path) const;
  // The metadata section alone (each key, value type and value, in order), which writers that
  // stream tensor data place after their own header. metadata_count() entries.
  absl::StatusOr<std::string> SerializeMetadata() const;
  size_t metadata_count() const { return metadata_.size(); }

 private:
  struct PendingTensor {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::span<const std::byte> data;
  };
  uint32_t alignment_;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::vector<PendingTensor> tensors_;
};

// Maps a llama GGUF tensor name to its Hugging Face name ("blk.3.attn_q.weight" to
// "model.layers.3.self_attn.q_proj.weight"); nullopt for names outside the LLaMA set,
// including "rope_freqs.weight".
std::optional<std::string> GgufToHfTensorName(std::string_view gguf_name);
// The inverse of GgufToHfTensorName.
std::optional<std::string> HfToGgufTensorName(std::string_view hf_name);

// llama.cpp stores q_proj and k_proj rows so that rotary pairs are adjacent rows (2i, 2i+1)
// in every head, while Hugging Face pairs row i with row i + head_dim / 2. For head h and
// i < head_dim / 2, Hugging Face row h*head_dim + i is GGUF row h*head_dim + 2i, and Hugging
// Face row h*head_dim + head_dim/2 + i is GGUF row h*head_dim + 2i + 1. `weight` is row-major
// [num_heads * head_dim, columns]; head_dim must be even and divide the row count.
absl::StatusOr<std::vector<float>> GgufRotaryRowsToHf(std::span<const float> weight,
                                                      int64_t num_heads, int64_t head_dim);
absl::StatusOr<std::vector<float>> HfRotaryRowsToGguf(std::span<const float> weight,
                                                      int64_t num_heads, int64_t head_dim);

}  // namespace w8a8
