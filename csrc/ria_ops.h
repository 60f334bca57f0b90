// Declarations of the ria_kernels._C op implementations; registered in ops_registration.cpp.
// Op semantics (all matmuls): y[T, N] = alpha[n] * (x[T, K] @ W[N, K]^T) + bias[n], with W 2:4
// sparse along K (2 non-zeros in every 4 consecutive input channels), x/y row-major fp16/bf16.
#pragma once

#include <ATen/ATen.h>
#include <optional>

#include <vector>

namespace ria {
namespace cslt {
bool available();
int64_t version();
at::Tensor compress(const at::Tensor& weight);
std::vector<int64_t> search(const at::Tensor& x, const at::Tensor& compressed, int64_t out_features,
                            const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& alpha);
at::Tensor mm(const at::Tensor& x, const at::Tensor& compressed, int64_t out_features,
              const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& alpha, int64_t alg_id,
              int64_t split_k, int64_t split_k_mode);
std::vector<int64_t> cache_stats();
void clear_cache();
}  // namespace cslt

namespace cutlass_sp {
bool available();
std::vector<at::Tensor> compress(const at::Tensor& weight);
// config: a row id of RIA_SM80_CONFIGS (csrc/cutlass_sparse_configs.h); split_k: serial split-K slices (split-K
// configs only); workspace: uint8 CUDA tensor of >= workspace_size(...) bytes (needed when that is > 0, except
// for config 0, which then falls back to the caching allocator).
at::Tensor sparse_mm(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                     const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& alpha, int64_t config,
                     int64_t split_k, const std::optional<at::Tensor>& workspace);
int64_t workspace_size(int64_t n, int64_t t, int64_t k, int64_t config, int64_t split_k);
}  // namespace cutlass_sp

// CUTLASS 3.x sm90 (sm_90a, Hopper-only) sparse GEMM; packing and limits in cutlass_sparse_sm90.cu.
namespace cutlass90 {
bool available();  // built with the sm_90a kernel (the device must still be compute capability 9.0)
std::vector<at::Tensor> compress(const at::Tensor& weight);
// config: a row id of RIA_SM90_CONFIGS; split_k > 1 (stream-K configs only): split-K decomposition into that
// many slices, 1: CUTLASS's stream-K heuristic; workspace as for cutlass_sp (size for the current device).
at::Tensor sparse_mm(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                     const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& alpha, int64_t config,
                     int64_t split_k, const std::optional<at::Tensor>& workspace);
int64_t workspace_size(int64_t n, int64_t t, int64_t k, int64_t config, int64_t split_k);
}  // namespace cutlass90
}  // namespace ria
