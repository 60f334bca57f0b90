// CUTLASS 2:4 sparse GEMM fallback for sm80+ (cutlass::gemm::device::SparseGemm, mma.sp m16n8k32),
// fp16 and bf16 with fp32 accumulation: y[T, N] = alpha[n] * (x[T, K] @ W[N, K]^T) + bias[n].
//
// Layout decisions:
//  * SparseGemm's structured operand is always A and its output C/D must be row-major (CUTLASS has no
//    column-major-output specialization of DefaultSparseGemm). So the kernel computes
//        D = y^T [N, T] row-major = A [N, K] (W, 2:4 along K, row-major) @ B [K, T]
//    with B = x^T read column-major [K, T], ld = K: that is x's own row-major memory, no copy.
//  * y must come back row-major [T, N]; D is y^T, so one elementwise pass writes y from D.
//    That same pass applies the epilogue that SparseGemm cannot fuse for per-row vectors: alpha[n]
//    (cast to x's dtype) and bias[n]. Cost: one extra read+write of the output; cuSPARSELt is the
//    no-copy fast path, this is the fallback. Accumulation is fp32, D is rounded to x's dtype before
//    alpha/bias are applied (double rounding vs. a fused epilogue; within fp16/bf16 tolerances).
//  * Kernel shape limits (checked at the boundary): N % 32 == 0 (metadata row interleave),
//    K % 64 == 0 (threadblock K; out-of-range metadata cannot be zero-filled), T % 8 == 0 (128-bit
//    accesses of B and D). T is zero-padded to a multiple of 8 only when T % 8 != 0.
//  * cutlass_compress(W) -> [values [N, K/2], meta [N, K/16] int16]. values keeps, per group of 4
//    consecutive input channels, the 2 kept entries in increasing column order. meta holds one uint16
//    per 16 input channels (4 groups x 4 bits; group g at bits 4g..4g+3, low 2 bits = first kept
//    index, high 2 bits = second), stored in the reordered ColumnMajorInterleaved<2> layout that
//    SparseGemm's LayoutE expects (same permutation as cutlass::reorder_meta for 16-bit metadata).
//    Groups with fewer than 2 non-zeros keep explicit zeros at the lowest free indices. Compression runs
//    once per weight with ATen ops on the weight's device; it verifies the 2:4 pattern.
#include "cutlass_meta.h"
#include "ria_common.h"
#include "ria_ops.h"

#ifdef RIA_WITH_CUTLASS
#include <cutlass/cutlass.h>
#include <cutlass/bfloat16.h>
#include <cutlass/epilogue/thread/linear_combination.h>
#include <cutlass/gemm/device/gemm_sparse.h>
#include <cutlass/half.h>

#include "ria_cutlass.h"

#include <c10/cuda/CUDACachingAllocator.h>

