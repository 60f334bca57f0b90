// CUTLASS 3.x 2:4 sparse GEMM for Hopper (sm_90a: wgmma.sp through the sm90 sparse TMA warp-specialized
// collective, cutlass::gemm::collective::CollectiveBuilder with OpClassSparseTensorOp), fp16 and bf16 with
// fp32 accumulation:  y[T, N] = alpha[n] * (x[T, K] @ W[N, K]^T) + bias[n].
//
// Layout decisions:
//  * GEMM (M, N, K) = (out_features, tokens, in_features). A = W [N, K] row-major (K-major), the structured
//    (2:4) operand. B = x [T, K] row-major, i.e. CUTLASS's ColumnMajor (K-major) B. D = y^T [N, T] column-major,
//    which is y [T, N] row-major: the output is written in place, no transpose pass.
//  * Epilogue fused in the kernel (fusion::PerRowLinCombPerRowBiasEltAct with Identity, CUTLASS "row" = our
//    output channel): D = alpha[n] * acc + bias[n], computed in fp32 (bias converted from x's dtype to fp32)
//    and rounded once to x's dtype. alpha missing: the scalar 1; bias missing: 0 (the broadcast nodes' null-
//    pointer defaults). No C operand is read (ElementC = void).
//  * cutlass90_compress(W) runs CUTLASS's own sm90 compressor kernel (StructuredSparseCompressor<..., Sm90>,
//    the layout the collective reads) once per weight, after checking the 2:4 pattern with ATen (the CUTLASS
//    compressor does not check it). It returns
//        values [N, K/2]                      in W's dtype (the 2 kept entries of every group of 4, CUTLASS order)
//        meta   [round_up(N, 64), round_up(K, 128) / 8] uint8   (4 bits per group of 4 inputs, in the
//                                              SparseConfig::TensorEAtom tiled order; zero-filled padding)
//    Groups with fewer than 2 non-zeros are encoded by the CUTLASS compressor (explicit zeros).
//  * Shape limits (checked at the boundary): N % 8 == 0 (16-byte TMA stride of y^T's columns), K % 16 == 0
//    (16-byte TMA stride of the K/2 compressed values; the compressor's A alignment). T is free (TMA zero-fills
//    and clips partial tiles). Pointers: x, values, meta, y, bias and alpha 16-byte aligned.
//  * Device: the sm_90a cubin runs only on compute capability 9.0 (H100/H200/GH200); the launchers check it.
//
// Build guards: the kernel is only instantiated when the build targets sm_90a (_build.py / check_csrc.sh pass
// -DRIA_WITH_SM90A together with an sm_90a gencode) and CUTLASS was found (RIA_WITH_CUTLASS) and nvcc supports
// the sm90 sparse MMA (CUTLASS_ARCH_MMA_SPARSE_SM90_SUPPORTED, CUDA >= 12.2). Otherwise the ops are stubs that
// raise and cutlass90_available() is false. In a fat build (e.g. sm_80 + sm_90a) the device passes for other
// archs compile CUTLASS's own arch-guarded empty kernel body (ENABLE_SM90_KERNEL_LEVEL needs
// __CUDA_ARCH_FEAT_SM90_ALL); the launcher refuses such devices before launching.
#include "ria_common.h"
#include "ria_ops.h"

#if defined(RIA_WITH_CUTLASS) && defined(RIA_WITH_SM90A)
#include <cutlass/arch/config.h>
#endif

#if defined(RIA_WITH_CUTLASS) && defined(RIA_WITH_SM90A) && defined(CUTLASS_ARCH_MMA_SPARSE_SM90_SUPPORTED)
#define RIA_CUTLASS90_ENABLED 1
#endif

#ifdef RIA_CUTLASS90_ENABLED
#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/bfloat16.h>
#include <cutlass/half.h>
#include <cutlass/kernel_hardware_info.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/operations.hpp>
#include <cutlass/epilogue/thread/activation.h>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/dispatch_policy.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/transform/device/transform_universal_adapter.hpp>
#include <cutlass/transform/kernel/sparse_gemm_compressor.hpp>

#include "ria_cutlass.h"

#include <c10/cuda/CUDACachingAllocator.h>

#include <algorithm>
#include <mutex>
#include <unordered_map>

namespace ria {
namespace cutlass90 {
namespace {

constexpr int64_t kMultipleN = 8;
constexpr int64_t kMultipleK = 16;
// Metadata padding of the sm90 sparse config for 16-bit inputs and a 128-deep K tile (asserted below).
constexpr int64_t kMetaAlignM = 64;
constexpr int64_t kMetaAlignK = 128;
constexpr int64_t kMetaKPerByte = 8;

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

template <typename Element>
struct Sm90Sparse {
  using ElementAccumulator = float;
  using ElementCompute = float;
  using LayoutTagA = cutlass::layout::RowMajor;     // W [N, K], K-major
  using LayoutTagB = cutlass::layout::ColumnMajor;  // x [T, K] row-major == B [K, T] column-major
  using LayoutTagD = cutlass::layout::ColumnMajor;  // y^T [N, T] column-major == y [T, N] row-major
  static constexpr int kAlign = 128 / cutlass::sizeof_bits<Element>::value;  // 8 elements = 16 bytes

