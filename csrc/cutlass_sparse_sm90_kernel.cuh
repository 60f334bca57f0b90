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

// One instantiation per row of RIA_SM90_CONFIGS (cutlass_sparse_configs.h); the defaults are config 0, the
// prefill tile (also the type the compressor is built from). GEMM N = tokens: TN is the token tile.
template <typename Element, int TM = 128, int TN = 128, int TK = 128, bool StreamK = false>
struct Sm90Sparse {
  using ElementAccumulator = float;
  using ElementCompute = float;
  using LayoutTagA = cutlass::layout::RowMajor;     // W [N, K], K-major
  using LayoutTagB = cutlass::layout::ColumnMajor;  // x [T, K] row-major == B [K, T] column-major
  using LayoutTagD = cutlass::layout::ColumnMajor;  // y^T [N, T] column-major == y [T, N] row-major
  static constexpr int kAlign = 128 / cutlass::sizeof_bits<Element>::value;  // 8 elements = 16 bytes

  static constexpr bool kStreamK = StreamK;
  using TileShape = cute::Shape<cute::Int<TM>, cute::Int<TN>, cute::Int<TK>>;
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

  // Stream-K: cutlass::gemm::StreamKScheduler (its partial-tile workspace is passed by the caller); void: the
  // default persistent data-parallel scheduler.
  using TileScheduler = cute::conditional_t<StreamK, cutlass::gemm::StreamKScheduler, void>;
  using GemmKernel =
      cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue, TileScheduler>;
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
  static_assert(TK == 128, "every config keeps MinTileShapeK = 128: one metadata layout for all tiles");
};

// Every config reads the one stored copy: the same compressed-A and metadata layouts as config 0 (what
// sparse24_layout.compact_to_sm90_meta writes and cutlass90_compress returns).
template <typename Cfg>
constexpr bool same_operand_layouts() {
  using Base = Sm90Sparse<typename Cfg::Gemm::ElementA>;
  return cute::is_same_v<typename Cfg::LayoutE, typename Base::LayoutE> &&
         cute::is_same_v<typename Cfg::LayoutA, typename Base::LayoutA> &&
         cute::is_same_v<typename Cfg::ElementE, typename Base::ElementE>;
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

template <typename Cfg>
typename Cfg::Gemm::Arguments gemm_args(int64_t m, int64_t n, int64_t k, const void* a, const void* b,
                                         const void* e, void* y, const float* alpha, const void* bias,
                                         int64_t split_k, int device) {
  using Element = typename Cfg::Gemm::ElementA;
  const auto shape = problem(m, n, k);
  const auto layout_a = Cfg::SparseConfig::fill_layoutA(shape);
  const auto layout_e = Cfg::SparseConfig::fill_layoutE(shape);
  const typename Cfg::StrideB stride_b = cute::make_stride(int64_t(k), cute::Int<1>{}, int64_t(n * k));
  const typename Cfg::StrideD stride_d = cute::make_stride(cute::Int<1>{}, int64_t(m), int64_t(m * n));

  typename Cfg::Gemm::Arguments args{
      cutlass::gemm::GemmUniversalMode::kGemm,
      shape,
      {reinterpret_cast<const Element*>(a), layout_a, reinterpret_cast<const Element*>(b), stride_b,
       reinterpret_cast<const typename Cfg::ElementE*>(e), layout_e},
      {{}, nullptr, stride_d, reinterpret_cast<Element*>(y), stride_d},
      hw_info(device)};
  auto& fusion = args.epilogue.thread;
  fusion.alpha = 1.0f;  // used when alpha_ptr is null
  fusion.alpha_ptr = alpha;
  fusion.beta = 0.0f;
  fusion.beta_ptr = nullptr;
  fusion.bias_ptr = reinterpret_cast<const Element*>(bias);
  if constexpr (Cfg::kStreamK) {
    // split_k > 1: a split-K decomposition into split_k slices; 1: CUTLASS's heuristic (stream-K, split-K or
    // data-parallel by the tile count vs the SMs). Deterministic (turnstile) reduction either way.
    using Decomp = cutlass::gemm::kernel::detail::DecompositionMode;
    args.scheduler.splits = static_cast<int>(split_k);
    args.scheduler.decomposition_mode = split_k > 1 ? Decomp::SplitK : Decomp::Heuristic;
  }
  return args;
}

template <typename Cfg>
void gemm_impl(const detail::GemmCall& c) {
  static_assert(same_operand_layouts<Cfg>(), "a config reads another values/metadata layout than config 0");
  const int64_t m = c.values.size(0), n = c.x.size(0), k = c.x.size(1);
  const auto args = gemm_args<Cfg>(m, n, k, c.values.data_ptr(), c.x.data_ptr(), c.meta.data_ptr(), c.y.data_ptr(),
                                   c.alpha.has_value() ? c.alpha->data_ptr<float>() : nullptr,
                                   c.bias.has_value() ? c.bias->data_ptr() : nullptr, c.split_k, c.x.get_device());
  run_cutlass_op_ws<typename Cfg::Gemm>(args, c.workspace, c.legacy, c.x.get_device(), c.stream,
                                        "cutlass90_sparse_mm");
}

template <typename Cfg>
int64_t workspace_impl(int64_t m, int64_t n, int64_t k, int64_t split_k, int device) {
  const auto args = gemm_args<Cfg>(m, n, k, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, split_k, device);
  return static_cast<int64_t>(Cfg::Gemm::get_workspace_size(args));
}

}  // namespace
}  // namespace cutlass90
}  // namespace ria

