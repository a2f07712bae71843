#include <oneapi/dnnl/dnnl.hpp>

#include <memory>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "kernels/gemm_f32_internal.h"
#include "kernels/onednn_engine.h"

namespace w8a8::kernels::internal {
namespace {

using dnnl::memory;

using Primitive = MatmulPrimitive;

using Shape = std::tuple<int64_t, int64_t, int64_t>;

class PrimitiveCache {
 public:
  // Returns the primitive for (m, n, k), created on first use, or null if oneDNN rejects the
  // shape. Creation happens outside the lock, so two threads that miss at once both create
  // one, and the first to insert wins.
  std::shared_ptr<const Primitive> Get(int64_t m, int64_t n, int64_t k) {
    const Shape shape{m, n, k};
    {
      absl::ReaderMutexLock lock(&mutex_);
      if (auto it = primitives_.find(shape); it != primitives_.end()) return it->second;
    }
    std::shared_ptr<const Primitive> primitive;
    try {
      const memory::desc source({m, k}, memory::data_type::f32, memory::format_tag::ab);
      const memory::desc weights({k, n}, memory::data_type::f32, memory::format_tag::ba);
      const memory::desc destination({m, n}, memory::data_type::f32, memory::format_tag::ab);
      dnnl::primitive_attr attributes;
      attributes.set_scratchpad_mode(dnnl::scratchpad_mode::user);
      primitive = std::make_shared<Primitive>(dnnl::matmul::primitive_desc(
          dnnl::matmul::desc(source, weights, destination), attributes, CpuEngine()));
    } catch (const dnnl::error&) {
      primitive = nullptr;
    }
    absl::MutexLock lock(&mutex_);
    return primitives_.try_emplace(shape, std::move(primitive)).first->second;
  }

 private:
  absl::Mutex mutex_;
  absl::flat_hash_map<Shape, std::shared_ptr<const Primitive>> primitives_
      ABSL_GUARDED_BY(mutex_);
};

PrimitiveCache& Cache() {
  static PrimitiveCache* const cache = new PrimitiveCache();
  return *cache;
}

}  // namespace

bool OneDnnGemmF32(const float* x, const float* w, float* y, int64_t m, int64_t n, int64_t k) {
  const std::shared_ptr<const Primitive> primitive = Cache().Get(m, n, k);
  if (primitive == nullptr) return false;
  const dnnl::matmul::primitive_desc& description = primitive->description;

  thread_local std::vector<char> scratchpad_buffer;
  const memory::desc scratchpad_desc = description.scratchpad_desc();
  scratchpad_buffer.resize(scratchpad_desc.get_size());

  const dnnl::engine& engine = CpuEngine();
  memory source(description.src_desc(), engine, const_cast<float*>(x));
  memory weights(description.weights_desc(), engine, const_cast<float*>(w));
  memory destination(description.dst_desc(), engine, y);
  memory scratchpad(scratchpad_desc, engine, scratchpad_buffer.data());
  thread_local dnnl::stream stream(CpuEngine());
  try {
    primitive->matmul.execute(stream, {{DNNL_ARG_SRC, source},
                                       {DNNL_ARG_WEIGHTS, weights},
                                       {DNNL_ARG_DST, destination},
                                       {DNNL_ARG_SCRATCHPAD, scratchpad}});
    stream.wait();
  } catch (const dnnl::error&) {
    return false;
  }
  return true;
}

}  // namespace w8a8::kernels::internal
