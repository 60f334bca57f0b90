// Shared by the files that include CUTLASS (only compiled with RIA_WITH_CUTLASS): status checks
// and the one way a CUTLASS device operator (GEMM or compressor) is run on a torch stream.
#pragma once

#include <cutlass/cutlass.h>

#include <c10/cuda/CUDACachingAllocator.h>

#include "ria_common.h"

#include <optional>

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

// The same with the workspace passed in by the caller (split-K semaphores, stream-K partials), so that the
// launch allocates nothing and can be captured into a CUDA graph with a workspace allocated beforehand.
// A workspace must be a contiguous uint8 CUDA tensor on `device` of at least Op::get_workspace_size bytes
// (the *_workspace_size ops return that number); none is needed when that size is 0. `allow_alloc`: the
// legacy path of the prefill configs (no workspace argument: the caching allocator, as run_cutlass_op).
template <typename Op>
void run_cutlass_op_ws(const typename Op::Arguments& args, const std::optional<at::Tensor>& workspace,
                       bool allow_alloc, int device, cudaStream_t stream, const char* op_name) {
  const size_t need = Op::get_workspace_size(args);
  if (!workspace.has_value() && allow_alloc) {
    run_cutlass_op<Op>(args, stream);
    return;
  }
  void* ptr = nullptr;
  if (workspace.has_value()) {
    const auto& w = *workspace;
    TORCH_CHECK(w.is_cuda() && w.get_device() == device, "ria_kernels.", op_name, ": workspace must be on cuda:",
                device, ", got ", w.device());
    TORCH_CHECK(w.scalar_type() == at::kByte && w.is_contiguous(), "ria_kernels.", op_name,
                ": workspace must be a contiguous uint8 tensor, got ", w.scalar_type());
    TORCH_CHECK(static_cast<size_t>(w.numel()) >= need, "ria_kernels.", op_name, ": workspace has ", w.numel(),
                " bytes, this config and shape need ", need, " (ask the matching *_workspace_size op)");
    TORCH_CHECK(reinterpret_cast<uintptr_t>(w.data_ptr()) % 16 == 0, "ria_kernels.", op_name,
                ": workspace must be 16-byte aligned");
    ptr = w.numel() > 0 ? w.data_ptr() : nullptr;
  } else {
    TORCH_CHECK(need == 0, "ria_kernels.", op_name, ": this config and shape need a workspace of ", need,
                " bytes (uint8 CUDA tensor, from the matching *_workspace_size op); none was passed");
  }
  Op op;
  RIA_CUTLASS_CHECK(Op::can_implement(args));
  RIA_CUTLASS_CHECK(op.initialize(args, ptr, stream));  // zeroes the semaphores / locks with async memsets
  RIA_CUTLASS_CHECK(op.run(stream));
  RIA_CUDA_CHECK(cudaGetLastError());
}

}  // namespace ria
