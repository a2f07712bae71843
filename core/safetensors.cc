#include "core/safetensors.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/checkpoint.h"
#include "core/status_macros.h"
#include "nlohmann/json.hpp"

namespace w8a8 {
namespace {

using nlohmann::json;

constexpr char kMetadataKey[] = "__metadata__";
constexpr uint64_t kHeaderAlignment = 8;

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<std::vector<int64_t>> ParseShape(const json& value, const std::string& where) {
  if (!value.is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": 'shape' must be a list of sizes, got ", value.dump()));
  }
  std::vector<int64_t> shape;
  shape.reserve(value.size());
  for (const json& dim : value) {
    if (!dim.is_number_integer() ||
        (dim.is_number_unsigned() && dim.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) ||
        (!dim.is_number_unsigned() && dim.get<int64_t>() < 0)) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": 'shape' must hold non-negative integers, got ", value.dump()));
    }
    shape.push_back(dim.get<int64_t>());
  }
  return shape;
}

absl::StatusOr<std::pair<uint64_t, uint64_t>> ParseOffsets(const json& value,
                                                          const std::string& where) {
  if (!value.is_array() || value.size() != 2 || !value[0].is_number_unsigned() ||
      !value[1].is_number_unsigned()) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": 'data_offsets' must be [begin, end] with non-negative integers, got ",
        value.dump()));
  }
  const uint64_t begin = value[0].get<uint64_t>();
  const uint64_t end = value[1].get<uint64_t>();
  if (begin > end) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": 'data_offsets' begin ", begin, " is after end ", end));
  }
  return std::make_pair(begin, end);
}

void WriteLe64(std::FILE* file, uint64_t value) {
  unsigned char bytes[8];
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<unsigned char>(value >> (8 * i));
  std::fwrite(bytes, 1, sizeof(bytes), file);
}

}  // namespace

absl::StatusOr<DType> ParseSafetensorsDType(std::string_view name) {
  if (name == "F32") return DType::kF32;
  if (name == "F16") return DType::kF16;
  if (name == "BF16") return DType::kBF16;
  if (name == "I8") return DType::kI8;
  if (name == "I32") return DType::kI32;
  return absl::InvalidArgumentError(
      absl::StrCat("dtype '", std::string(name),
                   "' is not supported; supported safetensors dtypes are F32, F16, BF16, I8 "
                   "and I32"));
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const std::filesystem::path& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> parsed, Parse(file->bytes(), path.string()));
  parsed->file_ = std::move(file);
  return parsed;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Parse(
    std::span<const std::byte> bytes, std::string source) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->source_ = std::move(source);
  const std::string& src = file->source_;

  // Header length and header.
  if (bytes.size() < 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        src, ": truncated safetensors file: ", bytes.size(),
        " bytes, fewer than the 8-byte header length"));
  }
  uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i) {
    header_length = (header_length << 8) | static_cast<uint8_t>(bytes[i]);
  }
  if (header_length > bytes.size() - 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        src, ": safetensors header length ", header_length, " exceeds the ", bytes.size() - 8,
        " bytes after the length field; the file is truncated or not safetensors"));
  }
  const auto* header_begin = reinterpret_cast<const char*>(bytes.data() + 8);
  const json header =
      json::parse(header_begin, header_begin + header_length, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) {
    return absl::InvalidArgumentError(
        absl::StrCat(src, ": the safetensors header (", header_length,
                     " bytes) is not valid JSON; the file is corrupt or not safetensors"));
  }
  if (!header.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(src, ": the safetensors header must be a JSON object"));
  }

  const uint64_t data_start = 8 + header_length;
  const uint64_t data_size = bytes.size() - data_start;
  struct Entry {
    TensorView view;
    uint64_t begin;
    uint64_t end;
  };
  std::vector<Entry> entries;
  entries.reserve(header.size());
  for (const auto& [name, info] : header.items()) {
    if (name == kMetadataKey) {
      if (!info.is_object()) {
        return absl::InvalidArgumentError(
            absl::StrCat(src, ": '__metadata__' must be an object of strings"));
      }
      for (const auto& [key, value] : info.items()) {
        if (!value.is_string()) {
          return absl::InvalidArgumentError(absl::StrCat(
              src, ": '__metadata__' entry '", key, "' must be a string, got ", value.dump()));
        }
        file->metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    const std::string where = absl::StrCat(src, ": tensor '", name, "'");
    if (!info.is_object() || !info.contains("dtype") || !info.contains("shape") ||
        !info.contains("data_offsets") || !info.at("dtype").is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, " must have a string 'dtype', a 'shape' and 'data_offsets'"));
    }
    Entry entry;
    entry.view.name = name;
    const absl::StatusOr<DType> dtype = ParseSafetensorsDType(info.at("dtype").get<std::string>());
    if (!dtype.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", dtype.status().message()));
    }
    entry.view.dtype = *dtype;
    ASSIGN_OR_RETURN(entry.view.shape, ParseShape(info.at("shape"), where));
    ASSIGN_OR_RETURN(std::tie(entry.begin, entry.end), ParseOffsets(info.at("data_offsets"), where));
    const absl::StatusOr<uint64_t> expected = TensorBytes(entry.view.dtype, entry.view.shape);
    if (!expected.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", expected.status().message()));
    }
    if (entry.end > data_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, " ends at data offset ", entry.end, ", past the end of the data area (",
          data_size, " bytes); the file is truncated or corrupt"));
    }
    if (entry.end - entry.begin != *expected) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, " spans ", entry.end - entry.begin, " bytes, but ",
          std::string(DTypeName(entry.view.dtype)), " of shape ", ShapeString(entry.view.shape),
          " needs ", *expected));
    }
    entry.view.data = bytes.data() + data_start + entry.begin;
    entry.view.size_bytes = entry.end - entry.begin;
    entries.push_back(std::move(entry));
  }

  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 1; i < entries.size(); ++i) {
    if (entries[i - 1].end > entries[i].begin) {
      return absl::InvalidArgumentError(absl::StrCat(
          src, ": the data of tensors '", entries[i - 1].view.name, "' and '",
          entries[i].view.name, "' overlap; the file is corrupt"));
    }
  }

  file->tensors_.reserve(entries.size());
  for (Entry& entry : entries) {
    file->index_[entry.view.name] = file->tensors_.size();
    file->tensors_.push_back(std::move(entry.view));
  }
  return file;
}