// The per-config entry points of cutlass_sparse_sm90.h for the rows of RIA_SM90_CONFIGS whose stream_k flag is
// the TU's: the prefill units (cutlass_sparse_sm90_{f16,bf16}.cu) define the stream_k = 0 rows, the decode units
// (cutlass_sparse_sm90_decode_{f16,bf16}.cu) the stream_k = 1 rows, so the heavy instantiations are spread over
// translation units that a parallel build compiles at the same time. A unit defines RIA_SM90_PICK_0 / _1 as
// "keep" (__VA_ARGS__) or "drop" (nothing) before expanding these.
#define RIA_SM90_PICK(sk, ...) RIA_SM90_PICK_##sk(__VA_ARGS__)
#define RIA_SM90_DEFINE_GEMM(dtype, Element, id, tm, tn, tk, sk)                                        \
  RIA_SM90_PICK(sk, void gemm_##dtype##_##id(const GemmCall& c) {                                       \
    gemm_impl<Sm90Sparse<Element, tm, tn, tk, sk != 0>>(c);                                             \
  })
#define RIA_SM90_DEFINE_F16(id, tm, tn, tk, sk) RIA_SM90_DEFINE_GEMM(f16, cutlass::half_t, id, tm, tn, tk, sk)
#define RIA_SM90_DEFINE_BF16(id, tm, tn, tk, sk) \
  RIA_SM90_DEFINE_GEMM(bf16, cutlass::bfloat16_t, id, tm, tn, tk, sk)
#define RIA_SM90_DEFINE_WORKSPACE(id, tm, tn, tk, sk)                                                    \
  RIA_SM90_PICK(sk, int64_t workspace_##id(int64_t m, int64_t n, int64_t k, int64_t split_k, int device) { \
    return workspace_impl<Sm90Sparse<cutlass::half_t, tm, tn, tk, sk != 0>>(m, n, k, split_k, device);  \
  })
// Per config: the dynamic shared memory, mainloop stages (StageCountAutoCarveout's choice) and threads of its
// kernel as .rodata constants (never read by the extension; scripts/cutlass_instantiation_table.py reads them).
#define RIA_SM90_EXPORT_ONE(id, tm, tn, tk, sk)                                                          \
  extern "C" __attribute__((used)) const int32_t ria_cfg_sm90_##id##_smem =                              \
      int32_t(Sm90Sparse<cutlass::half_t, tm, tn, tk, sk != 0>::GemmKernel::SharedStorageSize);          \
  extern "C" __attribute__((used)) const int32_t ria_cfg_sm90_##id##_stages =                            \
      int32_t(Sm90Sparse<cutlass::half_t, tm, tn, tk, sk != 0>::CollectiveMainloop::DispatchPolicy::Stages); \
  extern "C" __attribute__((used)) const int32_t ria_cfg_sm90_##id##_threads =                           \
      int32_t(Sm90Sparse<cutlass::half_t, tm, tn, tk, sk != 0>::GemmKernel::MaxThreadsPerBlock);
#define RIA_SM90_EXPORT(id, tm, tn, tk, sk) RIA_SM90_PICK(sk, RIA_SM90_EXPORT_ONE(id, tm, tn, tk, sk))

#endif  // RIA_CUTLASS90_ENABLED
