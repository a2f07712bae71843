#include "kernels/onednn_int8_matmul.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "kernels/onednn_engine.h"
#include "kernels/parallel.h"

namespace w8a8::kernels::internal {
namespace {

using dnnl::memory;

using Primitive = MatmulPrimitive;

// The row count of the product for which oneDNN picks the weight layout. oneDNN runs only
// products of several rows, because the packed loop computes single rows.
constexpr int64_t kLayoutRows = 16;

// Turns the int32 sums that oneDNN wrote into one row of y into FP32 outputs, in place. The
// arithmetic is that of the packed loop and the reference: the exact int32 sum, times the
// weight scale, times the activation scale, each product rounded to FP32. GCC left this loop
// scalar inside a lambda body, so it is a function of its own.
void FinishRow(float* y_row, int64_t n, const int32_t* compensation, const float* scales,
               float x_scale) {
#pragma omp simd
  for (int64_t col = 0; col < n; ++col) {
    int32_t sum;
    std::memcpy(&sum, y_row + col, sizeof(sum));
    y_row[col] = static_cast<float>(sum + compensation[col]) * scales[col] * x_scale;
  }
}

class OneDnnInt8MatmulImpl final : public OneDnnInt8Matmul {
 public:
  OneDnnInt8MatmulImpl(int64_t n, int64_t k, std::vector<float> scales,
                       std::vector<int32_t> compensation)
      : n_(n), k_(k), scales_(std::move(scales)), compensation_(std::move(compensation)) {}

  // Picks the weight layout for kLayoutRows rows and either adopts `shared_layout` or
  // reorders `weights` [n, k] into a buffer of its own. Throws dnnl::error.
  void PrepareWeights(std::span<const int8_t> weights, std::span<const int8_t> shared_layout) {
    const dnnl::matmul::primitive_desc description =
        Describe(kLayoutRows, WeightsDesc(memory::format_tag::any));
    weights_desc_ = description.weights_desc();
    shares_weights_ = !shared_layout.empty() &&
                      weights_desc_ == WeightsDesc(memory::format_tag::BA16a64b4a) &&
                      weights_desc_.get_size() == shared_layout.size();
    if (shares_weights_) {
      weights_ = memory(weights_desc_, CpuEngine(), const_cast<int8_t*>(shared_layout.data()));
    } else {
      weights_ = memory(weights_desc_, CpuEngine());
      // [n, k] row-major is the [k, n] matrix oneDNN expects, in the transposed "ba" layout.
      memory plain(WeightsDesc(memory::format_tag::ba), CpuEngine(),
                   const_cast<int8_t*>(weights.data()));
      dnnl::stream stream(CpuEngine());
      dnnl::reorder(plain, weights_).execute(stream, plain, weights_);
      stream.wait();
    }
    absl::MutexLock lock(&mutex_);
    shapes_[kLayoutRows] = std::make_shared<Primitive>(description);
  }

  bool Accelerated(int64_t m) const override {
    const std::string_view implementation = PrimitiveFor(m)->description.impl_info_str();
    return implementation.substr(0, 3) != "ref";
  }

  bool SharesWeights() const override { return shares_weights_; }

  void Run(const int8_t* xq, const float* x_scales, int64_t m, float* y) const override {
    if (m <= 0) return;
    const std::shared_ptr<const Primitive> primitive = PrimitiveFor(m);
    const dnnl::matmul::primitive_desc& description = primitive->description;

    thread_local std::vector<char> scratchpad_buffer;
    const memory::desc scratchpad_desc = description.scratchpad_desc();
    scratchpad_buffer.resize(scratchpad_desc.get_size());

    // x + 128 as unsigned bytes: flipping the sign bit adds 128 to an int8 value.
    const int64_t k = k_;
    thread_local std::vector<uint8_t> shifted;
    shifted.resize(static_cast<size_t>(m * k));
    uint8_t* shifted_data = shifted.data();
#pragma omp simd
    for (int64_t i = 0; i < m * k; ++i) {
      shifted_data[i] = static_cast<uint8_t>(static_cast<uint8_t>(xq[i]) ^ 0x80u);
    }

    // oneDNN writes the int32 sums into y's bytes. The pass below turns them into FP32 in
    // place.
    const dnnl::engine& engine = CpuEngine();
    memory source(description.src_desc(), engine, shifted_data);
    memory destination(description.dst_desc(), engine, y);
    memory weights = weights_;
    memory scratchpad(scratchpad_desc, engine, scratchpad_buffer.data());
    thread_local dnnl::stream stream(CpuEngine());
    try {
      primitive->matmul.execute(stream, {{DNNL_ARG_SRC, source},
                                         {DNNL_ARG_WEIGHTS, weights},
                                         {DNNL_ARG_DST, destination},
                                         {DNNL_ARG_SCRATCHPAD, scratchpad}});
      stream.wait();
    } catch (const dnnl::error& error) {
      Fail("execute", m, error);
    }

    const int64_t n = n_;
    ParallelFor(m, m * n >= kMinThreadedElements, [&](int64_t row) {
      FinishRow(y + row * n, n, compensation_.data(), scales_.data(), x_scales[row]);
    });
  }

