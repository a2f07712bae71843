#include "kernels/weight_memory.h"

#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"

namespace w8a8::kernels {
namespace {

// The VmFlags line of the /proc/self/smaps mapping that contains `address`, or "" if none.
std::string MappingFlags(const void* address) {
  const auto target = reinterpret_cast<uintptr_t>(address);
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    uintptr_t begin = 0, end = 0;
    char dash = 0;
    std::istringstream fields(line);
    if (fields >> std::hex >> begin >> dash >> end && dash == '-') {
      inside = begin <= target && target < end;
      continue;
    }
    if (inside && line.rfind("VmFlags:", 0) == 0) return line;
  }
  return "";
}

TEST(WeightMemory, SmallBuffersAreCacheLineAligned) {
  for (size_t bytes : {size_t{1}, size_t{100}, size_t{4096}, size_t{1} << 20}) {
    void* pointer = AllocateWeightBytes(bytes);
    ASSERT_NE(pointer, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(pointer) % 64, 0u) << bytes << " bytes";
    std::memset(pointer, 1, bytes);
    FreeWeightBytes(pointer, bytes);
  }
}

TEST(WeightMemory, LargeBuffersAskForHugePages) {
  const size_t bytes = (size_t{2} << 20) * 3 + 12345;
  void* pointer = AllocateWeightBytes(bytes);
  ASSERT_NE(pointer, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(pointer) % (size_t{2} << 20), 0u);
  std::memset(pointer, 1, bytes);
  // "hg" marks a mapping advised with MADV_HUGEPAGE.
  const std::string flags = MappingFlags(pointer);
  ASSERT_FALSE(flags.empty()) << "no /proc/self/smaps mapping contains the buffer";
  EXPECT_NE(flags.find(" hg"), std::string::npos) << flags;
  FreeWeightBytes(pointer, bytes);
}

TEST(WeightMemory, VectorKeepsItsValues) {
  WeightVector<uint16_t> values(3'000'000);
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<uint16_t>(i);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(values.data()) % (size_t{2} << 20), 0u);
  EXPECT_EQ(values[2'999'999], static_cast<uint16_t>(2'999'999));
  values.resize(10);
  values.shrink_to_fit();
  EXPECT_EQ(values[9], 9);
}

}  // namespace
}  // namespace w8a8::kernels
