// CUDA-graph capture guard: the decision, kept free of torch and of CUDA calls so that a CPU test can
// compile it with a host compiler and the CUDA headers alone (tests/ops/test_sparse_mm.py).
//
// cuSPARSELt's plan init (cusparseLtMatmulPlanInit) and algorithm search (cusparseLtMatmulSearch, which
// launches and times kernels and synchronises) must not run while the stream is being captured: the
// capture would record the search's timing launches, or fail with an opaque status. The ops refuse with
// this message instead; a plan made before capture (same shape, bias pointer and config) is fine.
#pragma once

#include <driver_types.h>  // cudaStreamCaptureStatus

#include <string>

namespace ria {

// Empty when `what` may run on a stream in capture state `status`, else the one-line error to raise.
inline std::string capture_refusal(cudaStreamCaptureStatus status, const char* what) {
  if (status == cudaStreamCaptureStatusNone) return {};
  const char* state = status == cudaStreamCaptureStatusActive ? "is being captured into a CUDA graph"
                                                              : "is in an invalidated CUDA-graph capture";
  return std::string("ria_kernels: ") + what + " cannot run while the current CUDA stream " + state +
         ": run this op once eagerly for the same shape, bias and config before capturing (e.g. "
         "SparseLinear.tune(token_counts) or cslt_search, then cslt_mm with that config)";
}

}  // namespace ria
