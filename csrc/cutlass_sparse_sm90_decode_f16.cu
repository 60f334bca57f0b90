// The float16 instantiations of the CUTLASS sm90 2:4 sparse GEMM with narrow token tiles and stream-K: the
// RIA_SM90_CONFIGS rows with stream_k = 1 (decode, T <= 64), one dtype per translation unit (see
// cutlass_sparse_sm90.h). Empty unless RIA_CUTLASS90_ENABLED; guarded before any include like the prefill unit.
#if defined(RIA_WITH_CUTLASS) && defined(RIA_WITH_SM90A)
#include "cutlass_sparse_sm90_kernel.cuh"
#endif

#ifdef RIA_CUTLASS90_ENABLED
namespace ria {
namespace cutlass90 {
namespace detail {

#define RIA_SM90_PICK_0(...)
#define RIA_SM90_PICK_1(...) __VA_ARGS__
RIA_SM90_CONFIGS(RIA_SM90_DEFINE_F16)
RIA_SM90_CONFIGS(RIA_SM90_DEFINE_WORKSPACE)
RIA_SM90_CONFIGS(RIA_SM90_EXPORT)  // extern "C": plain symbol names whatever the namespace
#undef RIA_SM90_PICK_0
#undef RIA_SM90_PICK_1

}  // namespace detail
}  // namespace cutlass90
}  // namespace ria
#endif  // RIA_CUTLASS90_ENABLED
