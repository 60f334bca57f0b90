// CUTLASS 3.x types and launch code of the sm90 2:4 sparse GEMM and its compressor (see
// cutlass_sparse_sm90.cu for the op contract and layouts). Included only by the per-dtype translation units
// cutlass_sparse_sm90_{f16,bf16}.cu, each instantiating one Element, and only when RIA_CUTLASS90_ENABLED.
#pragma once

#include "cutlass_sparse_sm90.h"

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

#include "ria_common.h"
#include "ria_cutlass.h"

#include <mutex>
#include <unordered_map>

namespace ria {
namespace cutlass90 {
namespace {

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

}  // namespace
}  // namespace cutlass90
}  // namespace ria

#endif  // RIA_CUTLASS90_ENABLED
