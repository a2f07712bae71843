#include <omp.h>

#include <algorithm>
#include <cmath>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/gemm.h"
#include "kernels/int8_packed.h"
#include "kernels/onednn_int8_matmul.h"
#include "kernels/parallel.h"
#include "kernels/reference.h"

namespace w8a8::kernels {
namespace {

// The kScalar path: the reference loops over the weights as given.
class ScalarInt8Matmul final : public Int8Matmul {
 public:
  ScalarInt8Matmul(std::vector<int8_t> weights, int64_t n, int64_t k, std::vector<float> scales,
                   int64_t group_size)
      : weights_(std::move(weights)),
        scales_(std::move(scales)),
        n_(n),
        k_(k),
        group_size_(group_size) {}

  void Run(const int8_t* xq, const float* x_scales, int64_t m, float* y) const override {
    reference::Int8Matmul(xq, x_scales, m, weights_.data(), n_, k_, scales_.data(), group_size_,
                          y);
  }
  int64_t n() const override { return n_; }
  int64_t k() const override { return k_; }
  int64_t group_size() const override { return group_size_; }
  Isa isa() const override { return Isa::kScalar; }
  size_t memory_bytes() const override {
    return weights_.size() * sizeof(int8_t) + scales_.size() * sizeof(float);
  }

 private:
  std::vector<int8_t> weights_;
  std::vector<float> scales_;
  int64_t n_;
  int64_t k_;
  int64_t group_size_;
};

// The AVX2 and AVX-512 VNNI paths over weights in the packed layout of int8_packed.h.
class PackedInt8Matmul final : public Int8Matmul {
 public:
  PackedInt8Matmul(internal::PackedInt8Weights packed, Isa isa)
      : packed_(std::move(packed)), isa_(isa) {}

  void Run(const int8_t* xq, const float* x_scales, int64_t m, float* y) const override {
    if (m <= 0) return;
    const int64_t padded_k = packed_.padded_k();
    thread_local std::vector<uint8_t> activations;
    activations.resize(static_cast<size_t>(m * padded_k));
    internal::PackActivations(packed_, xq, m, activations.data());
    const uint8_t* xa = activations.data();

    // Threads split the column blocks when there are enough of them, so each thread streams
    // its own part of the weights once. Otherwise they split the rows. Column ranges are
    // whole quads of kBlockQuad blocks. A small product runs on the calling thread.
    const int64_t blocks = packed_.blocks;
    const int64_t units = packed_.quads;
    const int threads =
        m * packed_.n * packed_.k >= kMinThreadedMacs ? omp_get_max_threads() : 1;
    const bool split_columns = units >= 2 * threads || m < threads;
    const int64_t work = split_columns ? units : m;
    ParallelRegion(std::min<int64_t>(threads, work), [&](int64_t index, int64_t count) {
      const int64_t begin = work * index / count;
      const int64_t end = work * (index + 1) / count;
      if (split_columns) {
        RunRange(xa, x_scales, m, std::min(blocks, begin * internal::kBlockQuad),
                 std::min(blocks, end * internal::kBlockQuad), y);
      } else if (begin < end) {
        RunRange(xa + begin * padded_k, x_scales + begin, end - begin, 0, blocks,
                 y + begin * packed_.n);
      }
    });
  }
  int64_t n() const override { return packed_.n; }
  int64_t k() const override { return packed_.k; }
  int64_t group_size() const override { return packed_.group_size; }
  Isa isa() const override { return isa_; }
  std::span<const int8_t> packed_weights() const { return packed_.weights; }
  // -128 times the sum of each weight row, n entries. Per-channel weights only (one group).
  std::span<const int32_t> row_compensation() const {
    return std::span<const int32_t>(packed_.compensation).first(static_cast<size_t>(packed_.n));
  }
  size_t memory_bytes() const override {
    return packed_.weights.size() * sizeof(int8_t) +
           packed_.compensation.size() * sizeof(int32_t) + packed_.scales.size() * sizeof(float);
  }

 private:
  void RunRange(const uint8_t* xa, const float* x_scales, int64_t rows, int64_t block_begin,
                int64_t block_end, float* y) const {
    if (block_begin >= block_end) return;
    if (isa_ == Isa::kAvx512Vnni) {
      internal::RunPackedAvx512(packed_, xa, x_scales, rows, block_begin, block_end, y);
    } else {
      internal::RunPackedAvx2(packed_, xa, x_scales, rows, block_begin, block_end, y);
    }
  }