  using TileShape = cute::Shape<cute::_128, cute::_128, cute::_128>;
  using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;
  using KernelSchedule = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
  using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecializedCooperative;
  using ProblemShape = cute::Shape<int, int, int, int>;

  // D = Identity(alpha[m] * acc + beta[m] * C + bias[m]); beta = 0 and no C (ElementC = void).
  using FusionOp = cutlass::epilogue::fusion::PerRowLinCombPerRowBiasEltAct<
      cutlass::epilogue::thread::Identity, Element, ElementCompute,
      /*ElementBias=*/Element, /*ElementSource=*/Element, /*ElementScalar=*/float,
      /*AlignmentBias=*/kAlign, /*AlignmentScalar=*/128 / 32>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAccumulator, ElementCompute,
      void, LayoutTagD, kAlign,      // C: none
      Element, LayoutTagD, kAlign,   // D
      EpilogueSchedule, FusionOp>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp,
      Element, LayoutTagA, kAlign,
      Element, LayoutTagB, kAlign,
      ElementAccumulator, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<
          static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;

  using GemmKernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;

  using SparseConfig = typename CollectiveMainloop::SparseConfig;
  using LayoutA = typename CollectiveMainloop::LayoutA;
  using LayoutE = typename CollectiveMainloop::LayoutE;
  using ElementE = typename CollectiveMainloop::ElementE;
  using StrideA = cutlass::gemm::TagToStrideA_t<LayoutTagA>;
  using StrideB = typename GemmKernel::StrideB;
  using StrideD = typename GemmKernel::StrideD;

  using CompressorUtility =
      cutlass::transform::kernel::StructuredSparseCompressorUtility<ProblemShape, Element, LayoutTagA, SparseConfig>;
  using CompressorKernel = cutlass::transform::kernel::StructuredSparseCompressor<
      ProblemShape, Element, LayoutTagA, SparseConfig, cutlass::arch::Sm90>;
  using Compressor = cutlass::transform::device::TransformUniversalAdapter<CompressorKernel>;

