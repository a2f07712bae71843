#include "core/gguf.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <fstream>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/status_macros.h"

namespace w8a8 {
namespace {

constexpr uint32_t kMaxDims = 4;             // GGML_MAX_DIMS in ggml.h.
constexpr int kMaxArrayNesting = 2;          // Arrays of arrays of scalars at most.
constexpr uint64_t kDefaultAlignment = 32;   // GGUF_DEFAULT_ALIGNMENT.

// Bytes of a scalar metadata value, 0 for strings and arrays.
uint64_t ScalarSize(GgufType type) {
  switch (type) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kBool:
      return 1;
    case GgufType::kUint16:
    case GgufType::kInt16:
      return 2;
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kFloat32:
      return 4;
    case GgufType::kUint64:
    case GgufType::kInt64:
    case GgufType::kFloat64:
      return 8;
    case GgufType::kString:
    case GgufType::kArray:
      return 0;
  }
  return 0;
}

bool IsKnownType(uint32_t type) { return type <= static_cast<uint32_t>(GgufType::kFloat64); }

// The minimum number of bytes one value of `type` takes in the file, used to reject element
// counts that cannot fit in the rest of the file before anything is allocated.
uint64_t MinEncodedSize(GgufType type) {
  if (type == GgufType::kString) return 8;   // Length only.
  if (type == GgufType::kArray) return 12;   // Element type and count.
  return ScalarSize(type);
}

std::optional<DType> DTypeOfGgml(uint32_t ggml_type) {
  switch (static_cast<GgmlType>(ggml_type)) {
    case GgmlType::kF32:
      return DType::kF32;
    case GgmlType::kF16:
      return DType::kF16;
    case GgmlType::kQ8_0:
      return DType::kQ8_0;
    case GgmlType::kI8:
      return DType::kI8;
    case GgmlType::kI32:
      return DType::kI32;
    case GgmlType::kBF16:
      return DType::kBF16;
  }
  return std::nullopt;
}

GgmlType GgmlOfDType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return GgmlType::kF32;
    case DType::kF16:
      return GgmlType::kF16;
    case DType::kBF16:
      return GgmlType::kBF16;
    case DType::kI8:
      return GgmlType::kI8;
    case DType::kI32:
      return GgmlType::kI32;
    case DType::kQ8_0:
      return GgmlType::kQ8_0;
  }
  return GgmlType::kF32;
}

// Bounds-checked little-endian reads from the file bytes. Every failure names the source,
// what was being read and the byte offset.
class Reader {
 public:
  Reader(std::span<const std::byte> bytes, const std::string& source)
      : bytes_(bytes), source_(source) {}

  uint64_t position() const { return position_; }
  uint64_t remaining() const { return bytes_.size() - position_; }

  absl::Status Truncated(absl::string_view what, uint64_t needed) const {
    return absl::InvalidArgumentError(absl::StrCat(
        source_, ": truncated GGUF file: ", what, " at byte ", position_, " needs ", needed,
        " bytes, but only ", remaining(), " remain; the file is incomplete or corrupt"));
  }

  absl::Status Corrupt(absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": invalid GGUF file: ", what, " (at byte ", position_, ")"));
  }

  template <typename T>
  absl::StatusOr<T> Read(absl::string_view what) {
    if (remaining() < sizeof(T)) return Truncated(what, sizeof(T));
    T value;
    std::memcpy(&value, bytes_.data() + position_, sizeof(T));
    position_ += sizeof(T);
    return value;
  }

  absl::StatusOr<std::string> ReadString(absl::string_view what) {
    ASSIGN_OR_RETURN(const uint64_t length, Read<uint64_t>(what));
    if (length > remaining()) {
      return Corrupt(absl::StrCat(what, " has length ", length, ", but only ", remaining(),
                                  " bytes remain in the file"));
    }
    std::string value(reinterpret_cast<const char*>(bytes_.data() + position_), length);
    position_ += length;
    return value;
  }

  // Checks that `count` values of at least `min_size` bytes each fit in the rest of the file.
  absl::Status CheckCount(uint64_t count, uint64_t min_size, absl::string_view what) const {
    if (min_size > 0 && count > remaining() / min_size) {
      return Corrupt(absl::StrCat(what, " is ", count, ", but the ", remaining(),
                                  " bytes left in the file hold at most ",
                                  remaining() / min_size));
    }
    return absl::OkStatus();
  }

  void Seek(uint64_t position) { position_ = position; }

 private:
  std::span<const std::byte> bytes_;
  const std::string& source_;
  uint64_t position_ = 0;
};