  internal::PackedInt8Weights packed_;
  Isa isa_;
};

// Per-channel weights on AVX-512: the one place that picks oneDNN's int8 matmul or the packed
// VNNI loop, by m. The packed loop reads the weights from memory once for up to 16 rows
// (RunPackedAvx512), so it wins where the product is bound by reading them. Measured with
// bench/kernel_bench.cc on the four Llama-3.2-1B shapes, 2 threads, oneDNN 2.6:
//   With AMX (2-core Xeon, 2 MiB L2 per core), from DRAM: the packed loop was 1.06 to 1.43x
//   faster at m = 8, 12 and 16 in two runs (1.72x once, at m = 12 on 2048 x 8192).
//   Without AMX (oneDNN on vpdpbusd, 2-core Ice Lake Xeon, 1.25 MiB L2 per core): the packed
//   loop was 1.3 to 1.4x faster from DRAM at m = 16, and 0.96 to 1.3x as fast with the
//   weights in cache. At m = 64 oneDNN was as fast or up to 1.4x faster.
// NOTE: with AMX, products with the weights in cache were not compared since the switch
// moved from m = 4 to 16. A model's weights come from DRAM in decode.
// Where oneDNN has only its reference implementation for m, the packed loop runs instead.
// With k a multiple of 64, oneDNN reads the packed weights in place (see int8_packed.h), with
// or without AMX, so the weights are stored once. With another k oneDNN keeps its own copy.
class PerChannelAvx512Matmul final : public Int8Matmul {
 public:
  PerChannelAvx512Matmul(std::unique_ptr<PackedInt8Matmul> packed,
                         std::unique_ptr<internal::OneDnnInt8Matmul> onednn)
      : packed_(std::move(packed)),
        onednn_(std::move(onednn)) {}

  void Run(const int8_t* xq, const float* x_scales, int64_t m, float* y) const override {
    // oneDNN runs even a small product on all threads, so a small one stays with the packed
    // loop, which runs it on the calling thread.
    if (m <= kPackedMaxRows || m * n() * k() < kMinThreadedMacs || !onednn_->Accelerated(m)) {
      packed_->Run(xq, x_scales, m, y);
    } else {
      onednn_->Run(xq, x_scales, m, y);
    }
  }
  int64_t n() const override { return packed_->n(); }
  int64_t k() const override { return packed_->k(); }
  int64_t group_size() const override { return 0; }
  Isa isa() const override { return Isa::kAvx512Vnni; }
  size_t memory_bytes() const override {
    return onednn_->memory_bytes() + packed_->memory_bytes();
  }

 private:
  // Declared first: onednn_ may read the packed weights, so it is destroyed before them.
  std::unique_ptr<PackedInt8Matmul> packed_;
  std::unique_ptr<internal::OneDnnInt8Matmul> onednn_;
  // The packed loop serves products of up to this many rows, and all products below
  // kMinThreadedMacs.
  static constexpr int64_t kPackedMaxRows = 16;
};

absl::Status ValidateInt8Weights(std::span<const int8_t> weights, int64_t n, int64_t k,
                                 std::span<const float> scales, int64_t group_size) {
  if (n <= 0 || k <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("Int8Matmul: invalid shape n=", n, ", k=", k,
                                                   "; both must be positive."));
  }
  if (group_size < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Int8Matmul: invalid group_size ", group_size, "; use 0 for per-channel scales."));
  }
  if (static_cast<int64_t>(weights.size()) != n * k) {
    return absl::InvalidArgumentError(
        absl::StrCat("Int8Matmul: weights have ", weights.size(), " values, expected n * k = ",
                     n, " * ", k, " = ", n * k, "."));
  }
  const int64_t groups = group_size == 0 ? 1 : (k + group_size - 1) / group_size;
  if (static_cast<int64_t>(scales.size()) != n * groups) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Int8Matmul: scales have ", scales.size(), " values, expected n * groups = ", n, " * ",
        groups, " = ", n * groups, " for k=", k, " and group_size=", group_size, "."));
  }
  for (size_t i = 0; i < scales.size(); ++i) {
    if (!std::isfinite(scales[i])) {
      return absl::InvalidArgumentError(absl::StrCat("Int8Matmul: scale ", i, " is ",
                                                     scales[i], "; scales must be finite."));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Int8Matmul>> Int8Matmul::Create(std::span<const int8_t> weights,
                                                               int64_t n, int64_t k,
                                                               std::span<const float> scales,
                                                               int64_t group_size) {
  return Create(weights, n, k, scales, group_size, ActiveIsa());
}

absl::StatusOr<std::unique_ptr<Int8Matmul>> Int8Matmul::Create(std::span<const int8_t> weights,
                                                               int64_t n, int64_t k,
                                                               std::span<const float> scales,
                                                               int64_t group_size, Isa isa) {
  if (absl::Status status = ValidateInt8Weights(weights, n, k, scales, group_size);
      !status.ok()) {
    return status;
  }
  if (!CpuSupports(isa)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "Int8Matmul: this CPU does not support ", std::string(IsaName(isa)),
        "; pick one of the ISAs that SupportedIsas() returns."));
  }
  switch (isa) {
    case Isa::kScalar:
      return std::make_unique<ScalarInt8Matmul>(
          std::vector<int8_t>(weights.begin(), weights.end()), n, k,
          std::vector<float>(scales.begin(), scales.end()), group_size);
    case Isa::kAvx2:
      break;
    case Isa::kAvx512Vnni:
      break;
  }
  auto packed = std::make_unique<PackedInt8Matmul>(
      internal::PackInt8Weights(weights.data(), n, k, scales.data(), group_size), isa);
  if (isa != Isa::kAvx512Vnni || group_size != 0) return packed;
  absl::StatusOr<std::unique_ptr<internal::OneDnnInt8Matmul>> onednn =
      internal::CreateOneDnnInt8Matmul(weights, n, k, scales, packed->row_compensation(),
                                       packed->packed_weights());
  if (!onednn.ok()) return onednn.status();
  return std::make_unique<PerChannelAvx512Matmul>(std::move(packed), std::move(onednn).value());
}

}  // namespace w8a8::kernels
