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
at::Tensor sparse_mm(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                     const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& alpha);
}  // namespace cutlass_sp

// CUTLASS 3.x sm90 (sm_90a, Hopper-only) sparse GEMM; packing and limits in cutlass_sparse_sm90.cu.
namespace cutlass90 {
bool available();  // built with the sm_90a kernel (the device must still be compute capability 9.0)
std::vector<at::Tensor> compress(const at::Tensor& weight);
at::Tensor sparse_mm(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                     const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& alpha);
}  // namespace cutlass90
}  // namespace ria