// Reads one value of `type`. `what` describes the value in error messages; it is built once
// per array rather than per element, because token arrays have 10^5 entries.
absl::StatusOr<GgufValue> ReadValue(Reader& reader, GgufType type, const std::string& key,
                                    const std::string& what, int depth);

template <typename T>
absl::StatusOr<std::vector<T>> ReadScalarArray(Reader& reader, GgufType element_type,
                                               uint64_t count, const std::string& key,
                                               const std::string& what) {
  const std::string element_what = absl::StrCat("an element of ", what);
  std::vector<T> values;
  values.reserve(count);
  for (uint64_t i = 0; i < count; ++i) {
    ASSIGN_OR_RETURN(GgufValue element,
                     ReadValue(reader, element_type, key, element_what, kMaxArrayNesting));
    values.push_back(std::get<T>(element.value));
  }
  return values;
}

absl::StatusOr<GgufValue> ReadArray(Reader& reader, const std::string& key, int depth) {
  const std::string what = absl::StrCat("array of key '", key, "'");
  ASSIGN_OR_RETURN(const uint32_t raw_element_type,
                   reader.Read<uint32_t>(absl::StrCat("element type of ", what)));
  if (!IsKnownType(raw_element_type)) {
    return reader.Corrupt(absl::StrCat(what, " has unknown element type ", raw_element_type));
  }
  const auto element_type = static_cast<GgufType>(raw_element_type);
  if (element_type == GgufType::kArray && depth + 1 >= kMaxArrayNesting) {
    return reader.Corrupt(absl::StrCat(what, " nests arrays deeper than ", kMaxArrayNesting,
                                       " levels, which this reader does not support"));
  }
  ASSIGN_OR_RETURN(const uint64_t count, reader.Read<uint64_t>(absl::StrCat("length of ", what)));
  RETURN_IF_ERROR(reader.CheckCount(count, MinEncodedSize(element_type),
                                    absl::StrCat("length of ", what)));

  GgufValue result;
  result.type = GgufType::kArray;
  result.element_type = element_type;
  switch (element_type) {
    case GgufType::kString: {
      const std::string element_what = absl::StrCat("a string in ", what);
      std::vector<std::string> values;
      values.reserve(count);
      for (uint64_t i = 0; i < count; ++i) {
        ASSIGN_OR_RETURN(std::string value, reader.ReadString(element_what));
        values.push_back(std::move(value));
      }
      result.value = std::move(values);
      return result;
    }
    case GgufType::kArray: {
      std::vector<GgufValue> values;
      values.reserve(count);
      for (uint64_t i = 0; i < count; ++i) {
        ASSIGN_OR_RETURN(GgufValue value, ReadArray(reader, key, depth + 1));
        values.push_back(std::move(value));
      }
      result.value = std::move(values);
      return result;
    }
    case GgufType::kUint64: {
      ASSIGN_OR_RETURN(result.value, ReadScalarArray<uint64_t>(reader, element_type, count, key, what));
      return result;
    }
    case GgufType::kFloat32:
    case GgufType::kFloat64: {
      ASSIGN_OR_RETURN(result.value, ReadScalarArray<double>(reader, element_type, count, key, what));
      return result;
    }
    default: {
      ASSIGN_OR_RETURN(result.value, ReadScalarArray<int64_t>(reader, element_type, count, key, what));
      return result;
    }
  }
}

absl::StatusOr<GgufValue> ReadValue(Reader& reader, GgufType type, const std::string& key,
                                    const std::string& what, int depth) {
  GgufValue result;
  result.type = type;
  switch (type) {
    case GgufType::kUint8: {
      ASSIGN_OR_RETURN(const uint8_t v, reader.Read<uint8_t>(what));
      result.value = int64_t{v};
      return result;
    }
    case GgufType::kInt8: {
      ASSIGN_OR_RETURN(const int8_t v, reader.Read<int8_t>(what));
      result.value = int64_t{v};
      return result;
    }
    case GgufType::kUint16: {
      ASSIGN_OR_RETURN(const uint16_t v, reader.Read<uint16_t>(what));
      result.value = int64_t{v};
      return result;
    }
    case GgufType::kInt16: {
      ASSIGN_OR_RETURN(const int16_t v, reader.Read<int16_t>(what));
      result.value = int64_t{v};
      return result;
    }
    case GgufType::kUint32: {
      ASSIGN_OR_RETURN(const uint32_t v, reader.Read<uint32_t>(what));
      result.value = int64_t{v};
      return result;
    }
    case GgufType::kInt32: {
      ASSIGN_OR_RETURN(const int32_t v, reader.Read<int32_t>(what));
      result.value = int64_t{v};
      return result;
    }
    case GgufType::kUint64: {
      ASSIGN_OR_RETURN(const uint64_t v, reader.Read<uint64_t>(what));
      result.value = v;
      return result;
    }
    case GgufType::kInt64: {
      ASSIGN_OR_RETURN(const int64_t v, reader.Read<int64_t>(what));
      result.value = v;
      return result;
    }
    case GgufType::kFloat32: {
      ASSIGN_OR_RETURN(const float v, reader.Read<float>(what));
      result.value = double{v};
      return result;
    }
    case GgufType::kFloat64: {
      ASSIGN_OR_RETURN(const double v, reader.Read<double>(what));
      result.value = v;
      return result;
    }
    case GgufType::kBool: {
      ASSIGN_OR_RETURN(const uint8_t v, reader.Read<uint8_t>(what));
      if (v > 1) return reader.Corrupt(absl::StrCat(what, " is a bool of value ", v));
      result.value = int64_t{v};
      return result;
    }
    case GgufType::kString: {
      ASSIGN_OR_RETURN(std::string v, reader.ReadString(what));
      result.value = std::move(v);
      return result;
    }
    case GgufType::kArray:
      return ReadArray(reader, key, depth);
  }
  return reader.Corrupt(absl::StrCat(what, " has unknown type"));
}