const TensorView* SafetensorsFile::FindTensor(std::string_view name) const {
  const auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Create(
    const std::filesystem::path& path, std::vector<TensorSpec> tensors,
    const std::map<std::string, std::string>& metadata) {
  std::unique_ptr<SafetensorsWriter> writer(new SafetensorsWriter());
  writer->path_ = path;
  writer->partial_path_ = path;
  writer->partial_path_ += ".partial";

  json header = json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  uint64_t offset = 0;
  for (const TensorSpec& tensor : tensors) {
    if (tensor.name == kMetadataKey || header.contains(tensor.name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot write ", path.string(), ": tensor name '", tensor.name,
          "' is repeated or reserved"));
    }
    if (tensor.dtype == DType::kQ8_0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot write ", path.string(), ": tensor '", tensor.name,
          "' has dtype Q8_0, which safetensors cannot store"));
    }
    const absl::StatusOr<uint64_t> size = TensorBytes(tensor.dtype, tensor.shape);
    if (!size.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("cannot write ", path.string(),
                                                     ": tensor '", tensor.name, "': ",
                                                     size.status().message()));
    }
    header[tensor.name] = {{"dtype", std::string(DTypeName(tensor.dtype))},
                           {"shape", tensor.shape},
                           {"data_offsets", {offset, offset + *size}}};
    offset += *size;
    writer->sizes_.push_back(*size);
  }
  writer->tensors_ = std::move(tensors);

  std::string text = header.dump();
  text.append((kHeaderAlignment - text.size() % kHeaderAlignment) % kHeaderAlignment, ' ');

  writer->file_ = std::fopen(writer->partial_path_.c_str(), "wb");
  if (writer->file_ == nullptr) {
    return absl::InternalError(absl::StrCat("failed to create ", writer->partial_path_.string(), ": ",
                                            std::strerror(errno)));
  }
  WriteLe64(writer->file_, text.size());
  std::fwrite(text.data(), 1, text.size(), writer->file_);
  if (std::ferror(writer->file_)) {
    return absl::InternalError(
        absl::StrCat("failed to write the header of ", writer->partial_path_.string()));
  }
  return writer;
}

SafetensorsWriter::~SafetensorsWriter() {
  if (file_ != nullptr) std::fclose(file_);
  if (!finished_) {
    std::error_code ignored;
    std::filesystem::remove(partial_path_, ignored);
  }
}

absl::Status SafetensorsWriter::WriteTensor(const std::string& name,
                                            std::span<const std::byte> data) {
  if (file_ == nullptr || next_ >= tensors_.size()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot write tensor '", name, "' to ", path_.string(),
        ": every declared tensor was already written or the writer is finished"));
  }
  const TensorSpec& expected = tensors_[next_];
  if (name != expected.name) {
    return absl::InvalidArgumentError(absl::StrCat("cannot write tensor '", name, "' to ",
                                                   path_.string(), ": the next declared tensor is '",
                                                   expected.name, "'"));
  }
  if (data.size() != sizes_[next_]) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot write tensor '", name, "' to ", path_.string(), ": ",
        std::string(DTypeName(expected.dtype)), " of shape ", ShapeString(expected.shape),
        " needs ", sizes_[next_], " bytes, but ", data.size(), " were given"));
  }
  if (!data.empty() && std::fwrite(data.data(), 1, data.size(), file_) != data.size()) {
    return absl::InternalError(absl::StrCat("failed to write tensor '", name, "' to ",
                                            partial_path_.string(), ": ", std::strerror(errno)));
  }
  ++next_;
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Finish() {
  if (file_ == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("safetensors writer for ", path_.string(), " is already finished"));
  }
  if (next_ != tensors_.size()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot finish ", path_.string(), ": tensor '", tensors_[next_].name,
        "' and any after it were not written"));
  }
  const bool write_failed = std::fflush(file_) != 0 || std::ferror(file_);
  const bool close_failed = std::fclose(file_) != 0;
  file_ = nullptr;
  if (write_failed || close_failed) {
    return absl::InternalError(absl::StrCat("failed to write ", partial_path_.string(), ": ",
                                            std::strerror(errno)));
  }
  std::error_code error;
  std::filesystem::rename(partial_path_, path_, error);
  if (error) {
    return absl::InternalError(absl::StrCat("failed to rename ", partial_path_.string(), " to ",
                                            path_.string(), ": ", error.message()));
  }
  finished_ = true;
  return absl::OkStatus();
}

absl::Status WriteSafetensors(const std::filesystem::path& path,
                              const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsWriter::TensorSpec> specs;
  specs.reserve(tensors.size());
  for (const TensorToWrite& tensor : tensors) {
    specs.push_back({tensor.name, tensor.dtype, tensor.shape});
  }
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> writer,
                   SafetensorsWriter::Create(path, std::move(specs), metadata));
  for (const TensorToWrite& tensor : tensors) {
    RETURN_IF_ERROR(writer->WriteTensor(tensor.name, tensor.data));
  }
  return writer->Finish();
}

}  // namespace w8a8
