#include "core/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/checkpoint.h"
#include "nlohmann/json.hpp"
#include "tests/core/checkpoint_test_util.h"
#include "tests/test_util.h"

namespace w8a8 {
namespace {

using ::testing::HasSubstr;

std::span<const std::byte> AsBytes(const std::string& text) {
  return {reinterpret_cast<const std::byte*>(text.data()), text.size()};
}

template <typename T>
std::span<const std::byte> BytesOf(const std::vector<T>& values) {
  return std::as_bytes(std::span<const T>(values));
}

// A safetensors file from a header JSON and a data area.
std::string MakeFile(const nlohmann::json& header, const std::string& data) {
  const std::string text = header.dump();
  std::string file(8, '\0');
  const uint64_t length = text.size();
  std::memcpy(file.data(), &length, 8);
  return file + text + data;
}

TEST(DTypeConversion, HalfRoundTripsExactValues) {
  for (float value : {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 6.103515625e-05f, 5.9604645e-08f,
                      0.333251953125f}) {
    EXPECT_EQ(HalfToFloat(FloatToHalf(value)), value) << value;
  }
  EXPECT_EQ(FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xc000);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);  // Rounds to infinity.
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(std::nanf("")))));
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));  // Smallest subnormal.
  EXPECT_EQ(HalfToFloat(0x7bff), 65504.0f);
  // 1 + 2^-11 is halfway between 1 and the next half (1 + 2^-10): ties go to even (1).
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(FloatToHalf(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  // Subnormal rounding: 1.5 units of 2^-24 rounds to 2 units.
  EXPECT_EQ(FloatToHalf(1.5f * std::ldexp(1.0f, -24)), 0x0002);
}

TEST(DTypeConversion, BFloat16RoundsToNearestEven) {
  EXPECT_EQ(FloatToBFloat16(1.0f), 0x3f80);
  EXPECT_EQ(BFloat16ToFloat(0x3f80), 1.0f);
  // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to even (1).
  EXPECT_EQ(FloatToBFloat16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(FloatToBFloat16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(FloatToBFloat16(std::nanf("")))));
}

TEST(DTypeConversion, IntegerTensorsHaveNoFloatConversion) {
  const std::vector<int8_t> values = {1, 2};
  TensorView view{"w", DType::kI8, {2}, BytesOf(values).data(), 2};
  absl::StatusOr<std::vector<float>> converted = ToFloat32(view);
  ASSERT_FALSE(converted.ok());
  EXPECT_THAT(converted.status().message(), HasSubstr("I8"));
  EXPECT_THAT(converted.status().message(), HasSubstr("'w'"));
}

TEST(TensorBytes, ChecksOverflowAndQ8_0Rows) {
  EXPECT_EQ(*TensorBytes(DType::kBF16, std::vector<int64_t>{3, 5}), 30u);
  EXPECT_EQ(*TensorBytes(DType::kQ8_0, std::vector<int64_t>{2, 64}), 2u * 2u * 34u);
  EXPECT_FALSE(TensorBytes(DType::kQ8_0, std::vector<int64_t>{2, 48}).ok());
  EXPECT_FALSE(TensorBytes(DType::kF32, std::vector<int64_t>{int64_t{1} << 40, 1 << 30}).ok());
  EXPECT_FALSE(TensorBytes(DType::kF32, std::vector<int64_t>{-1}).ok());
  EXPECT_EQ(*TensorBytes(DType::kF32, std::vector<int64_t>{}), 4u);
}

TEST(Safetensors, EveryDTypeRoundTripsWithMetadata) {
  testing::TempDir dir;
  const std::vector<float> f32 = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -8.5f};
  std::vector<uint16_t> f16;
  std::vector<uint16_t> bf16;
  for (float v : f32) {
    f16.push_back(FloatToHalf(v));
    bf16.push_back(FloatToBFloat16(v));
  }
  const std::vector<int8_t> i8 = {-128, 0, 127};
  const std::vector<int32_t> i32 = {-5, 1 << 30};
  const std::vector<TensorToWrite> tensors = {
      {"b.f16", DType::kF16, {2, 3}, BytesOf(f16)},
      {"a.f32", DType::kF32, {3, 2}, BytesOf(f32)},
      {"c.bf16", DType::kBF16, {6}, BytesOf(bf16)},
      {"d.i8", DType::kI8, {3}, BytesOf(i8)},
      {"e.i32", DType::kI32, {1, 2}, BytesOf(i32)},
  };
  const auto path = dir / "model.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}}).ok());

  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  ASSERT_EQ((*file)->tensors().size(), 5u);
  EXPECT_EQ((*file)->tensors()[0].name, "b.f16");  // Data-offset order, as written.
  for (const char* name : {"a.f32", "b.f16", "c.bf16"}) {
    const TensorView* tensor = (*file)->FindTensor(name);
    ASSERT_NE(tensor, nullptr) << name;
    absl::StatusOr<std::vector<float>> values = ToFloat32(*tensor);
    ASSERT_TRUE(values.ok()) << values.status();
    EXPECT_EQ(*values, f32) << name;
  }
  const TensorView* int8 = (*file)->FindTensor("d.i8");
  ASSERT_NE(int8, nullptr);
  EXPECT_EQ(int8->dtype, DType::kI8);
  EXPECT_EQ(std::memcmp(int8->data, i8.data(), 3), 0);
  const TensorView* int32 = (*file)->FindTensor("e.i32");
  ASSERT_NE(int32, nullptr);
  EXPECT_EQ(int32->shape, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(std::memcmp(int32->data, i32.data(), 8), 0);

  // The header is padded so the data area starts 8-byte aligned.
  const std::string bytes = testing::ReadFile(path);
  uint64_t header_length = 0;
  std::memcpy(&header_length, bytes.data(), 8);
  EXPECT_EQ((8 + header_length) % 8, 0u);
}

TEST(SafetensorsWriter, StreamsTensorsInDeclaredOrder) {
  testing::TempDir dir;
  const auto path = dir / "out.safetensors";
  absl::StatusOr<std::unique_ptr<SafetensorsWriter>> writer = SafetensorsWriter::Create(
      path, {{"x", DType::kF32, {2}}, {"y", DType::kI8, {3}}});
  ASSERT_TRUE(writer.ok()) << writer.status();
  const std::vector<float> x = {1, 2};
  const std::vector<int8_t> y = {1, 2, 3};
  EXPECT_THAT((*writer)->WriteTensor("y", BytesOf(y)).message(), HasSubstr("next declared"));
  EXPECT_THAT((*writer)->WriteTensor("x", BytesOf(y)).message(), HasSubstr("needs 8 bytes"));
  ASSERT_TRUE((*writer)->WriteTensor("x", BytesOf(x)).ok());
  EXPECT_THAT((*writer)->Finish().message(), HasSubstr("'y'"));
  ASSERT_TRUE((*writer)->WriteTensor("y", BytesOf(y)).ok());
  EXPECT_FALSE(std::filesystem::exists(path));  // Only the partial file exists so far.
  ASSERT_TRUE((*writer)->Finish().ok());
  EXPECT_TRUE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(dir / "out.safetensors.partial"));

  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->tensors().size(), 2u);
}