// Appends little-endian bytes of `value` to `out`.
template <typename T>
void Put(std::string& out, T value) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));
  out.append(bytes, sizeof(T));
}

void PutString(std::string& out, const std::string& value) {
  Put<uint64_t>(out, value.size());
  out.append(value);
}

void PutScalar(std::string& out, GgufType type, int64_t int_value, uint64_t uint_value,
               double float_value) {
  switch (type) {
    case GgufType::kUint8:
    case GgufType::kBool:
      Put<uint8_t>(out, static_cast<uint8_t>(int_value));
      return;
    case GgufType::kInt8:
      Put<int8_t>(out, static_cast<int8_t>(int_value));
      return;
    case GgufType::kUint16:
      Put<uint16_t>(out, static_cast<uint16_t>(int_value));
      return;
    case GgufType::kInt16:
      Put<int16_t>(out, static_cast<int16_t>(int_value));
      return;
    case GgufType::kUint32:
      Put<uint32_t>(out, static_cast<uint32_t>(int_value));
      return;
    case GgufType::kInt32:
      Put<int32_t>(out, static_cast<int32_t>(int_value));
      return;
    case GgufType::kUint64:
      Put<uint64_t>(out, uint_value);
      return;
    case GgufType::kInt64:
      Put<int64_t>(out, int_value);
      return;
    case GgufType::kFloat32:
      Put<float>(out, static_cast<float>(float_value));
      return;
    case GgufType::kFloat64:
      Put<double>(out, float_value);
      return;
    case GgufType::kString:
    case GgufType::kArray:
      return;
  }
}

absl::Status PutValue(std::string& out, const GgufValue& value, const std::string& key) {
  const auto mismatch = [&] {
    return absl::InvalidArgumentError(absl::StrCat(
        "GGUF metadata key '", key, "' declares type ", std::string(GgufTypeName(value.type)),
        " but stores a value of another type"));
  };
  if (value.type == GgufType::kString) {
    const std::string* text = std::get_if<std::string>(&value.value);
    if (text == nullptr) return mismatch();
    PutString(out, *text);
    return absl::OkStatus();
  }
  if (value.type != GgufType::kArray) {
    if (const auto* v = std::get_if<int64_t>(&value.value)) {
      PutScalar(out, value.type, *v, static_cast<uint64_t>(*v), static_cast<double>(*v));
    } else if (const auto* u = std::get_if<uint64_t>(&value.value)) {
      PutScalar(out, value.type, static_cast<int64_t>(*u), *u, static_cast<double>(*u));
    } else if (const auto* d = std::get_if<double>(&value.value)) {
      PutScalar(out, value.type, static_cast<int64_t>(*d), static_cast<uint64_t>(*d), *d);
    } else {
      return mismatch();
    }
    return absl::OkStatus();
  }

  Put<uint32_t>(out, static_cast<uint32_t>(value.element_type));
  if (const auto* strings = std::get_if<std::vector<std::string>>(&value.value)) {
    Put<uint64_t>(out, strings->size());
    for (const std::string& s : *strings) PutString(out, s);
  } else if (const auto* ints = std::get_if<std::vector<int64_t>>(&value.value)) {
    Put<uint64_t>(out, ints->size());
    for (int64_t v : *ints) PutScalar(out, value.element_type, v, v, static_cast<double>(v));
  } else if (const auto* uints = std::get_if<std::vector<uint64_t>>(&value.value)) {
    Put<uint64_t>(out, uints->size());
    for (uint64_t v : *uints) {
      PutScalar(out, value.element_type, static_cast<int64_t>(v), v, static_cast<double>(v));
    }
  } else if (const auto* doubles = std::get_if<std::vector<double>>(&value.value)) {
    Put<uint64_t>(out, doubles->size());
    for (double v : *doubles) PutScalar(out, value.element_type, 0, 0, v);
  } else if (const auto* arrays = std::get_if<std::vector<GgufValue>>(&value.value)) {
    Put<uint64_t>(out, arrays->size());
    for (const GgufValue& element : *arrays) {
      RETURN_IF_ERROR(PutValue(out, element, key));
    }
  } else {
    return mismatch();
  }
  return absl::OkStatus();
}

