// The float16 instantiation of the CUTLASS sm90 2:4 sparse GEMM (prefill config 0) and compressor (one dtype per translation
// unit: see cutlass_sparse_sm90.h). Empty unless RIA_CUTLASS90_ENABLED.
// Guarded before any include: an sm_80-only build (no RIA_WITH_SM90A) compiles an empty unit here instead of
// parsing the ATen headers for nothing.
#if defined(RIA_WITH_CUTLASS) && defined(RIA_WITH_SM90A)
#include "cutlass_sparse_sm90_kernel.cuh"
#endif

#ifdef RIA_CUTLASS90_ENABLED
namespace ria {
namespace cutlass90 {
namespace detail {

void compress_f16(const at::Tensor& w, at::Tensor& values, at::Tensor& meta, cudaStream_t stream) {
  compress_impl<cutlass::half_t>(w, values, meta, stream);
}

// config 0 (the prefill tile; RIA_SM90_CONFIGS rows with stream_k = 0)
#define RIA_SM90_PICK_0(...) __VA_ARGS__
#define RIA_SM90_PICK_1(...)
RIA_SM90_CONFIGS(RIA_SM90_DEFINE_F16)
RIA_SM90_CONFIGS(RIA_SM90_DEFINE_WORKSPACE)
RIA_SM90_CONFIGS(RIA_SM90_EXPORT)  // extern "C": plain symbol names whatever the namespace
#undef RIA_SM90_PICK_0
#undef RIA_SM90_PICK_1

}  // namespace detail
}  // namespace cutlass90
}  // namespace ria
#endif  // RIA_CUTLASS90_ENABLED
