// The float16 instantiation of the CUTLASS sm90 2:4 sparse GEMM and compressor (one dtype per translation
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

void gemm_f16(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
              const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& alpha, at::Tensor& y,
              cudaStream_t stream) {
  gemm_impl<cutlass::half_t>(x, values, meta, bias, alpha, y, stream);
}

}  // namespace detail
}  // namespace cutlass90
}  // namespace ria
#endif  // RIA_CUTLASS90_ENABLED