uint64_t AlignUp(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

}  // namespace

std::string_view GgufTypeName(GgufType type) {
  static constexpr std::array<std::string_view, 13> kNames = {
      "uint8", "int8",   "uint16", "int16", "uint32", "int32",  "float32",
      "bool",  "string", "array",  "uint64", "int64", "float64"};
  const auto index = static_cast<uint32_t>(type);
  return index < kNames.size() ? kNames[index] : "unknown";
}

std::string_view GgmlTypeName(uint32_t ggml_type) {
  // Type numbers from ggml.h (enum ggml_type); 4 and 5 are retired Q4_2 and Q4_3.
  static constexpr std::array<std::string_view, 31> kNames = {
      "F32",     "F16",    "Q4_0",   "Q4_1",    "Q4_2",   "Q4_3",  "Q5_0",   "Q5_1",
      "Q8_0",    "Q8_1",   "Q2_K",   "Q3_K",    "Q4_K",   "Q5_K",  "Q6_K",   "Q8_K",
      "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",  "IQ4_NL", "IQ3_S", "IQ2_S",  "IQ4_XS",
      "I8",      "I16",    "I32",    "I64",     "F64",    "IQ1_M", "BF16"};
  return ggml_type < kNames.size() ? kNames[ggml_type] : "unknown";
}

GgufValue GgufValue::Uint32(uint32_t value) {
  return GgufValue{GgufType::kUint32, GgufType::kUint8, int64_t{value}};
}
GgufValue GgufValue::Int32(int32_t value) {
  return GgufValue{GgufType::kInt32, GgufType::kUint8, int64_t{value}};
}
GgufValue GgufValue::Uint64(uint64_t value) {
  return GgufValue{GgufType::kUint64, GgufType::kUint8, value};
}
GgufValue GgufValue::Float32(float value) {
  return GgufValue{GgufType::kFloat32, GgufType::kUint8, double{value}};
}
GgufValue GgufValue::Bool(bool value) {
  return GgufValue{GgufType::kBool, GgufType::kUint8, int64_t{value ? 1 : 0}};
}
GgufValue GgufValue::String(std::string value) {
  return GgufValue{GgufType::kString, GgufType::kUint8, std::move(value)};
}
GgufValue GgufValue::StringArray(std::vector<std::string> values) {
  return GgufValue{GgufType::kArray, GgufType::kString, std::move(values)};
}
GgufValue GgufValue::Float32Array(const std::vector<float>& values) {
  return GgufValue{GgufType::kArray, GgufType::kFloat32,
                   std::vector<double>(values.begin(), values.end())};
}
GgufValue GgufValue::Int32Array(const std::vector<int32_t>& values) {
  return GgufValue{GgufType::kArray, GgufType::kInt32,
                   std::vector<int64_t>(values.begin(), values.end())};
}

std::optional<int64_t> GgufValue::AsInt() const {
  if (type == GgufType::kArray || type == GgufType::kString || type == GgufType::kFloat32 ||
      type == GgufType::kFloat64 || type == GgufType::kBool) {
    return std::nullopt;
  }
  if (const auto* v = std::get_if<int64_t>(&value)) return *v;
  if (const auto* u = std::get_if<uint64_t>(&value)) {
    if (*u <= static_cast<uint64_t>(INT64_MAX)) return static_cast<int64_t>(*u);
  }
  return std::nullopt;
}

std::optional<double> GgufValue::AsDouble() const {
  if (type == GgufType::kArray || type == GgufType::kString || type == GgufType::kBool) {
    return std::nullopt;
  }
  if (const auto* d = std::get_if<double>(&value)) return *d;
  if (const auto* v = std::get_if<int64_t>(&value)) return static_cast<double>(*v);
  if (const auto* u = std::get_if<uint64_t>(&value)) return static_cast<double>(*u);
  return std::nullopt;
}

