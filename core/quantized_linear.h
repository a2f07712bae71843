// A linear layer with int8 weights that quantizes its input to int8 on every call.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "core/linear.h"
#include "core/quantization.h"
#include "core/weight_quantizer.h"

namespace w8a8 {

// Builds a LinearLayer from quantized weights: Forward quantizes x per token or per tensor
// (symmetric int8, dynamic) and multiplies through kernels::Int8Matmul. The layer owns the
// prepared weights, keeps no mutable state and is safe to call from several threads.
// NOTE: per-tensor activations take one scale over all `m` rows of a call, so with batching a
// sequence's output depends on the other sequences in the batch. Per-token does not.
absl::StatusOr<std::unique_ptr<LinearLayer>> MakeQuantizedLinear(const QuantizedWeight& weight,
                                                                 ActivationScheme activations);

}  // namespace w8a8