namespace ria {
namespace cutlass_sp {
namespace {

constexpr int64_t kMultipleN = 32;
constexpr int64_t kMultipleK = 64;
constexpr int64_t kMultipleT = 8;

template <typename Element>
struct Sm80Sparse {
  using ElementAccumulator = float;
  static constexpr int kAccessElements = 128 / cutlass::sizeof_bits<Element>::value;  // 8 for 16-bit
  using Epilogue =
      cutlass::epilogue::thread::LinearCombination<Element, kAccessElements, ElementAccumulator, ElementAccumulator>;
  using Gemm = cutlass::gemm::device::SparseGemm<
      Element, cutlass::layout::RowMajor,     // A: W compressed values [N, K/2]
      Element, cutlass::layout::ColumnMajor,  // B: x^T [K, T] (x row-major)
      Element, cutlass::layout::RowMajor,     // C/D: y^T [N, T]
      ElementAccumulator, cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80,
      cutlass::gemm::GemmShape<128, 128, 64>,  // threadblock tile (logical K)
      cutlass::gemm::GemmShape<64, 64, 64>,    // warp tile
      cutlass::gemm::GemmShape<16, 8, 32>,     // mma.sp instruction
      Epilogue, cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<>, 3>;
  using ElementE = typename Gemm::ElementE;
  using LayoutE = typename Gemm::LayoutE;
  static_assert(sizeof(ElementE) == 2, "16-bit operands use uint16 metadata");
  static_assert(Gemm::kElementsPerElementE * Gemm::kSparse == 16, "one uint16 of metadata covers 16 input channels");
};

template <typename Element>
void launch(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta, at::Tensor& d, cudaStream_t stream) {
  using Cfg = Sm80Sparse<Element>;
  using Gemm = typename Cfg::Gemm;
  const int m = static_cast<int>(values.size(0));  // N
  const int k = static_cast<int>(x.size(1));       // K
  const int n = static_cast<int>(x.size(0));       // T (padded)
  cutlass::gemm::GemmCoord problem(m, n, k);
  auto* a_ptr = reinterpret_cast<const Element*>(values.data_ptr());
  auto* b_ptr = reinterpret_cast<const Element*>(x.data_ptr());
  auto* d_ptr = reinterpret_cast<Element*>(d.data_ptr());
  auto* e_ptr = reinterpret_cast<typename Cfg::ElementE*>(meta.data_ptr());
  typename Gemm::Arguments args(
      problem,
      {a_ptr, cutlass::layout::RowMajor(k / 2)},
      {b_ptr, cutlass::layout::ColumnMajor(k)},
      {d_ptr, cutlass::layout::RowMajor(n)},  // C unused: beta = 0
      {d_ptr, cutlass::layout::RowMajor(n)},
      {e_ptr, Cfg::LayoutE::packed(cutlass::MatrixCoord(m, k / 16))},
      {1.0f, 0.0f}, /*split_k_slices=*/1);
  run_cutlass_op<Gemm>(args, stream);
}

int device_capability(int device) {
  int major = 0, minor = 0;
  RIA_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  RIA_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return major * 10 + minor;
}

}  // namespace

bool available() { return true; }

std::vector<at::Tensor> compress(const at::Tensor& weight) {
  ria::check_weight(weight);
  const int64_t n = weight.size(0), k = weight.size(1);
  TORCH_CHECK(n > 0 && n % kMultipleN == 0, "weight.size(0) (out_features) must be a positive multiple of 32 "
              "for the CUTLASS sm80 sparse kernel, got ", n);
  TORCH_CHECK(k > 0 && k % kMultipleK == 0, "weight.size(1) (in_features) must be a positive multiple of 64 "
              "for the CUTLASS sm80 sparse kernel, got ", k);
  const c10::cuda::CUDAGuard guard(weight.device());
  return pack_2to4_sm80(weight);
}

at::Tensor sparse_mm(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                     const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& alpha) {
  check_activation(x);
  const int64_t k = x.size(1);
  TORCH_CHECK(values.device() == x.device() && meta.device() == x.device(),
              "values and meta must be on x's device (", x.device(), ")");
  TORCH_CHECK(values.dim() == 2 && values.scalar_type() == x.scalar_type() && values.is_contiguous(),
              "values must be the contiguous 2-D [out_features, in_features/2] tensor from cutlass_compress, in "
              "x's dtype (", x.scalar_type(), "); got shape ", values.sizes(), " dtype ", values.scalar_type());
  const int64_t n = values.size(0);
  TORCH_CHECK(values.size(1) * 2 == k, "values.size(1) * 2 must equal x.size(1) (in_features=", k, "), got ",
              values.size(1) * 2);
  TORCH_CHECK(n % kMultipleN == 0, "out_features must be a multiple of 32 for the CUTLASS sm80 kernel, got ", n);
  TORCH_CHECK(k % kMultipleK == 0, "x.size(1) (in_features) must be a multiple of 64 for the CUTLASS sm80 kernel, "
              "got ", k);
  TORCH_CHECK(meta.scalar_type() == at::kShort && meta.is_contiguous() && meta.numel() == n * (k / 16),
              "meta must be the contiguous int16 tensor of ", n * (k / 16), " elements from cutlass_compress, got "
              "dtype ", meta.scalar_type(), " numel ", meta.numel());
  check_epilogue(bias, alpha, x, n);
  const c10::cuda::CUDAGuard guard(x.device());
  TORCH_CHECK(device_capability(x.get_device()) >= 80, "the CUTLASS sparse kernel needs compute capability >= 8.0");
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();

  const int64_t t = x.size(0);
  const int64_t t_pad = (t + kMultipleT - 1) / kMultipleT * kMultipleT;
  const at::Tensor xp = (t_pad == t) ? x : at::constant_pad_nd(x, {0, 0, 0, t_pad - t}, 0);
  TORCH_CHECK(aligned_to(xp.data_ptr(), 16) && aligned_to(values.data_ptr(), 16) && aligned_to(meta.data_ptr(), 16),
              "x, values and meta must be 16-byte aligned");
  at::Tensor d = at::empty({n, t_pad}, x.options());  // y^T, row-major
  if (x.scalar_type() == at::kHalf) {
    launch<cutlass::half_t>(xp, values, meta, d, stream);
  } else {
    launch<cutlass::bfloat16_t>(xp, values, meta, d, stream);
  }
  // One pass: transpose y^T -> y and apply alpha / bias. The out= forms pin y's row-major layout (a plain
  // elementwise op would inherit the transposed strides of its input).
  auto yt = d.narrow(1, 0, t).t();  // [T, N] view of D
  at::Tensor y = at::empty({t, n}, x.options());
  if (alpha.has_value()) {
    auto a = alpha->to(x.scalar_type());
    if (bias.has_value()) {
      at::addcmul_out(y, *bias, yt, a);
    } else {
      at::mul_out(y, yt, a);
    }
  } else if (bias.has_value()) {
    at::add_out(y, yt, *bias);
  } else {
    y.copy_(yt);
  }
  return y;
}

}  // namespace cutlass_sp
}  // namespace ria

#else  // !RIA_WITH_CUTLASS

namespace ria {
namespace cutlass_sp {
namespace {
[[noreturn]] void unavailable(const char* op) {
  TORCH_CHECK(false, "ria_kernels.", op, ": this build of ria_kernels._C has no CUTLASS kernel (headers not found "
              "at build time; install nvidia-cutlass or set CUTLASS_DIR and rebuild)");
}
}  // namespace
bool available() { return false; }
std::vector<at::Tensor> compress(const at::Tensor&) { unavailable("cutlass_compress"); }
at::Tensor sparse_mm(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                     const std::optional<at::Tensor>&) {
  unavailable("cutlass_sparse_mm");
}
}  // namespace cutlass_sp
}  // namespace ria

#endif  // RIA_WITH_CUTLASS