std::optional<bool> GgufValue::AsBool() const {
  if (type != GgufType::kBool) return std::nullopt;
  if (const auto* v = std::get_if<int64_t>(&value)) return *v != 0;
  return std::nullopt;
}

const std::string* GgufValue::AsString() const {
  if (type != GgufType::kString) return nullptr;
  return std::get_if<std::string>(&value);
}

const std::vector<std::string>* GgufValue::AsStringArray() const {
  if (type != GgufType::kArray || element_type != GgufType::kString) return nullptr;
  return std::get_if<std::vector<std::string>>(&value);
}

std::optional<std::vector<int64_t>> GgufValue::AsIntArray() const {
  if (type != GgufType::kArray) return std::nullopt;
  if (const auto* v = std::get_if<std::vector<int64_t>>(&value)) return *v;
  if (const auto* u = std::get_if<std::vector<uint64_t>>(&value)) {
    std::vector<int64_t> out;
    out.reserve(u->size());
    for (uint64_t x : *u) {
      if (x > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
      out.push_back(static_cast<int64_t>(x));
    }
    return out;
  }
  return std::nullopt;
}

std::optional<std::vector<double>> GgufValue::AsDoubleArray() const {
  if (type != GgufType::kArray) return std::nullopt;
  if (const auto* d = std::get_if<std::vector<double>>(&value)) return *d;
  if (const auto* v = std::get_if<std::vector<int64_t>>(&value)) {
    return std::vector<double>(v->begin(), v->end());
  }
  return std::nullopt;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::filesystem::path& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> gguf, Parse(file->bytes(), path.string()));
  gguf->file_ = std::move(file);
  return gguf;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Parse(std::span<const std::byte> bytes,
                                                          std::string source) {
  std::unique_ptr<GgufFile> gguf(new GgufFile());
  gguf->source_ = std::move(source);
  Reader reader(bytes, gguf->source_);

  // Header: magic, version, tensor count, metadata count.
  ASSIGN_OR_RETURN(const uint32_t magic, reader.Read<uint32_t>("magic"));
  if (std::memcmp(&magic, "GGUF", 4) != 0) {
    reader.Seek(0);
    return reader.Corrupt("the file does not start with the magic \"GGUF\"; pass a .gguf file");
  }
  ASSIGN_OR_RETURN(gguf->version_, reader.Read<uint32_t>("version"));
  if (gguf->version_ == 0x02000000 || gguf->version_ == 0x03000000) {
    return reader.Corrupt("the file is big-endian GGUF, which is not supported; convert it "
                          "with llama.cpp's gguf tools to little-endian");
  }
  if (gguf->version_ != 2 && gguf->version_ != 3) {
    return reader.Corrupt(absl::StrCat("GGUF version ", gguf->version_,
                                       " is not supported; versions 2 and 3 are"));
  }
  ASSIGN_OR_RETURN(const uint64_t tensor_count, reader.Read<uint64_t>("tensor count"));
  ASSIGN_OR_RETURN(const uint64_t metadata_count, reader.Read<uint64_t>("metadata count"));
  // A metadata entry takes at least 8 (key length) + 4 (type) + 1 bytes.
  RETURN_IF_ERROR(reader.CheckCount(metadata_count, 13, "metadata count"));

  // Metadata.
  absl::flat_hash_set<std::string> keys;
  gguf->metadata_.reserve(metadata_count);
  for (uint64_t i = 0; i < metadata_count; ++i) {
    ASSIGN_OR_RETURN(std::string key, reader.ReadString(absl::StrCat("key of metadata entry ", i)));
    ASSIGN_OR_RETURN(const uint32_t raw_type,
                     reader.Read<uint32_t>(absl::StrCat("type of key '", key, "'")));
    if (!IsKnownType(raw_type)) {
      return reader.Corrupt(absl::StrCat("key '", key, "' has unknown value type ", raw_type));
    }
    ASSIGN_OR_RETURN(GgufValue value,
                     ReadValue(reader, static_cast<GgufType>(raw_type), key,
                               absl::StrCat("the value of key '", key, "'"), 0));
    if (!keys.insert(key).second) {
      return reader.Corrupt(absl::StrCat("metadata key '", key, "' appears twice"));
    }
    gguf->metadata_.emplace_back(std::move(key), std::move(value));
  }

  if (const GgufValue* alignment = gguf->FindMetadata("general.alignment")) {
    const std::optional<int64_t> value = alignment->AsInt();
    if (!value.has_value() || *value <= 0 || *value > UINT32_MAX ||
        (*value & (*value - 1)) != 0) {
      return reader.Corrupt(
          "key 'general.alignment' must be an integer power of two that fits in uint32");
    }
    gguf->alignment_ = static_cast<uint64_t>(*value);
  } else {
    gguf->alignment_ = kDefaultAlignment;
  }

  // Tensor infos. Each takes at least 8 (name length) + 4 (dims) + 4 (type) + 8 (offset).
  RETURN_IF_ERROR(reader.CheckCount(tensor_count, 24, "tensor count"));
  struct Info {
    std::string name;
    std::vector<int64_t> shape;
    DType dtype;
    uint64_t offset;
    uint64_t size;
  };
  std::vector<Info> infos;
  infos.reserve(tensor_count);
  absl::flat_hash_set<std::string> names;
  for (uint64_t i = 0; i < tensor_count; ++i) {
    Info info;
    ASSIGN_OR_RETURN(info.name, reader.ReadString(absl::StrCat("name of tensor ", i)));
    const std::string what = absl::StrCat("tensor '", info.name, "'");
    ASSIGN_OR_RETURN(const uint32_t n_dims, reader.Read<uint32_t>(absl::StrCat("rank of ", what)));
    if (n_dims == 0 || n_dims > kMaxDims) {
      return reader.Corrupt(
          absl::StrCat(what, " has ", n_dims, " dimensions; GGUF allows 1 to ", kMaxDims));
    }
    std::vector<int64_t> dims(n_dims);  // ne0 first: the fastest-varying dimension.
    for (uint32_t d = 0; d < n_dims; ++d) {
      ASSIGN_OR_RETURN(const uint64_t dim,
                       reader.Read<uint64_t>(absl::StrCat("dimension ", d, " of ", what)));
      if (dim == 0 || dim > static_cast<uint64_t>(INT64_MAX)) {
        return reader.Corrupt(absl::StrCat(what, " has invalid dimension ", d, " of ", dim));
      }
      dims[d] = static_cast<int64_t>(dim);
    }
    info.shape.assign(dims.rbegin(), dims.rend());
    ASSIGN_OR_RETURN(const uint32_t ggml_type, reader.Read<uint32_t>(absl::StrCat("type of ", what)));
    const std::optional<DType> dtype = DTypeOfGgml(ggml_type);
    if (!dtype.has_value()) {
      return reader.Corrupt(absl::StrCat(
          what, " has GGML type ", std::string(GgmlTypeName(ggml_type)), " (", ggml_type,
          "), which is not supported; supported types are F32, F16, BF16, Q8_0, I8 and I32, "
          "so convert the model to one of them (llama-quantize can write Q8_0)"));
    }
    info.dtype = *dtype;
    ASSIGN_OR_RETURN(info.offset, reader.Read<uint64_t>(absl::StrCat("data offset of ", what)));
    const absl::StatusOr<uint64_t> size = TensorBytes(info.dtype, info.shape);
    if (!size.ok()) {
      return reader.Corrupt(absl::StrCat(what, ": ", size.status().message()));
    }
    info.size = *size;
    if (!names.insert(info.name).second) {
      return reader.Corrupt(absl::StrCat("tensor name '", info.name, "' appears twice"));
    }
    infos.push_back(std::move(info));
  }

  // Tensor data: starts at the next multiple of the alignment after the tensor infos.
  const uint64_t data_start = AlignUp(reader.position(), gguf->alignment_);
  if (!infos.empty() && data_start > bytes.size()) {
    return reader.Truncated("the tensor data area", data_start - reader.position());
  }
  const uint64_t data_size = infos.empty() ? 0 : bytes.size() - data_start;
  for (const Info& info : infos) {
    if (info.offset % gguf->alignment_ != 0) {
      return reader.Corrupt(absl::StrCat("tensor '", info.name, "' has data offset ", info.offset,
                                         ", which is not a multiple of the alignment ",
                                         gguf->alignment_));
    }
    if (info.offset > data_size || info.size > data_size - info.offset) {
      return absl::InvalidArgumentError(absl::StrCat(
          gguf->source_, ": tensor '", info.name, "' occupies bytes [", info.offset, ", ",
          info.offset, " + ", info.size, ") of the data area, which has only ", data_size,
          " bytes; the file is truncated or corrupt"));
    }
  }
  std::vector<const Info*> by_offset;
  by_offset.reserve(infos.size());
  for (const Info& info : infos) by_offset.push_back(&info);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const Info* a, const Info* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const Info& previous = *by_offset[i - 1];
    if (previous.offset + previous.size > by_offset[i]->offset) {
      return absl::InvalidArgumentError(absl::StrCat(
          gguf->source_, ": the data of tensors '", previous.name, "' and '",
          by_offset[i]->name, "' overlap; the file is corrupt"));
    }
  }

  gguf->tensors_.reserve(infos.size());
  for (Info& info : infos) {
    TensorView view;
    view.name = std::move(info.name);
    view.dtype = info.dtype;
    view.shape = std::move(info.shape);
    view.data = bytes.data() + data_start + info.offset;
    view.size_bytes = info.size;
    gguf->tensors_.push_back(std::move(view));
  }
  return gguf;
}

