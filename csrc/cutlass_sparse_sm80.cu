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
#include "cutlass_sparse_configs.h"

#include <type_traits>

#include <c10/cuda/CUDACachingAllocator.h>

namespace ria {
namespace cutlass_sp {
namespace {

constexpr int64_t kMultipleN = 32;
constexpr int64_t kMultipleK = 64;
constexpr int64_t kMultipleT = 8;
#define RIA_SM80_COUNT(...) +1
constexpr int64_t kNumConfigs = 0 RIA_SM80_CONFIGS(RIA_SM80_COUNT);
#undef RIA_SM80_COUNT

// One instantiation per row of RIA_SM80_CONFIGS (cutlass_sparse_configs.h). Narrow (split-K serial) configs
// write an fp32 D: the K slices add their partial sums into D in turn (the epilogue's beta becomes 1 for
// slices > 0), so an fp32 D keeps that sum in fp32; the pass that transposes D rounds once to x's dtype.
template <typename Element, int TbM, int TbN, int TbK, int WM, int WN, int WK, int Stages, bool SplitK>
struct Sm80Sparse {
  using ElementAccumulator = float;
  using ElementOut = std::conditional_t<SplitK, float, Element>;
  static constexpr int kAccessElements = 128 / cutlass::sizeof_bits<ElementOut>::value;  // 16-byte accesses
  static constexpr int kAlignAB = 128 / cutlass::sizeof_bits<Element>::value;
  using Epilogue =
      cutlass::epilogue::thread::LinearCombination<ElementOut, kAccessElements, ElementAccumulator, ElementAccumulator>;
  using Gemm = cutlass::gemm::device::SparseGemm<
      Element, cutlass::layout::RowMajor,     // A: W compressed values [N, K/2]
      Element, cutlass::layout::ColumnMajor,  // B: x^T [K, T] (x row-major)
      ElementOut, cutlass::layout::RowMajor,  // C/D: y^T [N, T]
      ElementAccumulator, cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80,
      cutlass::gemm::GemmShape<TbM, TbN, TbK>,  // threadblock tile (logical K); N = tokens
      cutlass::gemm::GemmShape<WM, WN, WK>,     // warp tile
      cutlass::gemm::GemmShape<16, 8, 32>,      // mma.sp instruction
      Epilogue, cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<>, Stages, kAlignAB, kAlignAB, SplitK>;
  using ElementE = typename Gemm::ElementE;
  using LayoutE = typename Gemm::LayoutE;
  static_assert(sizeof(ElementE) == 2, "16-bit operands use uint16 metadata");
  static_assert(Gemm::kElementsPerElementE * Gemm::kSparse == 16, "one uint16 of metadata covers 16 input channels");
  static_assert(TbK == kMultipleK, "every config keeps the same K tile (shape limits, metadata tiling)");
  static_assert(std::is_same_v<LayoutE, cutlass::layout::ColumnMajorInterleaved<2>>,
                "the metadata layout (sparse24_layout's sm80 order) must be the same for every config");
};

template <typename Cfg>
typename Cfg::Gemm::Arguments make_args(int m, int n, int k, const void* a, const void* b, void* d, const void* e,
                                        int split_k) {
  using Gemm = typename Cfg::Gemm;
  using Out = typename Cfg::ElementOut;
  using Element = typename Gemm::ElementA;
  return typename Gemm::Arguments(
      cutlass::gemm::GemmCoord(m, n, k),
      {reinterpret_cast<const Element*>(a), cutlass::layout::RowMajor(k / 2)},
      {reinterpret_cast<const Element*>(b), cutlass::layout::ColumnMajor(k)},
      {reinterpret_cast<Out*>(d), cutlass::layout::RowMajor(n)},  // C: read only by split-K slices > 0 (beta 1)
      {reinterpret_cast<Out*>(d), cutlass::layout::RowMajor(n)},
      {reinterpret_cast<typename Cfg::ElementE*>(const_cast<void*>(e)),
       Cfg::LayoutE::packed(cutlass::MatrixCoord(m, k / 16))},
      {1.0f, 0.0f}, split_k);
}

template <typename Cfg>
void launch(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta, at::Tensor& d, int split_k,
            const std::optional<at::Tensor>& workspace, bool legacy, cudaStream_t stream) {
  const int m = static_cast<int>(values.size(0));  // N
  const int k = static_cast<int>(x.size(1));       // K
  const int n = static_cast<int>(x.size(0));       // T (padded)
  auto args = make_args<Cfg>(m, n, k, values.data_ptr(), x.data_ptr(), d.data_ptr(), meta.data_ptr(), split_k);
  run_cutlass_op_ws<typename Cfg::Gemm>(args, workspace, legacy, x.get_device(), stream, "cutlass_sparse_mm");
}

// Config properties by id, from the table (no instantiation needed).
struct ConfigInfo {
  int tile_k;
  bool split_k;
};
ConfigInfo config_info(int64_t config) {
#define RIA_SM80_INFO(id, tbm, tbn, tbk, wm, wn, wk, st, sk) \
  if (config == id) return {tbk, sk != 0};
  RIA_SM80_CONFIGS(RIA_SM80_INFO)
#undef RIA_SM80_INFO
  TORCH_CHECK(false, "ria_kernels.cutlass_sparse_mm: config must be one of the sm80 configs of "
              "csrc/cutlass_sparse_configs.h (0..", kNumConfigs - 1, "), got ", config);
}

void check_split(int64_t config, int64_t split_k, int64_t k) {
  const ConfigInfo info = config_info(config);
  TORCH_CHECK(split_k >= 1, "ria_kernels.cutlass_sparse_mm: split_k must be >= 1, got ", split_k);
  TORCH_CHECK(split_k == 1 || info.split_k, "ria_kernels.cutlass_sparse_mm: config ", config,
              " has no split-K (only the split-K configs of cutlass_sparse_configs.h take split_k > 1)");
  TORCH_CHECK(split_k <= k / info.tile_k, "ria_kernels.cutlass_sparse_mm: split_k=", split_k, " exceeds the ",
              k / info.tile_k, " K tiles of in_features=", k);
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
                     const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& alpha, int64_t config,
                     int64_t split_k, const std::optional<at::Tensor>& workspace) {
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
  check_split(config, split_k, k);
  const c10::cuda::CUDAGuard guard(x.device());
  TORCH_CHECK(device_capability(x.get_device()) >= 80, "the CUTLASS sparse kernel needs compute capability >= 8.0");
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();

  const int64_t t = x.size(0);
  const int64_t t_pad = (t + kMultipleT - 1) / kMultipleT * kMultipleT;
  const at::Tensor xp = (t_pad == t) ? x : at::constant_pad_nd(x, {0, 0, 0, t_pad - t}, 0);
  TORCH_CHECK(aligned_to(xp.data_ptr(), 16) && aligned_to(values.data_ptr(), 16) && aligned_to(meta.data_ptr(), 16),
              "x, values and meta must be 16-byte aligned");
  const bool f32_out = config_info(config).split_k;  // the split-K configs write an fp32 D
  at::Tensor d = at::empty({n, t_pad}, x.options().dtype(f32_out ? at::kFloat : x.scalar_type()));  // y^T
  const bool legacy = config == 0;  // the prefill config keeps its caching-allocator workspace path
  const bool half = x.scalar_type() == at::kHalf;
  switch (config) {
#define RIA_SM80_CASE(id, tbm, tbn, tbk, wm, wn, wk, st, sk)                                                   \
  case id:                                                                                                   \
    if (half) {                                                                                              \
      launch<Sm80Sparse<cutlass::half_t, tbm, tbn, tbk, wm, wn, wk, st, sk != 0>>(xp, values, meta, d, split_k, \
                                                                                workspace, legacy, stream);  \
    } else {                                                                                                 \
      launch<Sm80Sparse<cutlass::bfloat16_t, tbm, tbn, tbk, wm, wn, wk, st, sk != 0>>(                       \
          xp, values, meta, d, split_k, workspace, legacy, stream);                                          \
    }                                                                                                        \
    break;
    RIA_SM80_CONFIGS(RIA_SM80_CASE)
#undef RIA_SM80_CASE
    default:
      TORCH_CHECK(false, "ria_kernels.cutlass_sparse_mm: unknown config ", config);
  }
  // One pass: transpose y^T -> y and apply alpha / bias. The out= forms pin y's row-major layout (a plain
  // elementwise op would inherit the transposed strides of its input).
  auto yt = d.narrow(1, 0, t).t();  // [T, N] view of D
  at::Tensor y = at::empty({t, n}, x.options());
  if (alpha.has_value()) {
    auto a = alpha->to(d.scalar_type());  // fp32 D: alpha applied in fp32 before the one rounding
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

// Per config: the dynamic shared memory, stages and threads of its kernel, as constants in the object file's
// .rodata (never read by the extension): scripts/cutlass_instantiation_table.py reads them, next to the
// registers / spills ptxas reports, for benchmarks/results/cutlass_sparse_instantiations.md.
#define RIA_SM80_EXPORT(id, tbm, tbn, tbk, wm, wn, wk, st, sk)                                             \
  extern "C" __attribute__((used)) const int32_t ria_cfg_sm80_##id##_smem =                               \
      int32_t(sizeof(typename Sm80Sparse<cutlass::half_t, tbm, tbn, tbk, wm, wn, wk, st, sk != 0>::Gemm::GemmKernel::SharedStorage)); \
  extern "C" __attribute__((used)) const int32_t ria_cfg_sm80_##id##_stages = st;                         \
  extern "C" __attribute__((used)) const int32_t ria_cfg_sm80_##id##_threads =                            \
      int32_t(Sm80Sparse<cutlass::half_t, tbm, tbn, tbk, wm, wn, wk, st, sk != 0>::Gemm::GemmKernel::kThreadCount);
RIA_SM80_CONFIGS(RIA_SM80_EXPORT)
#undef RIA_SM80_EXPORT

int64_t workspace_size(int64_t n, int64_t t, int64_t k, int64_t config, int64_t split_k) {
  TORCH_CHECK(n > 0 && t > 0 && k > 0 && k % kMultipleK == 0, "ria_kernels.cutlass_workspace_size: needs n, t > 0 "
              "and k a positive multiple of 64, got n=", n, " t=", t, " k=", k);
  check_split(config, split_k, k);
  const int t_pad = static_cast<int>((t + kMultipleT - 1) / kMultipleT * kMultipleT);
  switch (config) {  // the sizes only depend on the problem and split (the pointers are not read)
#define RIA_SM80_WS(id, tbm, tbn, tbk, wm, wn, wk, st, sk)                                                  \
  case id: {                                                                                              \
    using Cfg = Sm80Sparse<cutlass::half_t, tbm, tbn, tbk, wm, wn, wk, st, sk != 0>;                        \
    auto args = make_args<Cfg>(static_cast<int>(n), t_pad, static_cast<int>(k), nullptr, nullptr, nullptr, \
                               nullptr, static_cast<int>(split_k));                                       \
    return static_cast<int64_t>(Cfg::Gemm::get_workspace_size(args));                                    \
  }
    RIA_SM80_CONFIGS(RIA_SM80_WS)
#undef RIA_SM80_WS
    default:
      TORCH_CHECK(false, "ria_kernels.cutlass_workspace_size: unknown config ", config);
  }
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
                     const std::optional<at::Tensor>&, int64_t, int64_t, const std::optional<at::Tensor>&) {
  unavailable("cutlass_sparse_mm");
}
int64_t workspace_size(int64_t, int64_t, int64_t, int64_t, int64_t) { unavailable("cutlass_workspace_size"); }
}  // namespace cutlass_sp
}  // namespace ria

#endif  // RIA_WITH_CUTLASS