  // Pin the packed shapes documented above (and mirrored by the Python fake of cutlass90_compress).
  static_assert(sizeof(ElementE) == 1, "sm90 sparse metadata is stored as bytes");
  static_assert(typename SparseConfig::TensorEAlignmentM{} == kMetaAlignM, "metadata M padding changed");
  static_assert(typename SparseConfig::TensorEAlignmentK{} == kMetaAlignK, "metadata K padding changed");
  static_assert(typename SparseConfig::ElementEMmaSparsity{} == kMetaKPerByte, "metadata bits per K changed");
  static_assert(typename SparseConfig::TensorAAlignmentK{} == kMultipleK, "compressed-A K alignment changed");
  static_assert(typename SparseConfig::TensorAAlignmentM{} == 1, "compressed-A M alignment changed");
  static_assert(cute::is_same_v<StrideD, cute::Stride<cute::_1, int64_t, int64_t>>, "D must be column-major");
  static_assert(cute::is_same_v<StrideB, cute::Stride<int64_t, cute::_1, int64_t>>, "B must be K-major");
};

int device_capability(int device) {
  int major = 0, minor = 0;
  RIA_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  RIA_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return major * 10 + minor;
}

void check_hopper(int device, const char* op) {
  const int cc = device_capability(device);
  TORCH_CHECK(cc == 90, "ria_kernels.", op, ": the CUTLASS sm90 sparse kernel is built for sm_90a and runs only on "
              "compute capability 9.0 (Hopper), got ", cc / 10, ".", cc % 10, " on cuda:", device);
}

cutlass::KernelHardwareInfo hw_info(int device) {
  static std::mutex mu;
  static std::unordered_map<int, int> sm_counts;
  std::lock_guard<std::mutex> lock(mu);
  auto it = sm_counts.find(device);
  if (it == sm_counts.end()) {
    int count = 0;
    RIA_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    it = sm_counts.emplace(device, count).first;
  }
  cutlass::KernelHardwareInfo info;
  info.device_id = device;
  info.sm_count = it->second;
  return info;
}

typename Sm90Sparse<cutlass::half_t>::ProblemShape problem(int64_t m, int64_t n, int64_t k) {
  return {static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), 1};
}

template <typename Element>
void compress_impl(const at::Tensor& w, at::Tensor& values, at::Tensor& meta, cudaStream_t stream) {
  using Cfg = Sm90Sparse<Element>;
  using Compressor = typename Cfg::Compressor;
  const int64_t m = w.size(0), k = w.size(1);
  const auto shape = problem(m, 1, k);
  const typename Cfg::StrideA stride_a = cute::make_stride(int64_t(k), cute::Int<1>{}, int64_t(m * k));
  typename Cfg::CompressorUtility util(shape, stride_a);
  TORCH_CHECK(util.get_tensorA_m_physical() == values.size(0) && util.get_tensorA_k_physical() == values.size(1) &&
                  util.get_metadata_m_physical() == meta.size(0) && util.get_metadata_k_physical() == meta.size(1),
              "ria_kernels.cutlass90_compress: internal error: packed sizes disagree with CUTLASS's "
              "StructuredSparseCompressorUtility");
  typename Compressor::Arguments args{
      shape, {w.data_ptr(), stride_a, values.data_ptr(), meta.data_ptr()}, {hw_info(w.get_device())}};
  run_cutlass_op<Compressor>(args, stream);
}

template <typename Element>
void gemm_impl(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
               const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& alpha, at::Tensor& y,
               cudaStream_t stream) {
  using Cfg = Sm90Sparse<Element>;
  using Gemm = typename Cfg::Gemm;
  const int64_t m = values.size(0), n = x.size(0), k = x.size(1);
  const auto shape = problem(m, n, k);
  const auto layout_a = Cfg::SparseConfig::fill_layoutA(shape);
  const auto layout_e = Cfg::SparseConfig::fill_layoutE(shape);
  const typename Cfg::StrideB stride_b = cute::make_stride(int64_t(k), cute::Int<1>{}, int64_t(n * k));
  const typename Cfg::StrideD stride_d = cute::make_stride(cute::Int<1>{}, int64_t(m), int64_t(m * n));

  typename Gemm::Arguments args{
      cutlass::gemm::GemmUniversalMode::kGemm,
      shape,
      {reinterpret_cast<const Element*>(values.data_ptr()), layout_a,
       reinterpret_cast<const Element*>(x.data_ptr()), stride_b,
       reinterpret_cast<const typename Cfg::ElementE*>(meta.data_ptr()), layout_e},
      {{}, nullptr, stride_d, reinterpret_cast<Element*>(y.data_ptr()), stride_d},
      hw_info(x.get_device())};
  auto& fusion = args.epilogue.thread;
  fusion.alpha = 1.0f;  // used when alpha_ptr is null
  fusion.alpha_ptr = alpha.has_value() ? alpha->data_ptr<float>() : nullptr;
  fusion.beta = 0.0f;
  fusion.beta_ptr = nullptr;
  fusion.bias_ptr = bias.has_value() ? reinterpret_cast<const Element*>(bias->data_ptr()) : nullptr;

  run_cutlass_op<Gemm>(args, stream);
}

void check_weight_sm90(const at::Tensor& weight) {
  ria::check_weight(weight);
  TORCH_CHECK(weight.is_contiguous(), "weight must be contiguous (row-major [out_features, in_features])");
  const int64_t n = weight.size(0), k = weight.size(1);
  TORCH_CHECK(n > 0 && n % kMultipleN == 0, "weight.size(0) (out_features) must be a positive multiple of 8 for "
              "the CUTLASS sm90 sparse kernel, got ", n);
  TORCH_CHECK(k > 0 && k % kMultipleK == 0, "weight.size(1) (in_features) must be a positive multiple of 16 for "
              "the CUTLASS sm90 sparse kernel, got ", k);
  TORCH_CHECK(n <= INT32_MAX && k <= INT32_MAX && n * k <= INT32_MAX,
              "weight has ", n * k, " elements; the CUTLASS sm90 sparse kernel takes at most 2^31-1");
}

}  // namespace

bool available() { return true; }

std::vector<at::Tensor> compress(const at::Tensor& weight) {
  check_weight_sm90(weight);
  const int64_t n = weight.size(0), k = weight.size(1);
  const c10::cuda::CUDAGuard guard(weight.device());
  check_hopper(weight.get_device(), "cutlass90_compress");
  // The CUTLASS compressor assumes (does not check) at most 2 non-zeros per group of 4.
  const int64_t too_dense = weight.view({n, k / 4, 4}).ne(0).sum(-1).gt(2).sum().item<int64_t>();
  TORCH_CHECK(too_dense == 0, "weight is not 2:4 sparse along in_features: ", too_dense,
              " groups of 4 consecutive input weights have more than 2 non-zeros");
  TORCH_CHECK(aligned_to(weight.data_ptr(), 16), "weight must be 16-byte aligned");
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(weight.get_device()).stream();
  at::Tensor values = at::zeros({n, k / 2}, weight.options());
  at::Tensor meta = at::zeros({round_up(n, kMetaAlignM), round_up(k, kMetaAlignK) / kMetaKPerByte},
                              weight.options().dtype(at::kByte));
  if (weight.scalar_type() == at::kHalf) {
    compress_impl<cutlass::half_t>(weight, values, meta, stream);
  } else {
    compress_impl<cutlass::bfloat16_t>(weight, values, meta, stream);
  }
  return {values, meta};
}

at::Tensor sparse_mm(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                     const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& alpha) {
  check_activation(x);
  const int64_t t = x.size(0), k = x.size(1);
  TORCH_CHECK(values.device() == x.device() && meta.device() == x.device(),
              "values and meta must be on x's device (", x.device(), ")");
  TORCH_CHECK(values.dim() == 2 && values.scalar_type() == x.scalar_type() && values.is_contiguous(),
              "values must be the contiguous 2-D [out_features, in_features/2] tensor from cutlass90_compress, in "
              "x's dtype (", x.scalar_type(), "); got shape ", values.sizes(), " dtype ", values.scalar_type());
  const int64_t n = values.size(0);
  TORCH_CHECK(values.size(1) * 2 == k, "values.size(1) * 2 must equal x.size(1) (in_features=", k, "), got ",
              values.size(1) * 2);
  TORCH_CHECK(n > 0 && n % kMultipleN == 0, "out_features (values.size(0)) must be a positive multiple of 8 for "
              "the CUTLASS sm90 sparse kernel, got ", n);
  TORCH_CHECK(k % kMultipleK == 0, "x.size(1) (in_features) must be a multiple of 16 for the CUTLASS sm90 sparse "
              "kernel, got ", k);
  const int64_t me = round_up(n, kMetaAlignM), ke = round_up(k, kMetaAlignK) / kMetaKPerByte;
  TORCH_CHECK(meta.scalar_type() == at::kByte && meta.is_contiguous() && meta.dim() == 2 && meta.size(0) == me &&
                  meta.size(1) == ke,
              "meta must be the contiguous uint8 [", me, ", ", ke, "] tensor from cutlass90_compress, got dtype ",
              meta.scalar_type(), " shape ", meta.sizes());
  TORCH_CHECK(t <= INT32_MAX && t * std::max(k, n) <= INT32_MAX,
              "x.size(0) (tokens) too large for the CUTLASS sm90 sparse kernel (int32 sizes), got ", t);
  check_epilogue(bias, alpha, x, n);
  const c10::cuda::CUDAGuard guard(x.device());
  check_hopper(x.get_device(), "cutlass90_sparse_mm");
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
  at::Tensor y = at::empty({t, n}, x.options());
  TORCH_CHECK(aligned_to(x.data_ptr(), 16) && aligned_to(values.data_ptr(), 16) && aligned_to(meta.data_ptr(), 16) &&
                  aligned_to(y.data_ptr(), 16),
              "x, values and meta must be 16-byte aligned");
  TORCH_CHECK(!bias.has_value() || aligned_to(bias->data_ptr(), 16), "bias must be 16-byte aligned");
  TORCH_CHECK(!alpha.has_value() || aligned_to(alpha->data_ptr(), 16), "alpha must be 16-byte aligned");
  if (x.scalar_type() == at::kHalf) {
    gemm_impl<cutlass::half_t>(x, values, meta, bias, alpha, y, stream);
  } else {
    gemm_impl<cutlass::bfloat16_t>(x, values, meta, bias, alpha, y, stream);
  }
  return y;
}

}  // namespace cutlass90
}  // namespace ria