const GgufValue* GgufFile::FindMetadata(std::string_view key) const {
  for (const auto& [name, value] : metadata_) {
    if (name == key) return &value;
  }
  return nullptr;
}

const TensorView* GgufFile::FindTensor(std::string_view name) const {
  for (const TensorView& tensor : tensors_) {
    if (tensor.name == name) return &tensor;
  }
  return nullptr;
}

GgufWriter::GgufWriter(uint32_t alignment) : alignment_(alignment) {
  if (alignment_ != kDefaultAlignment) {
    SetMetadata("general.alignment", GgufValue::Uint32(alignment_));
  }
}

void GgufWriter::SetMetadata(const std::string& key, GgufValue value) {
  for (auto& [name, existing] : metadata_) {
    if (name == key) {
      existing = std::move(value);
      return;
    }
  }
  metadata_.emplace_back(key, std::move(value));
}

absl::Status GgufWriter::AddTensor(const std::string& name, DType dtype,
                                   std::vector<int64_t> shape, std::span<const std::byte> data) {
  if (shape.empty() || shape.size() > kMaxDims) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GGUF tensor '", name, "' has rank ", shape.size(), "; GGUF allows 1 to ", kMaxDims));
  }
  ASSIGN_OR_RETURN(const uint64_t bytes, TensorBytes(dtype, shape));
  if (bytes != data.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GGUF tensor '", name, "' of ", std::string(DTypeName(dtype)), " [", absl::StrJoin(shape, ", "),
        "] needs ", bytes, " bytes, but ", data.size(), " were given"));
  }
  for (const PendingTensor& tensor : tensors_) {
    if (tensor.name == name) {
      return absl::InvalidArgumentError(
          absl::StrCat("GGUF tensor '", name, "' was added twice"));
    }
  }
  tensors_.push_back({name, dtype, std::move(shape), data});
  return absl::OkStatus();
}

