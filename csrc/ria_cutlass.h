// Shared by the files that include CUTLASS (only compiled with RIA_WITH_CUTLASS): status checks
// and the one way a CUTLASS device operator (GEMM or compressor) is run on a torch stream.
#pragma once

#include <cutlass/cutlass.h>

#include <c10/cuda/CUDACachingAllocator.h>

#include "ria_common.h"

#define RIA_CUTLASS_CHECK(expr)                                                                   \
  do {                                                                                            \
    cutlass::Status ria_cs_ = (expr);                                                             \
    TORCH_CHECK(ria_cs_ == cutlass::Status::kSuccess, "ria_kernels: CUTLASS call ", #expr,         \
                " failed: ", cutlassGetStatusString(ria_cs_));                                    \
  } while (0)

namespace ria {

// can_implement, a workspace from the caching allocator, initialize, run, and the launch error:
// every status checked.
template <typename Op>
void run_cutlass_op(const typename Op::Arguments& args, cudaStream_t stream) {
  Op op;
  RIA_CUTLASS_CHECK(Op::can_implement(args));
  auto workspace = c10::cuda::CUDACachingAllocator::get()->allocate(Op::get_workspace_size(args));
  RIA_CUTLASS_CHECK(op.initialize(args, workspace.get(), stream));
  RIA_CUTLASS_CHECK(op.run(stream));
  RIA_CUDA_CHECK(cudaGetLastError());
}

}  // namespace ria