#else  // !RIA_CUTLASS90_ENABLED

namespace ria {
namespace cutlass90 {
namespace {
[[noreturn]] void unavailable(const char* op) {
#if !defined(RIA_WITH_CUTLASS)
  TORCH_CHECK(false, "ria_kernels.", op, ": this build of ria_kernels._C has no CUTLASS kernel (headers not found "
              "at build time; install nvidia-cutlass or set CUTLASS_DIR and rebuild)");
#elif !defined(RIA_WITH_SM90A)
  TORCH_CHECK(false, "ria_kernels.", op, ": this build of ria_kernels._C does not target sm_90a (rebuild with "
              "TORCH_CUDA_ARCH_LIST containing 9.0 to get the CUTLASS sm90 sparse kernel)");
#else
  TORCH_CHECK(false, "ria_kernels.", op, ": nvcc older than 12.2 cannot build the CUTLASS sm90 sparse kernel");
#endif
}
}  // namespace
bool available() { return false; }
std::vector<at::Tensor> compress(const at::Tensor&) { unavailable("cutlass90_compress"); }
at::Tensor sparse_mm(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                     const std::optional<at::Tensor>&) {
  unavailable("cutlass90_sparse_mm");
}
}  // namespace cutlass90
}  // namespace ria

#endif  // RIA_CUTLASS90_ENABLED