TEST(SafetensorsWriter, AbandonedWriterLeavesNoFile) {
  testing::TempDir dir;
  const auto path = dir / "out.safetensors";
  {
    absl::StatusOr<std::unique_ptr<SafetensorsWriter>> writer =
        SafetensorsWriter::Create(path, {{"x", DType::kF32, {2}}});
    ASSERT_TRUE(writer.ok());
  }
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(dir / "out.safetensors.partial"));
}

TEST(SafetensorsWriter, Q8_0AndRepeatedNamesAreRejected) {
  testing::TempDir dir;
  EXPECT_FALSE(
      SafetensorsWriter::Create(dir / "a.safetensors", {{"x", DType::kQ8_0, {32}}}).ok());
  EXPECT_FALSE(SafetensorsWriter::Create(dir / "a.safetensors",
                                         {{"x", DType::kF32, {1}}, {"x", DType::kF32, {1}}})
                   .ok());
}

struct BadHeaderCase {
  const char* label;
  std::string file;
  const char* message;
};

TEST(Safetensors, InvalidHeadersAreRejectedWithReasons) {
  const std::string data(16, '\0');
  const nlohmann::json good = {{"w", {{"dtype", "F32"}, {"shape", {2, 2}}, {"data_offsets", {0, 16}}}}};
  std::string huge_length = MakeFile(good, data);
  const uint64_t huge = uint64_t{1} << 60;
  std::memcpy(huge_length.data(), &huge, 8);
  const std::vector<BadHeaderCase> cases = {
      {"short", "abc", "fewer than the 8-byte"},
      {"huge header length", huge_length, "header length"},
      {"invalid json", std::string("\x04\0\0\0\0\0\0\0", 8) + "{bad", "not valid JSON"},
      {"not an object", MakeFile(nlohmann::json::array({1}), ""), "JSON object"},
      {"unknown dtype",
       MakeFile({{"w", {{"dtype", "F64"}, {"shape", {2}}, {"data_offsets", {0, 16}}}}}, data),
       "'F64'"},
      {"past the end",
       MakeFile({{"w", {{"dtype", "F32"}, {"shape", {8}}, {"data_offsets", {0, 32}}}}}, data),
       "past the end"},
      {"size mismatch",
       MakeFile({{"w", {{"dtype", "F32"}, {"shape", {3}}, {"data_offsets", {0, 16}}}}}, data),
       "needs 12"},
      {"overlap",
       MakeFile({{"a", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0, 8}}}},
                 {"b", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {4, 12}}}}},
                data),
       "overlap"},
      {"negative dim",
       MakeFile({{"w", {{"dtype", "F32"}, {"shape", {-1}}, {"data_offsets", {0, 4}}}}}, data),
       "non-negative"},
      {"reversed offsets",
       MakeFile({{"w", {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {8, 4}}}}}, data),
       "after end"},
      {"missing field", MakeFile({{"w", {{"dtype", "F32"}, {"shape", {1}}}}}, data),
       "data_offsets"},
      {"metadata not strings", MakeFile({{"__metadata__", {{"k", 1}}}}, ""), "'k'"},
  };
  for (const BadHeaderCase& c : cases) {
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
        SafetensorsFile::Parse(AsBytes(c.file), "bad.safetensors");
    ASSERT_FALSE(file.ok()) << c.label;
    EXPECT_THAT(file.status().message(), HasSubstr(c.message)) << c.label;
    EXPECT_THAT(file.status().message(), HasSubstr("bad.safetensors")) << c.label;
  }
  EXPECT_TRUE(SafetensorsFile::Parse(AsBytes(MakeFile(good, data)), "good").ok());
}