absl::StatusOr<std::string> GgufWriter::Serialize() const {
  std::string out;
  out.append("GGUF", 4);
  Put<uint32_t>(out, 3);
  Put<uint64_t>(out, tensors_.size());
  Put<uint64_t>(out, metadata_.size());
  for (const auto& [key, value] : metadata_) {
    PutString(out, key);
    Put<uint32_t>(out, static_cast<uint32_t>(value.type));
    RETURN_IF_ERROR(PutValue(out, value, key));
  }

  uint64_t offset = 0;
  for (const PendingTensor& tensor : tensors_) {
    PutString(out, tensor.name);
    Put<uint32_t>(out, static_cast<uint32_t>(tensor.shape.size()));
    for (auto dim = tensor.shape.rbegin(); dim != tensor.shape.rend(); ++dim) {
      Put<uint64_t>(out, static_cast<uint64_t>(*dim));
    }
    Put<uint32_t>(out, static_cast<uint32_t>(GgmlOfDType(tensor.dtype)));
    Put<uint64_t>(out, offset);
    offset = AlignUp(offset + tensor.data.size(), alignment_);
  }

  out.resize(AlignUp(out.size(), alignment_), '\0');
  for (const PendingTensor& tensor : tensors_) {
    out.append(reinterpret_cast<const char*>(tensor.data.data()), tensor.data.size());
    out.resize(AlignUp(out.size(), alignment_), '\0');
  }
  return out;
}

absl::StatusOr<std::string> GgufWriter::SerializeMetadata() const {
  std::string out;
  for (const auto& [key, value] : metadata_) {
    PutString(out, key);
    Put<uint32_t>(out, static_cast<uint32_t>(value.type));
    RETURN_IF_ERROR(PutValue(out, value, key));
  }
  return out;
}

absl::Status GgufWriter::WriteFile(const std::filesystem::path& path) const {
  // NOTE: the whole file is built in memory first, which suits tests and small models.
  ASSIGN_OR_RETURN(const std::string bytes, Serialize());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) {
    return absl::InternalError(absl::StrCat("failed to write GGUF file ", path.string()));
  }
  return absl::OkStatus();
}

