// The oneDNN CPU engine shared by every oneDNN primitive in the kernels.
#pragma once

#include <oneapi/dnnl/dnnl.hpp>

namespace w8a8::kernels::internal {

// Created on first use; thread-safe. oneDNN engines may be used from several threads at once.
const dnnl::engine& CpuEngine();

}  // namespace w8a8::kernels::internal
