// The CUTLASS 3.x sm90 2:4 sparse GEMM is split into one translation unit per dtype so that a parallel
// build compiles the two heavy CUTLASS instantiations at the same time (the single file was the build's
// critical path; per-file compile times in the README's GPU-status notes):
//   cutlass_sparse_sm90.cu        the ops: checks, device guard, stream, dtype dispatch (no CUTLASS kernels)
//   cutlass_sparse_sm90_f16.cu    the float16 prefill GEMM (config 0) + compressor instantiation
//   cutlass_sparse_sm90_bf16.cu   the bfloat16 prefill GEMM (config 0) + compressor instantiation
//   cutlass_sparse_sm90_decode_{f16,bf16}.cu  the narrow-token-tile stream-K GEMMs (configs 1..), per dtype
//   cutlass_sparse_sm90_kernel.cuh  the CUTLASS types and launch code all of them instantiate
//   cutlass_sparse_configs.h      the list of configs (RIA_SM90_CONFIGS)
// This header decides whether the kernel is built (RIA_CUTLASS90_ENABLED) and declares the per-dtype calls.
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime_api.h>

#include <optional>

#include "cutlass_sparse_configs.h"

#if defined(RIA_WITH_CUTLASS) && defined(RIA_WITH_SM90A)
#include <cutlass/arch/config.h>
#endif

#if defined(RIA_WITH_CUTLASS) && defined(RIA_WITH_SM90A) && defined(CUTLASS_ARCH_MMA_SPARSE_SM90_SUPPORTED)
#define RIA_CUTLASS90_ENABLED 1
#endif

namespace ria {
namespace cutlass90 {

// Shape limits and the packed metadata layout (pinned by static_asserts in cutlass_sparse_sm90_kernel.cuh).
constexpr int64_t kMultipleN = 8;
constexpr int64_t kMultipleK = 16;
// Metadata padding of the sm90 sparse config for 16-bit inputs and a 128-deep K tile.
constexpr int64_t kMetaAlignM = 64;
constexpr int64_t kMetaAlignK = 128;
constexpr int64_t kMetaKPerByte = 8;

namespace detail {
// Unchecked: the ops in cutlass_sparse_sm90.cu check every input first. values/meta/y are preallocated.
void compress_f16(const at::Tensor& w, at::Tensor& values, at::Tensor& meta, cudaStream_t stream);
void compress_bf16(const at::Tensor& w, at::Tensor& values, at::Tensor& meta, cudaStream_t stream);

// One GEMM call, checked by the op: y = alpha * (x @ W^T) + bias with W as (values, meta).
struct GemmCall {
  const at::Tensor& x;
  const at::Tensor& values;
  const at::Tensor& meta;
  const std::optional<at::Tensor>& bias;
  const std::optional<at::Tensor>& alpha;
  at::Tensor& y;
  int64_t split_k;
  const std::optional<at::Tensor>& workspace;
  bool legacy;  // no workspace passed for config 0: the caching allocator (ria_cutlass.h run_cutlass_op_ws)
  cudaStream_t stream;
};

// Per config id: gemm_<dtype>_<id> runs it; workspace_<id> is its workspace size in bytes for an (m, n, k)
// problem on `device` (the same for both dtypes: the workspace holds fp32 partial tiles and locks).
#define RIA_SM90_DECLARE(id, tm, tn, tk, sk)  \
  void gemm_f16_##id(const GemmCall& call);   \
  void gemm_bf16_##id(const GemmCall& call);  \
  int64_t workspace_##id(int64_t m, int64_t n, int64_t k, int64_t split_k, int device);
RIA_SM90_CONFIGS(RIA_SM90_DECLARE)
#undef RIA_SM90_DECLARE
}  // namespace detail
}  // namespace cutlass90
}  // namespace ria