std::optional<std::string> GgufToHfTensorName(std::string_view gguf_name) {
  if (gguf_name == "token_embd.weight") return "model.embed_tokens.weight";
  if (gguf_name == "output_norm.weight") return "model.norm.weight";
  if (gguf_name == "output.weight") return "lm_head.weight";
  static const auto* kLayerNames = new absl::flat_hash_map<std::string, std::string>{
      {"attn_norm.weight", "input_layernorm.weight"},
      {"attn_q.weight", "self_attn.q_proj.weight"},
      {"attn_k.weight", "self_attn.k_proj.weight"},
      {"attn_v.weight", "self_attn.v_proj.weight"},
      {"attn_output.weight", "self_attn.o_proj.weight"},
      {"ffn_norm.weight", "post_attention_layernorm.weight"},
      {"ffn_gate.weight", "mlp.gate_proj.weight"},
      {"ffn_up.weight", "mlp.up_proj.weight"},
      {"ffn_down.weight", "mlp.down_proj.weight"},
  };
  // "blk.<layer>.<suffix>"
  const std::vector<absl::string_view> parts =
      absl::StrSplit(absl::string_view(gguf_name.data(), gguf_name.size()), absl::MaxSplits('.', 2));
  if (parts.size() != 3 || parts[0] != "blk") return std::nullopt;
  uint32_t layer = 0;
  if (!absl::SimpleAtoi(parts[1], &layer) || absl::StrCat(layer) != parts[1]) return std::nullopt;
  const auto suffix = kLayerNames->find(std::string(parts[2]));
  if (suffix == kLayerNames->end()) return std::nullopt;
  return absl::StrCat("model.layers.", layer, ".", suffix->second);
}

std::optional<std::string> HfToGgufTensorName(std::string_view hf_name) {
  if (hf_name == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf_name == "model.norm.weight") return "output_norm.weight";
  if (hf_name == "lm_head.weight") return "output.weight";
  static const auto* kLayerNames = new absl::flat_hash_map<std::string, std::string>{
      {"input_layernorm.weight", "attn_norm.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"},
  };
  // "model.layers.<layer>.<suffix>"
  const std::vector<absl::string_view> parts =
      absl::StrSplit(absl::string_view(hf_name.data(), hf_name.size()), absl::MaxSplits('.', 3));
  if (parts.size() != 4 || parts[0] != "model" || parts[1] != "layers") return std::nullopt;
  uint32_t layer = 0;
  if (!absl::SimpleAtoi(parts[2], &layer) || absl::StrCat(layer) != parts[2]) return std::nullopt;
  const auto suffix = kLayerNames->find(std::string(parts[3]));
  if (suffix == kLayerNames->end()) return std::nullopt;
  return absl::StrCat("blk.", layer, ".", suffix->second);
}

namespace {

// Moves rows between the two rotary layouts. With `to_hf`, Hugging Face row
// h*d + j*d/2 + i takes GGUF row h*d + 2i + j (j = 0, 1); otherwise the reverse.
absl::StatusOr<std::vector<float>> PermuteRotaryRows(std::span<const float> weight,
                                                     int64_t num_heads, int64_t head_dim,
                                                     bool to_hf) {
  if (num_heads <= 0 || head_dim <= 0 || head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rotary row permutation needs positive heads and an even head_dim, got ", num_heads,
        " heads of dimension ", head_dim));
  }
  const int64_t rows = num_heads * head_dim;
  if (weight.empty() || weight.size() % static_cast<size_t>(rows) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("rotary row permutation: ", weight.size(),
                                                   " values do not form ", rows, " rows"));
  }
  const size_t columns = weight.size() / static_cast<size_t>(rows);
  const int64_t half = head_dim / 2;
  std::vector<float> out(weight.size());
  for (int64_t h = 0; h < num_heads; ++h) {
    for (int64_t i = 0; i < half; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        const int64_t hf_row = h * head_dim + j * half + i;
        const int64_t gguf_row = h * head_dim + 2 * i + j;
        const int64_t from = to_hf ? gguf_row : hf_row;
        const int64_t to = to_hf ? hf_row : gguf_row;
        std::memcpy(out.data() + static_cast<size_t>(to) * columns,
                    weight.data() + static_cast<size_t>(from) * columns, columns * sizeof(float));
      }
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<std::vector<float>> GgufRotaryRowsToHf(std::span<const float> weight,
                                                      int64_t num_heads, int64_t head_dim) {
  return PermuteRotaryRows(weight, num_heads, head_dim, /*to_hf=*/true);
}

absl::StatusOr<std::vector<float>> HfRotaryRowsToGguf(std::span<const float> weight,
                                                      int64_t num_heads, int64_t head_dim) {
  return PermuteRotaryRows(weight, num_heads, head_dim, /*to_hf=*/false);
}

}  // namespace w8a8