  int64_t n() const override { return n_; }
  int64_t k() const override { return k_; }
  int64_t group_size() const override { return 0; }
  Isa isa() const override { return Isa::kAvx512Vnni; }
  size_t memory_bytes() const override {
    return (shares_weights_ ? 0 : weights_desc_.get_size()) + scales_.size() * sizeof(float) +
           compensation_.size() * sizeof(int32_t);
  }

 private:
  memory::desc WeightsDesc(memory::format_tag tag) const {
    return memory::desc({k_, n_}, memory::data_type::s8, tag);
  }

  dnnl::matmul::primitive_desc Describe(int64_t m, const memory::desc& weights) const {
    const memory::desc source({m, k_}, memory::data_type::u8, memory::format_tag::ab);
    const memory::desc destination({m, n_}, memory::data_type::s32, memory::format_tag::ab);
    dnnl::primitive_attr attributes;
    attributes.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    return dnnl::matmul::primitive_desc(dnnl::matmul::desc(source, weights, destination),
                                        attributes, CpuEngine());
  }

  std::shared_ptr<const Primitive> PrimitiveFor(int64_t m) const {
    {
      absl::ReaderMutexLock lock(&mutex_);
      if (auto it = shapes_.find(m); it != shapes_.end()) return it->second;
    }
    // Creating a primitive takes milliseconds, so it happens outside the lock. Two threads
    // that miss at once both create one, and the first to insert wins.
    std::shared_ptr<const Primitive> primitive;
    try {
      primitive = std::make_shared<Primitive>(Describe(m, weights_desc_));
    } catch (const dnnl::error& error) {
      Fail("create the primitive", m, error);
    }
    absl::MutexLock lock(&mutex_);
    return shapes_.try_emplace(m, std::move(primitive)).first->second;
  }

  // Run() has no error return. The weight layout is fixed with the first primitive, and oneDNN
  // 2.6 accepted it for every m tested, so a failure here is a bug that aborts the process.
  [[noreturn]] void Fail(const char* action, int64_t m, const dnnl::error& error) const {
    std::fprintf(stderr, "oneDNN int8 matmul failed to %s for m=%lld, n=%lld, k=%lld: %s\n",
                 action, static_cast<long long>(m), static_cast<long long>(n_),
                 static_cast<long long>(k_), error.what());
    std::abort();
  }

  int64_t n_;
  int64_t k_;
  std::vector<float> scales_;
  // [n]: -128 times each weight row's sum. The activations enter oneDNN as unsigned bytes
  // x + 128, and adding this term to each column's int32 sum removes the 128.
  std::vector<int32_t> compensation_;
  memory::desc weights_desc_;
  bool shares_weights_ = false;
  memory weights_;
  mutable absl::Mutex mutex_;
  mutable absl::flat_hash_map<int64_t, std::shared_ptr<const Primitive>> shapes_
      ABSL_GUARDED_BY(mutex_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<OneDnnInt8Matmul>> CreateOneDnnInt8Matmul(
    std::span<const int8_t> weights, int64_t n, int64_t k, std::span<const float> scales,
    std::span<const int32_t> compensation, std::span<const int8_t> shared_layout) {
  if (static_cast<int64_t>(compensation.size()) != n) {
    return absl::InvalidArgumentError(absl::StrCat("oneDNN int8 matmul: compensation has ",
                                                   compensation.size(), " entries, expected n = ",
                                                   n, "."));
  }
  auto matmul = std::make_unique<OneDnnInt8MatmulImpl>(
      n, k, std::vector<float>(scales.begin(), scales.end()),
      std::vector<int32_t>(compensation.begin(), compensation.end()));
  try {
    matmul->PrepareWeights(weights, shared_layout);
  } catch (const dnnl::error& error) {
    return absl::InternalError(absl::StrCat("oneDNN int8 matmul: could not prepare weights n=",
                                            n, ", k=", k, ": ", error.what()));
  }
  return matmul;
}

}  // namespace w8a8::kernels::internal
