// 2:4 weight packing for the CUTLASS sm80 sparse GEMM; implementation and layout notes in cutlass_meta.cpp.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace ria {
namespace cutlass_sp {
// weight [N, K] (any device, any float dtype) -> {values [N, K/2], meta [N, K/16] int16 (reordered)}.
// Raises unless N % 32 == 0, K % 32 == 0 and every group of 4 along K has at most 2 non-zeros.
std::vector<at::Tensor> pack_2to4_sm80(const at::Tensor& weight);
}  // namespace cutlass_sp
}  // namespace ria
