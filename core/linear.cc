#include "core/linear.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "core/checkpoint.h"
#include "core/status_macros.h"
#include "kernels/gemm.h"
#include "kernels/gemm_bf16.h"

namespace w8a8 {

void LinearLayer::ForwardQuantized(const int8_t* xq, const float* scales, int64_t m,
                                   float* y) const {
  const int64_t k = in_features();
  std::vector<float> x(static_cast<size_t>(m * k));
  for (int64_t row = 0; row < m; ++row) {
    for (int64_t i = 0; i < k; ++i) {
      x[row * k + i] = static_cast<float>(xq[row * k + i]) * scales[row];
    }
  }
  Forward(x.data(), m, y);
}
namespace {

class Fp32Linear final : public LinearLayer {
 public:
  Fp32Linear(std::vector<float> weight, int64_t out_features, int64_t in_features)
      : weight_(std::move(weight)), out_features_(out_features), in_features_(in_features) {}

  void Forward(const float* x, int64_t m, float* y) const override {
    kernels::GemmF32(x, weight_.data(), y, m, out_features_, in_features_);
  }
  int64_t in_features() const override { return in_features_; }
  int64_t out_features() const override { return out_features_; }
  std::string scheme() const override { return "fp32"; }
  size_t weight_bytes() const override { return weight_.size() * sizeof(float); }

 private:
  std::vector<float> weight_;  // [out_features, in_features]
  int64_t out_features_;
  int64_t in_features_;
};

class Bf16Linear final : public LinearLayer {
 public:
  explicit Bf16Linear(kernels::Bf16Matrix weight) : weight_(std::move(weight)) {}

  void Forward(const float* x, int64_t m, float* y) const override { weight_.Multiply(x, m, y); }
  int64_t in_features() const override { return weight_.cols(); }
  int64_t out_features() const override { return weight_.rows(); }
  std::string scheme() const override { return "fp32"; }
  size_t weight_bytes() const override { return weight_.bytes(); }

 private:
  kernels::Bf16Matrix weight_;
};

}  // namespace

std::unique_ptr<LinearLayer> MakeFp32Linear(std::vector<float> weight, int64_t out_features,
                                            int64_t in_features) {
  return std::make_unique<Fp32Linear>(std::move(weight), out_features, in_features);
}

absl::StatusOr<std::unique_ptr<LinearLayer>> LoadUnquantizedLinear(const Checkpoint& checkpoint,
                                                                   const std::string& name,
                                                                   const std::string& tensor_name,
                                                                   int64_t out_features,
                                                                   int64_t in_features) {
  if (name == "lm_head") {
    ASSIGN_OR_RETURN(const TensorView view, checkpoint.Tensor(tensor_name));
    if (view.dtype == DType::kBF16 &&
        view.shape == std::vector<int64_t>{out_features, in_features}) {
      return std::make_unique<Bf16Linear>(
          kernels::Bf16Matrix(view.data, out_features, in_features));
    }
  }
  ASSIGN_OR_RETURN(std::vector<float> weight,
                   checkpoint.LoadFloat32(tensor_name, {out_features, in_features}));
  return MakeFp32Linear(std::move(weight), out_features, in_features);
}

bool IsSharedLmHead(const Checkpoint& checkpoint, const std::string& name) {
  return name == "lm_head" &&
         (checkpoint.config().tie_word_embeddings || !checkpoint.HasTensor("lm_head.weight"));
}

LinearFactory Fp32LinearFactory() {
  return [](const Checkpoint& checkpoint, const std::string& name, int64_t out_features,
            int64_t in_features) -> absl::StatusOr<std::unique_ptr<LinearLayer>> {
    if (IsSharedLmHead(checkpoint, name)) return std::unique_ptr<LinearLayer>();
    ASSIGN_OR_RETURN(std::vector<float> weight,
                     checkpoint.LoadFloat32(absl::StrCat(name, ".weight"),
                                            {out_features, in_features}));
    return MakeFp32Linear(std::move(weight), out_features, in_features);
  };
}

}  // namespace w8a8
