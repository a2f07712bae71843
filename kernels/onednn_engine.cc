#include "kernels/onednn_engine.h"

namespace w8a8::kernels::internal {

const dnnl::engine& CpuEngine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

}  // namespace w8a8::kernels::internal
