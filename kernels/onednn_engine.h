// The oneDNN CPU engine shared by every oneDNN primitive in the kernels.
#pragma once

#include <oneapi/dnnl/dnnl.hpp>

namespace w8a8::kernels::internal {

// Created on first use; thread-safe. oneDNN engines may be used from several threads at once.
const dnnl::engine& CpuEngine();

// A matmul primitive with the description it was created from, which the caller reads for
// the memory layouts the primitive chose.
struct MatmulPrimitive {
  explicit MatmulPrimitive(const dnnl::matmul::primitive_desc& description)
      : description(description), matmul(description) {}

  dnnl::matmul::primitive_desc description;
  dnnl::matmul matmul;
};

}  // namespace w8a8::kernels::internal
