#include <cstdlib>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu_features.h"

namespace w8a8::kernels {
namespace {

TEST(SupportedIsas, StartsWithScalarInOrder) {
  const std::vector<Isa> isas = SupportedIsas();
  ASSERT_FALSE(isas.empty());
  EXPECT_EQ(isas.front(), Isa::kScalar);
  for (size_t i = 1; i < isas.size(); ++i) {
    EXPECT_LT(static_cast<int>(isas[i - 1]), static_cast<int>(isas[i]));
  }
  for (Isa isa : isas) EXPECT_TRUE(CpuSupports(isa)) << IsaName(isa);
}

TEST(IsaName, NamesMatchW8a8IsaValues) {
  EXPECT_EQ(IsaName(Isa::kScalar), "scalar");
  EXPECT_EQ(IsaName(Isa::kAvx2), "avx2");
  EXPECT_EQ(IsaName(Isa::kAvx512Vnni), "avx512vnni");
}

// ActiveIsa() reads W8A8_ISA once per process, so this is the only test here that calls it.
// ctest runs every test in a process of its own.
TEST(ActiveIsa, EnvironmentLowersToScalar) {
  ASSERT_EQ(setenv("W8A8_ISA", "scalar", /*overwrite=*/1), 0);
  EXPECT_EQ(ActiveIsa(), Isa::kScalar);
}

}  // namespace
}  // namespace w8a8::kernels