// Every truncation and every flipped byte of a small LLaMA checkpoint in F32, F16 and BF16.
TEST(Safetensors, TruncationsAndByteFlipsFailCleanly) {
  testing::TempDir dir;
  const ModelConfig config = testing::TinyConfig();
  ASSERT_TRUE(testing::WriteHfDirectory(dir.path(), config, testing::TinyWeights(config),
                                        {DType::kF32, DType::kF16, DType::kBF16})
                  .ok());
  const std::string bytes = testing::ReadFile(dir / "model.safetensors");
  for (size_t length = 0; length < bytes.size(); ++length) {
    const std::string prefix = bytes.substr(0, length);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
        SafetensorsFile::Parse(AsBytes(prefix), "cut.safetensors");
    ASSERT_FALSE(file.ok()) << "length " << length;
    ASSERT_THAT(file.status().message(), HasSubstr("cut.safetensors")) << length;
  }
  uint64_t header_length = 0;
  std::memcpy(&header_length, bytes.data(), 8);
  std::string flipped = bytes;
  for (size_t i = 0; i < bytes.size(); ++i) {
    flipped[i] = static_cast<char>(flipped[i] ^ 0x5A);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
        SafetensorsFile::Parse(AsBytes(flipped), "flip.safetensors");
    if (i >= 8 + header_length) {
      // Data bytes carry no structure: the file still parses.
      ASSERT_TRUE(file.ok()) << "byte " << i << ": " << file.status();
    } else if (file.ok()) {
      for (const TensorView& tensor : (*file)->tensors()) {
        if (tensor.dtype == DType::kI8 || tensor.dtype == DType::kI32) continue;
        ASSERT_TRUE(ToFloat32(tensor).ok()) << "byte " << i;
      }
    } else {
      ASSERT_THAT(file.status().message(), HasSubstr("flip.safetensors")) << i;
    }
    flipped[i] = bytes[i];
  }
}

}  // namespace
}  // namespace w8a8
