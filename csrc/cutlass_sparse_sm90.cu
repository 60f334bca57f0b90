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
// Files: this one holds the ops (checks, guard, stream, dtype dispatch); the CUTLASS instantiations live in
// cutlass_sparse_sm90_{f16,bf16}.cu (one dtype each, compiled in parallel), see cutlass_sparse_sm90.h.
//
// Build guards: the kernel is only instantiated when the build targets sm_90a (_build.py / check_csrc.sh pass
// -DRIA_WITH_SM90A together with an sm_90a gencode) and CUTLASS was found (RIA_WITH_CUTLASS) and nvcc supports
// the sm90 sparse MMA (CUTLASS_ARCH_MMA_SPARSE_SM90_SUPPORTED, CUDA >= 12.2). Otherwise the ops are stubs that
// raise and cutlass90_available() is false. In a fat build (e.g. sm_80 + sm_90a) the device passes for other
// archs compile CUTLASS's own arch-guarded empty kernel body (ENABLE_SM90_KERNEL_LEVEL needs
// __CUDA_ARCH_FEAT_SM90_ALL); the launcher refuses such devices before launching.
#include "ria_common.h"
#include "ria_ops.h"
#include "cutlass_sparse_sm90.h"

#ifdef RIA_CUTLASS90_ENABLED
#include <algorithm>

namespace ria {
namespace cutlass90 {
namespace {

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

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
// config: a row of RIA_SM90_CONFIGS; split_k > 1 only for the stream-K rows (their split-K decomposition).
void check_config(int64_t config, int64_t split_k, int64_t k, const char* op) {
  bool known = false, stream_k = false;
  int64_t tile_k = 1;
#define RIA_SM90_INFO(id, tm, tn, tk, sk) \
  if (config == id) {                     \
    known = true;                         \
    stream_k = sk != 0;                   \
    tile_k = tk;                          \
  }
  RIA_SM90_CONFIGS(RIA_SM90_INFO)
#undef RIA_SM90_INFO
  TORCH_CHECK(known, "ria_kernels.", op, ": config must be a row id of RIA_SM90_CONFIGS "
              "(csrc/cutlass_sparse_configs.h), got ", config);
  TORCH_CHECK(split_k >= 1, "ria_kernels.", op, ": split_k must be >= 1, got ", split_k);
  TORCH_CHECK(split_k == 1 || stream_k, "ria_kernels.", op, ": config ", config, " has no split-K (only the "
              "stream-K configs take split_k > 1)");
  TORCH_CHECK(split_k <= (k + tile_k - 1) / tile_k, "ria_kernels.", op, ": split_k=", split_k, " exceeds the ",
              (k + tile_k - 1) / tile_k, " K tiles of in_features=", k);
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
    detail::compress_f16(weight, values, meta, stream);
  } else {
    detail::compress_bf16(weight, values, meta, stream);
  }
  return {values, meta};
}

at::Tensor sparse_mm(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                     const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& alpha, int64_t config,
                     int64_t split_k, const std::optional<at::Tensor>& workspace) {
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
  check_config(config, split_k, k, "cutlass90_sparse_mm");
  const c10::cuda::CUDAGuard guard(x.device());
  check_hopper(x.get_device(), "cutlass90_sparse_mm");
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
  at::Tensor y = at::empty({t, n}, x.options());
  TORCH_CHECK(aligned_to(x.data_ptr(), 16) && aligned_to(values.data_ptr(), 16) && aligned_to(meta.data_ptr(), 16) &&
                  aligned_to(y.data_ptr(), 16),
              "x, values and meta must be 16-byte aligned");
  TORCH_CHECK(!bias.has_value() || aligned_to(bias->data_ptr(), 16), "bias must be 16-byte aligned");
  TORCH_CHECK(!alpha.has_value() || aligned_to(alpha->data_ptr(), 16), "alpha must be 16-byte aligned");
  const detail::GemmCall call{x, values, meta, bias, alpha, y, split_k, workspace, /*legacy=*/config == 0, stream};
  const bool half = x.scalar_type() == at::kHalf;
  switch (config) {
#define RIA_SM90_CASE(id, tm, tn, tk, sk)  \
  case id:                                 \
    if (half) {                            \
      detail::gemm_f16_##id(call);         \
    } else {                               \
      detail::gemm_bf16_##id(call);        \
    }                                      \
    break;
    RIA_SM90_CONFIGS(RIA_SM90_CASE)
#undef RIA_SM90_CASE
    default:
      TORCH_CHECK(false, "ria_kernels.cutlass90_sparse_mm: unknown config ", config);
  }
  return y;
}

int64_t workspace_size(int64_t n, int64_t t, int64_t k, int64_t config, int64_t split_k) {
  TORCH_CHECK(n > 0 && n % kMultipleN == 0 && t > 0 && k > 0 && k % kMultipleK == 0,
              "ria_kernels.cutlass90_workspace_size: needs n a positive multiple of 8, t > 0, k a positive multiple "
              "of 16, got n=", n, " t=", t, " k=", k);
  check_config(config, split_k, k, "cutlass90_workspace_size");
  int device = 0;
  RIA_CUDA_CHECK(cudaGetDevice(&device));  // the stream-K decomposition depends on the current device's SMs
  switch (config) {
#define RIA_SM90_WS(id, tm, tn, tk, sk) \
  case id:                              \
    return detail::workspace_##id(n, t, k, split_k, device);
    RIA_SM90_CONFIGS(RIA_SM90_WS)
#undef RIA_SM90_WS
    default:
      TORCH_CHECK(false, "ria_kernels.cutlass90_workspace_size: unknown config ", config);
  }
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
                     const std::optional<at::Tensor>&, int64_t, int64_t, const std::optional<at::Tensor>&) {
  unavailable("cutlass90_sparse_mm");
}
int64_t workspace_size(int64_t, int64_t, int64_t, int64_t, int64_t) { unavailable("cutlass90_workspace_size"); }
}  // namespace cutlass90
}  // namespace ria

#endif  // RIA_CUTLASS90_ENABLED
