// Shared helpers for the ria_kernels C++/CUDA extension (ria_kernels._C).
//
// Conventions used by every launcher in csrc/:
//  * Inputs are checked at the boundary with TORCH_CHECK; each message names the
//    argument and the limit it broke (the Python side maps these to RiaInputError).
//  * Every CUDA runtime / cuSPARSELt / CUTLASS status is checked; the error names
//    the call that failed (RIA_CUDA_CHECK / RIA_CUSPARSELT_CHECK / RIA_CUTLASS_CHECK in ria_cutlass.h).
//  * Only c10/cuda headers are used (no ATen/cuda/CUDAContext.h): that header pulls in
//    cuBLAS/cuSPARSE headers we do not need, and keeping it out lets the sources be
//    compile-checked against a CPU wheel's headers (scripts/check_csrc.sh).
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "ria_capture.h"

#define RIA_CUDA_CHECK(expr)                                                        \
  do {                                                                              \
    cudaError_t ria_err_ = (expr);                                                  \
    TORCH_CHECK(ria_err_ == cudaSuccess, "ria_kernels: CUDA call ", #expr,          \
                " failed: ", cudaGetErrorName(ria_err_), " (",                      \
                cudaGetErrorString(ria_err_), ")");                                 \
  } while (0)

namespace ria {

// Checks shared by the sparse matmul launchers: x [T, K] row-major fp16/bf16 on CUDA.
inline void check_activation(const at::Tensor& x, const char* name = "x") {
  TORCH_CHECK(x.is_cuda(), name, " must be a CUDA tensor, got device ", x.device());
  TORCH_CHECK(x.dim() == 2, name, " must be 2-D [tokens, in_features], got ", x.dim(), "-D");
  TORCH_CHECK(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16, name,
              " must be float16 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous(), name, " must be row-major contiguous (strides [K, 1]), got strides ",
              x.strides());
  TORCH_CHECK(x.size(0) >= 1, name, " must have at least 1 token (rows), got ", x.size(0));
}

// The 2:4 weight every compress op takes: W [out_features, in_features], fp16/bf16 on CUDA
// (each kernel adds its own shape multiples and layout needs).
inline void check_weight(const at::Tensor& weight) {
  TORCH_CHECK(weight.is_cuda(), "weight must be a CUDA tensor, got device ", weight.device());
  TORCH_CHECK(weight.dim() == 2, "weight must be 2-D [out_features, in_features], got ", weight.dim(), "-D");
  TORCH_CHECK(weight.scalar_type() == at::kHalf || weight.scalar_type() == at::kBFloat16,
              "weight must be float16 or bfloat16, got ", weight.scalar_type());
}

// Optional epilogue vectors: bias [N] in x's dtype, alpha [N] float32, same device as x.
inline void check_epilogue(const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& alpha,
                           const at::Tensor& x, int64_t n) {
  if (bias.has_value()) {
    const auto& b = *bias;
    TORCH_CHECK(b.device() == x.device(), "bias must be on the same device as x (", x.device(), "), got ",
                b.device());
    TORCH_CHECK(b.dim() == 1 && b.size(0) == n, "bias must have shape [out_features=", n, "], got ",
                b.sizes());
    TORCH_CHECK(b.scalar_type() == x.scalar_type(), "bias dtype must match x (", x.scalar_type(), "), got ",
                b.scalar_type());
    TORCH_CHECK(b.is_contiguous(), "bias must be contiguous");
  }
  if (alpha.has_value()) {
    const auto& a = *alpha;
    TORCH_CHECK(a.device() == x.device(), "alpha must be on the same device as x (", x.device(), "), got ",
                a.device());
    TORCH_CHECK(a.dim() == 1 && a.size(0) == n, "alpha must have shape [out_features=", n, "], got ",
                a.sizes());
    TORCH_CHECK(a.scalar_type() == at::kFloat, "alpha must be float32, got ", a.scalar_type());
    TORCH_CHECK(a.is_contiguous(), "alpha must be contiguous");
  }
}

// Raises (see ria_capture.h) when `stream` is capturing; `what` names the work that may not be captured.
inline void check_not_capturing(cudaStream_t stream, const char* what) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  RIA_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  const std::string refusal = capture_refusal(status, what);
  TORCH_CHECK(refusal.empty(), refusal);
}

inline bool aligned_to(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

}  // namespace ria
