// cuSPARSELt wrapper: y[T, N] = alpha[n] * (x[T, K] @ W[N, K]^T) + bias[n], W 2:4 sparse along K.
//
// Layout decisions (no transpose or padding copy of x or y on the hot path):
//  * cuSPARSELt computes D[m, n] = alpha * op(A) @ op(B) + beta * C. We compute y^T = W @ x^T:
//      A = W, structured, [M=N_out, K] row-major, ld = K, opA = N   (the 2:4 groups run along A's rows,
//          i.e. along K = input channels, which is exactly the pruning convention)
//      B = x^T: described as the row-major [T, K] matrix x itself (ld = K) with opB = T. This is the
//          same memory as a column-major [K, T] operand; no copy.
//      C = D = y^T: column-major [N_out, T], ld = N_out. Its memory is y's row-major [T, N_out] layout,
//          so the op returns y directly.
//    This is the combination PyTorch's _cslt_sparse_mm uses for its fused-transpose path.
//  * Bias and alpha are per row of D = per output channel: CUSPARSELT_MATMUL_BIAS_POINTER (bias in x's
//    dtype, length N_out) and CUSPARSELT_MATMUL_ALPHA_VECTOR_SCALING (alpha = device float32 vector of
//    length N_out passed as the alpha argument; beta = 0 on the host).
//  * Compute type CUSPARSE_COMPUTE_32F (fp32 accumulation) for fp16 and bf16 (cuSPARSELt >= 0.5.2).
//  * Library shape limits for 16-bit types: the structured matrix needs rows and cols multiples of 16
//    (so N_out % 16 == 0 and K % 16 == 0, checked at the boundary), dense matrices multiples of 8.
//    T is therefore padded to a multiple of 8 ONLY when T % 8 != 0 (one zero-padded copy of x; y is
//    then a contiguous narrow of the padded result, no copy). Aligned T never copies.
//  * Caching: plans (matrix + matmul descriptors, algorithm selection, plan, workspace size) are cached
//    per (device, T_padded, N, K, dtype, has_bias, has_alpha, alg_id, split_k, split_k_mode, bias ptr,
//    handle) in an LRU of kMaxPlans entries. The bias pointer is part of the key because cuSPARSELt bakes
//    it into the matmul descriptor before plan init; the handle because handles are per thread (below).
//  * Search (cusparseLtMatmulSearch, by cslt_search or on first use with alg_id = -1): the searched plan
//    itself goes into the plan cache under the config it reports, so a later call with that config (and
//    the same bias pointer, on the same thread) runs exactly the kernel that won. The full searched config
//    (alg id, split-K factor, split-K mode AND split-K buffers) is kept per (device, T_padded, N, K, dtype,
//    has_bias, has_alpha); a plan built for that shape and (alg id, split_k, mode) elsewhere (another bias
//    pointer or thread) replays every one of those attributes. The public config is the 3-tuple
//    [alg_id, split_k, split_k_mode]; in a process that has not searched the shape, split-K buffers are
//    cuSPARSELt's default for that config.
//    Workspace comes from the CUDA caching allocator on the current stream every call.
//  * CUDA graphs: plan init and search refuse to run while the current stream is capturing
//    (ria_capture.h); a capture replays plans made eagerly before it. compress refuses too (it syncs).
//  * One cuSPARSELt handle per (thread, device), as PyTorch does (a handle shared by threads gave
//    cuSPARSELt internal errors there). Created lazily and never destroyed: plans in the process-wide
//    cache keep using them, and destroying at exit can race with CUDA context teardown.
//  * The compressed weight is an opaque uint8 buffer (cusparseLtSpMMACompress2); its size is checked
//    against the plan's expected compressed size. It does not record its dtype: it must come from
//    cslt_compress of a weight with x's dtype.
//  * Built without cuSPARSELt (RIA_WITH_CUSPARSELT undefined): cslt_available() is false, version 0,
//    and every other cslt op raises a clear error.
#include "ria_common.h"
#include "ria_ops.h"

#include <algorithm>
#include <array>
#include <list>
#include <memory>
#include <mutex>
#include <unordered_map>

#ifdef RIA_WITH_CUSPARSELT
#include <c10/cuda/CUDACachingAllocator.h>
#include <cusparseLt.h>
#include <library_types.h>

#define RIA_CUSPARSELT_CHECK(expr)                                                        \
  do {                                                                                    \
    cusparseStatus_t ria_st_ = (expr);                                                    \
    TORCH_CHECK(ria_st_ == CUSPARSE_STATUS_SUCCESS, "ria_kernels: cuSPARSELt call ", #expr, \
                " failed with status ", static_cast<int>(ria_st_), " (",                  \
                cusparseLtGetErrorString(ria_st_), ")");                                  \
  } while (0)

namespace ria {
namespace cslt {
namespace {

constexpr size_t kMaxPlans = 4096;
constexpr int kSearchIterations = 10;  // timing repetitions per candidate config in MatmulSearch
constexpr int64_t kStructuredMultiple = 16;  // 16-bit structured matrix rows/cols
constexpr int64_t kDenseMultiple = 8;        // 16-bit dense matrix rows/cols
constexpr uint32_t kAlignmentBytes = 16;

// ---- handles ---------------------------------------------------------------------------------
// Caller holds a CUDAGuard for `device` (the handle binds to the current device at init). Thread-local,
// so no lock; leaked on purpose (see the header comment).
cusparseLtHandle_t* handle_for(int device) {
  thread_local std::unordered_map<int, cusparseLtHandle_t*> handles;
  auto it = handles.find(device);
  if (it != handles.end()) return it->second;
  auto h = std::make_unique<cusparseLtHandle_t>();
  RIA_CUSPARSELT_CHECK(cusparseLtInit(h.get()));
  auto* raw = h.release();
  handles.emplace(device, raw);
  return raw;
}

cudaDataType cuda_type(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return CUDA_R_16F;
    case at::kBFloat16: return CUDA_R_16BF;
    default: TORCH_CHECK(false, "cuSPARSELt path supports float16 and bfloat16 only, got ", t);
  }
}

// ---- keys ------------------------------------------------------------------------------------
struct ShapeKey {
  int device;
  int64_t t, n, k;
  int dtype;
  bool has_bias, has_alpha;
};

struct Config {
  int alg_id = 0;
  int split_k = 1;
  int split_k_mode = 0;      // cusparseLtSplitKMode_t as int; only applied when split_k > 1
  int split_k_buffers = -1;  // CUSPARSELT_MATMUL_SPLIT_K_BUFFERS; -1 = cuSPARSELt's default; split_k > 1 only
  bool same_kernel_choice(const Config& o) const {
    return alg_id == o.alg_id && split_k == o.split_k && (split_k <= 1 || split_k_mode == o.split_k_mode);
  }
};

using KeyArray = std::array<int64_t, 12>;

struct KeyHash {
  size_t operator()(const KeyArray& a) const noexcept {
    size_t h = 1469598103934665603ull;
    for (int64_t v : a) {
      h ^= std::hash<int64_t>()(v) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    }
    return h;
  }
};

KeyArray shape_key(const ShapeKey& s) {
  return {s.device, s.t, s.n, s.k, s.dtype, s.has_bias, s.has_alpha, 0, 0, 0, 0, 0};
}

KeyArray plan_key(const ShapeKey& s, const Config& c, const void* bias_ptr, const cusparseLtHandle_t* h) {
  return {s.device, s.t, s.n, s.k, s.dtype, s.has_bias, s.has_alpha, c.alg_id, c.split_k,
          c.split_k > 1 ? c.split_k_mode : 0, static_cast<int64_t>(reinterpret_cast<uintptr_t>(bias_ptr)),
          static_cast<int64_t>(reinterpret_cast<uintptr_t>(h))};
}

// ---- plan ------------------------------------------------------------------------------------
// Owns every cuSPARSELt object of one matmul configuration. Destruction ignores statuses (a destructor
// cannot throw); creation checks every status.
struct Plan {
  cusparseLtHandle_t* handle = nullptr;
  cusparseLtMatDescriptor_t mat_a{}, mat_b{}, mat_c{};
  cusparseLtMatmulDescriptor_t matmul{};
  cusparseLtMatmulAlgSelection_t alg_sel{};
  cusparseLtMatmulPlan_t plan{};
  bool a_ok = false, b_ok = false, c_ok = false, sel_ok = false, plan_ok = false;
  size_t workspace_size = 0;
  size_t compressed_size = 0;
  Config config;

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    if (plan_ok) cusparseLtMatmulPlanDestroy(&plan);
    if (sel_ok) cusparseLtMatmulAlgSelectionDestroy(&alg_sel);
    if (c_ok) cusparseLtMatDescriptorDestroy(&mat_c);
    if (b_ok) cusparseLtMatDescriptorDestroy(&mat_b);
    if (a_ok) cusparseLtMatDescriptorDestroy(&mat_a);
  }
};

void init_structured(cusparseLtHandle_t* h, cusparseLtMatDescriptor_t* d, int64_t n, int64_t k, cudaDataType t) {
  RIA_CUSPARSELT_CHECK(cusparseLtStructuredDescriptorInit(h, d, n, k, /*ld=*/k, kAlignmentBytes, t,
                                                          CUSPARSE_ORDER_ROW, CUSPARSELT_SPARSITY_50_PERCENT));
}

// Builds descriptors + algorithm selection; `config` == nullptr leaves the default algorithm (used
// for the search plan). Plan init happens here too.
std::shared_ptr<Plan> build_plan(cusparseLtHandle_t* h, const ShapeKey& s, const Config* config,
                                 const void* bias_ptr, bool for_search) {
  auto p = std::make_shared<Plan>();
  p->handle = h;
  const cudaDataType t = cuda_type(static_cast<at::ScalarType>(s.dtype));
  init_structured(h, &p->mat_a, s.n, s.k, t);
  p->a_ok = true;
  // B: x itself, row-major [T, K], used transposed.
  RIA_CUSPARSELT_CHECK(cusparseLtDenseDescriptorInit(h, &p->mat_b, s.t, s.k, /*ld=*/s.k, kAlignmentBytes, t,
                                                     CUSPARSE_ORDER_ROW));
  p->b_ok = true;
  // C = D: y^T, column-major [N, T], ld = N (== y row-major [T, N]).
  RIA_CUSPARSELT_CHECK(cusparseLtDenseDescriptorInit(h, &p->mat_c, s.n, s.t, /*ld=*/s.n, kAlignmentBytes, t,
                                                     CUSPARSE_ORDER_COL));
  p->c_ok = true;
  RIA_CUSPARSELT_CHECK(cusparseLtMatmulDescriptorInit(h, &p->matmul, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                                      CUSPARSE_OPERATION_TRANSPOSE, &p->mat_a, &p->mat_b,
                                                      &p->mat_c, &p->mat_c, CUSPARSE_COMPUTE_32F));
  if (s.has_bias) {
    void* b = const_cast<void*>(bias_ptr);
    RIA_CUSPARSELT_CHECK(
        cusparseLtMatmulDescSetAttribute(h, &p->matmul, CUSPARSELT_MATMUL_BIAS_POINTER, &b, sizeof(b)));
  }
  if (s.has_alpha) {
    int on = 1;
    RIA_CUSPARSELT_CHECK(
        cusparseLtMatmulDescSetAttribute(h, &p->matmul, CUSPARSELT_MATMUL_ALPHA_VECTOR_SCALING, &on, sizeof(on)));
  }
  RIA_CUSPARSELT_CHECK(cusparseLtMatmulAlgSelectionInit(h, &p->alg_sel, &p->matmul, CUSPARSELT_MATMUL_ALG_DEFAULT));
  p->sel_ok = true;
  if (config != nullptr) {
    int max_id = 0;
    RIA_CUSPARSELT_CHECK(cusparseLtMatmulAlgGetAttribute(h, &p->alg_sel, CUSPARSELT_MATMUL_ALG_CONFIG_MAX_ID,
                                                         &max_id, sizeof(max_id)));
    TORCH_CHECK(config->alg_id >= 0 && config->alg_id < max_id, "alg_id must be in [0, ", max_id,
                ") for this shape (cusparseLt CONFIG_MAX_ID), got ", config->alg_id);
    int alg = config->alg_id;
    RIA_CUSPARSELT_CHECK(
        cusparseLtMatmulAlgSetAttribute(h, &p->alg_sel, CUSPARSELT_MATMUL_ALG_CONFIG_ID, &alg, sizeof(alg)));
    int split_k = config->split_k;
    RIA_CUSPARSELT_CHECK(
        cusparseLtMatmulAlgSetAttribute(h, &p->alg_sel, CUSPARSELT_MATMUL_SPLIT_K, &split_k, sizeof(split_k)));
    if (split_k > 1) {
      auto mode = static_cast<cusparseLtSplitKMode_t>(config->split_k_mode);
      RIA_CUSPARSELT_CHECK(
          cusparseLtMatmulAlgSetAttribute(h, &p->alg_sel, CUSPARSELT_MATMUL_SPLIT_K_MODE, &mode, sizeof(mode)));
      if (config->split_k_buffers > 0) {  // the searched value, replayed (else cuSPARSELt's default)
        int buffers = config->split_k_buffers;
        RIA_CUSPARSELT_CHECK(cusparseLtMatmulAlgSetAttribute(h, &p->alg_sel, CUSPARSELT_MATMUL_SPLIT_K_BUFFERS,
                                                             &buffers, sizeof(buffers)));
      }
    }
    p->config = *config;
  }
  if (for_search) {
    int iters = kSearchIterations;
    RIA_CUSPARSELT_CHECK(cusparseLtMatmulAlgSetAttribute(h, &p->alg_sel, CUSPARSELT_MATMUL_SEARCH_ITERATIONS,
                                                         &iters, sizeof(iters)));
  }
  RIA_CUSPARSELT_CHECK(cusparseLtMatmulPlanInit(h, &p->plan, &p->matmul, &p->alg_sel));
  p->plan_ok = true;
  RIA_CUSPARSELT_CHECK(cusparseLtMatmulGetWorkspace(h, &p->plan, &p->workspace_size));
  size_t buffer_size = 0;
  RIA_CUSPARSELT_CHECK(cusparseLtSpMMACompressedSize2(h, &p->mat_a, &p->compressed_size, &buffer_size));
  return p;
}

// ---- caches ----------------------------------------------------------------------------------
struct Caches {
  std::mutex mutex;
  std::list<KeyArray> lru;  // front = most recent
  std::unordered_map<KeyArray, std::pair<std::shared_ptr<Plan>, std::list<KeyArray>::iterator>, KeyHash> plans;
  std::unordered_map<KeyArray, Config, KeyHash> configs;
  int64_t hits = 0, misses = 0, searches = 0;
};

Caches& caches() {
  static Caches* c = new Caches();  // leaked on purpose: no destruction order issues at exit
  return *c;
}

// Caller holds c.mutex. Inserts (or replaces) `key`, evicting the least recently used beyond kMaxPlans.
void insert_plan_locked(Caches& c, const KeyArray& key, std::shared_ptr<Plan> plan) {
  auto it = c.plans.find(key);
  if (it != c.plans.end()) {
    c.lru.erase(it->second.second);
    c.plans.erase(it);
  }
  c.lru.push_front(key);
  c.plans.emplace(key, std::make_pair(std::move(plan), c.lru.begin()));
  while (c.plans.size() > kMaxPlans) {
    c.plans.erase(c.lru.back());  // in-flight users keep their shared_ptr alive
    c.lru.pop_back();
  }
}

std::shared_ptr<Plan> get_plan(cusparseLtHandle_t* h, const ShapeKey& s, Config cfg, const void* bias_ptr,
                               cudaStream_t stream) {
  auto& c = caches();
  const KeyArray key = plan_key(s, cfg, bias_ptr, h);
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    auto it = c.plans.find(key);
    if (it != c.plans.end()) {
      c.lru.splice(c.lru.begin(), c.lru, it->second.second);
      ++c.hits;
      return it->second.first;
    }
    // The same kernel choice as this shape's search: replay its split-K buffers too.
    auto sit = c.configs.find(shape_key(s));
    if (cfg.split_k_buffers < 0 && sit != c.configs.end() && sit->second.same_kernel_choice(cfg)) {
      cfg.split_k_buffers = sit->second.split_k_buffers;
    }
  }
  check_not_capturing(stream, "cuSPARSELt plan init (cusparseLtMatmulPlanInit) for a new shape/config/bias");
  auto plan = build_plan(h, s, &cfg, bias_ptr, /*for_search=*/false);  // outside the lock: may throw
  std::lock_guard<std::mutex> lock(c.mutex);
  ++c.misses;
  auto it = c.plans.find(key);
  if (it != c.plans.end()) return it->second.first;  // another thread built it meanwhile
  insert_plan_locked(c, key, plan);
  return plan;
}

// ---- shared launch prologue ------------------------------------------------------------------
struct Prepared {
  ShapeKey shape;
  at::Tensor x_used;  // x, or x zero-padded to T_padded rows when T % 8 != 0
  int64_t t;          // original T
};

Prepared prepare(const at::Tensor& x, const at::Tensor& compressed, int64_t out_features,
                 const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& alpha) {
  check_activation(x);
  TORCH_CHECK(compressed.is_cuda() && compressed.device() == x.device(),
              "compressed must be a CUDA tensor on x's device (", x.device(), "), got ", compressed.device());
  TORCH_CHECK(compressed.scalar_type() == at::kByte && compressed.dim() == 1 && compressed.is_contiguous(),
              "compressed must be the contiguous 1-D uint8 buffer returned by cslt_compress, got dtype ",
              compressed.scalar_type(), " and shape ", compressed.sizes());
  TORCH_CHECK(out_features > 0 && out_features % kStructuredMultiple == 0,
              "out_features must be a positive multiple of 16 (cuSPARSELt structured-matrix rows), got ",
              out_features);
  const int64_t k = x.size(1);
  TORCH_CHECK(k % kStructuredMultiple == 0,
              "x.size(1) (in_features) must be a multiple of 16 (cuSPARSELt structured-matrix cols), got ", k);
  check_epilogue(bias, alpha, x, out_features);
  TORCH_CHECK(aligned_to(compressed.data_ptr(), kAlignmentBytes), "compressed must be 16-byte aligned");
  Prepared p;
  p.t = x.size(0);
  const int64_t t_pad = (p.t + kDenseMultiple - 1) / kDenseMultiple * kDenseMultiple;
  // Padding copy only for T not a multiple of 8 (cuSPARSELt dense-matrix limit); see header comment.
  p.x_used = (t_pad == p.t) ? x : at::constant_pad_nd(x, {0, 0, 0, t_pad - p.t}, 0);
  TORCH_CHECK(aligned_to(p.x_used.data_ptr(), kAlignmentBytes), "x must be 16-byte aligned (data_ptr % 16 == 0)");
  p.shape = ShapeKey{x.get_device(), t_pad, out_features, k, static_cast<int>(x.scalar_type()), bias.has_value(),
                     alpha.has_value()};
  return p;
}

void check_compressed_size(const Plan& plan, const at::Tensor& compressed, int64_t n, int64_t k) {
  TORCH_CHECK(static_cast<size_t>(compressed.numel()) == plan.compressed_size, "compressed has ",
              compressed.numel(), " bytes but a 2:4 weight of shape [out_features=", n, ", in_features=", k,
              "] compresses to ", plan.compressed_size, " bytes: out_features or x.size(1) does not match the "
              "compressed weight");
}

// Runs cusparseLtMatmulSearch on a default-algorithm plan and returns the winning config; the searched
// plan itself is cached under that config (see the header comment).
Config run_search(cusparseLtHandle_t* h, const Prepared& p, const at::Tensor& compressed, const void* bias_ptr,
                  const void* alpha_ptr, at::Tensor& y_pad, cudaStream_t stream) {
  check_not_capturing(stream, "cuSPARSELt algorithm search (cusparseLtMatmulSearch)");
  auto plan = build_plan(h, p.shape, nullptr, bias_ptr, /*for_search=*/true);
  check_compressed_size(*plan, compressed, p.shape.n, p.shape.k);
  auto workspace = c10::cuda::CUDACachingAllocator::get()->allocate(plan->workspace_size);
  const float one = 1.0f, zero = 0.0f;
  const void* alpha_arg = alpha_ptr != nullptr ? alpha_ptr : static_cast<const void*>(&one);
  RIA_CUSPARSELT_CHECK(cusparseLtMatmulSearch(h, &plan->plan, alpha_arg, compressed.data_ptr(),
                                              p.x_used.data_ptr(), &zero, y_pad.data_ptr(), y_pad.data_ptr(),
                                              workspace.get(), &stream, 1));
  Config cfg;
  RIA_CUSPARSELT_CHECK(cusparseLtMatmulAlgGetAttribute(h, &plan->alg_sel, CUSPARSELT_MATMUL_ALG_CONFIG_ID,
                                                       &cfg.alg_id, sizeof(cfg.alg_id)));
  RIA_CUSPARSELT_CHECK(cusparseLtMatmulAlgGetAttribute(h, &plan->alg_sel, CUSPARSELT_MATMUL_SPLIT_K,
                                                       &cfg.split_k, sizeof(cfg.split_k)));
  cusparseLtSplitKMode_t mode{};
  RIA_CUSPARSELT_CHECK(cusparseLtMatmulAlgGetAttribute(h, &plan->alg_sel, CUSPARSELT_MATMUL_SPLIT_K_MODE, &mode,
                                                       sizeof(mode)));
  cfg.split_k_mode = static_cast<int>(mode);
  RIA_CUSPARSELT_CHECK(cusparseLtMatmulAlgGetAttribute(h, &plan->alg_sel, CUSPARSELT_MATMUL_SPLIT_K_BUFFERS,
                                                       &cfg.split_k_buffers, sizeof(cfg.split_k_buffers)));
  plan->config = cfg;
  // The search updated the plan's algorithm; its workspace need may have changed with it.
  size_t workspace_after = 0;
  RIA_CUSPARSELT_CHECK(cusparseLtMatmulGetWorkspace(h, &plan->plan, &workspace_after));
  plan->workspace_size = std::max(plan->workspace_size, workspace_after);
  auto& c = caches();
  std::lock_guard<std::mutex> lock(c.mutex);
  ++c.searches;
  ++c.misses;  // a plan was built
  c.configs[shape_key(p.shape)] = cfg;
  insert_plan_locked(c, plan_key(p.shape, cfg, bias_ptr, h), plan);
  return cfg;
}

at::Tensor empty_output(const Prepared& p, const at::Tensor& x) {
  // y_pad is [T_pad, N] row-major == D column-major [N, T_pad]
  return at::empty({p.shape.t, p.shape.n}, x.options());
}

}  // namespace

bool available() { return true; }

int64_t version() {
  int major = 0, minor = 0, patch = 0;
  RIA_CUSPARSELT_CHECK(cusparseLtGetProperty(MAJOR_VERSION, &major));
  RIA_CUSPARSELT_CHECK(cusparseLtGetProperty(MINOR_VERSION, &minor));
  RIA_CUSPARSELT_CHECK(cusparseLtGetProperty(PATCH_LEVEL, &patch));
  // Same encoding as the header's CUSPARSELT_VERSION: major * 1000000 + minor * 100 + patch.
  return static_cast<int64_t>(major) * 1000000 + minor * 100 + patch;
}

at::Tensor compress(const at::Tensor& weight) {
  ria::check_weight(weight);
  TORCH_CHECK(weight.is_contiguous(), "weight must be row-major contiguous");
  const int64_t n = weight.size(0), k = weight.size(1);
  TORCH_CHECK(n > 0 && n % kStructuredMultiple == 0, "weight.size(0) (out_features) must be a positive multiple "
              "of 16 (cuSPARSELt structured-matrix rows), got ", n);
  TORCH_CHECK(k > 0 && k % kStructuredMultiple == 0, "weight.size(1) (in_features) must be a positive multiple "
              "of 16 (cuSPARSELt structured-matrix cols), got ", k);
  TORCH_CHECK(aligned_to(weight.data_ptr(), kAlignmentBytes), "weight must be 16-byte aligned");
  const c10::cuda::CUDAGuard guard(weight.device());
  cusparseLtHandle_t* h = handle_for(weight.get_device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(weight.get_device()).stream();
  check_not_capturing(stream, "cslt_compress (it checks the 2:4 pattern on the host)");

  cusparseLtMatDescriptor_t desc;
  init_structured(h, &desc, n, k, cuda_type(weight.scalar_type()));
  // RAII so that the descriptor is destroyed on every exit path (statuses below may throw).
  struct DescGuard {
    cusparseLtMatDescriptor_t* d;
    ~DescGuard() { cusparseLtMatDescriptorDestroy(d); }
  } desc_guard{&desc};

  // Verify the 2:4 pattern once (compression would otherwise silently drop weights).
  auto valid = at::empty({1}, weight.options().dtype(at::kInt));
  RIA_CUSPARSELT_CHECK(cusparseLtSpMMAPruneCheck2(h, &desc, /*isSparseA=*/1, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                                  weight.data_ptr(), valid.data_ptr<int>(), stream));
  TORCH_CHECK(valid.item<int>() == 0, "weight is not 2:4 sparse along in_features (cusparseLtSpMMAPruneCheck2): "
              "every group of 4 consecutive input weights must have at most 2 non-zeros");

  size_t compressed_size = 0, buffer_size = 0;
  RIA_CUSPARSELT_CHECK(cusparseLtSpMMACompressedSize2(h, &desc, &compressed_size, &buffer_size));
  auto out = at::empty({static_cast<int64_t>(compressed_size)}, weight.options().dtype(at::kByte));
  auto buffer = c10::cuda::CUDACachingAllocator::get()->allocate(buffer_size);
  RIA_CUSPARSELT_CHECK(cusparseLtSpMMACompress2(h, &desc, /*isSparseA=*/1, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                                weight.data_ptr(), out.data_ptr(), buffer.get(), stream));
  return out;
}

std::vector<int64_t> search(const at::Tensor& x, const at::Tensor& compressed, int64_t out_features,
                            const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& alpha) {
  Prepared p = prepare(x, compressed, out_features, bias, alpha);
  const c10::cuda::CUDAGuard guard(x.device());
  cusparseLtHandle_t* h = handle_for(x.get_device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
  at::Tensor y_pad = empty_output(p, x);
  Config cfg = run_search(h, p, compressed, bias ? bias->data_ptr() : nullptr, alpha ? alpha->data_ptr() : nullptr,
                          y_pad, stream);
  return {cfg.alg_id, cfg.split_k, cfg.split_k_mode};
}

at::Tensor mm(const at::Tensor& x, const at::Tensor& compressed, int64_t out_features,
              const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& alpha, int64_t alg_id,
              int64_t split_k, int64_t split_k_mode) {
  TORCH_CHECK(alg_id >= -1, "alg_id must be -1 (searched config) or a cuSPARSELt config id >= 0, got ", alg_id);
  TORCH_CHECK(alg_id == -1 || split_k >= 1, "split_k must be >= 1, got ", split_k);
  Prepared p = prepare(x, compressed, out_features, bias, alpha);
  const c10::cuda::CUDAGuard guard(x.device());
  cusparseLtHandle_t* h = handle_for(x.get_device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
  const void* bias_ptr = bias ? bias->data_ptr() : nullptr;
  const void* alpha_ptr = alpha ? alpha->data_ptr() : nullptr;
  at::Tensor y_pad = empty_output(p, x);

  Config cfg;
  if (alg_id == -1) {
    bool found = false;
    {
      auto& c = caches();
      std::lock_guard<std::mutex> lock(c.mutex);
      auto it = c.configs.find(shape_key(p.shape));
      if (it != c.configs.end()) {
        cfg = it->second;
        found = true;
      }
    }
    if (!found) cfg = run_search(h, p, compressed, bias_ptr, alpha_ptr, y_pad, stream);
  } else {
    cfg.alg_id = static_cast<int>(alg_id);
    cfg.split_k = static_cast<int>(split_k);
    cfg.split_k_mode = static_cast<int>(split_k_mode);
  }

  auto plan = get_plan(h, p.shape, cfg, bias_ptr, stream);
  check_compressed_size(*plan, compressed, p.shape.n, p.shape.k);
  auto workspace = c10::cuda::CUDACachingAllocator::get()->allocate(plan->workspace_size);
  const float one = 1.0f, zero = 0.0f;
  const void* alpha_arg = alpha_ptr != nullptr ? alpha_ptr : static_cast<const void*>(&one);
  RIA_CUSPARSELT_CHECK(cusparseLtMatmul(h, &plan->plan, alpha_arg, compressed.data_ptr(), p.x_used.data_ptr(),
                                        &zero, y_pad.data_ptr(), y_pad.data_ptr(), workspace.get(), &stream, 1));
  return p.t == p.shape.t ? y_pad : y_pad.narrow(0, 0, p.t);
}

std::vector<int64_t> cache_stats() {
  auto& c = caches();
  std::lock_guard<std::mutex> lock(c.mutex);
  return {c.hits, c.misses, c.searches};
}

void clear_cache() {
  auto& c = caches();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.plans.clear();
  c.lru.clear();
  c.configs.clear();
  c.hits = c.misses = c.searches = 0;
}

}  // namespace cslt
}  // namespace ria

#else  // !RIA_WITH_CUSPARSELT

namespace ria {
namespace cslt {
namespace {
[[noreturn]] void unavailable(const char* op) {
  TORCH_CHECK(false, "ria_kernels.", op, ": this build of ria_kernels._C has no cuSPARSELt (headers not found at "
              "build time; install nvidia-cusparselt-cu12/-cu13 or set CUSPARSELT_DIR and rebuild)");
}
}  // namespace

bool available() { return false; }
int64_t version() { return 0; }
at::Tensor compress(const at::Tensor&) { unavailable("cslt_compress"); }
std::vector<int64_t> search(const at::Tensor&, const at::Tensor&, int64_t, const std::optional<at::Tensor>&,
                            const std::optional<at::Tensor>&) {
  unavailable("cslt_search");
}
at::Tensor mm(const at::Tensor&, const at::Tensor&, int64_t, const std::optional<at::Tensor>&,
              const std::optional<at::Tensor>&, int64_t, int64_t, int64_t) {
  unavailable("cslt_mm");
}
std::vector<int64_t> cache_stats() { return {0, 0, 0}; }
void clear_cache() {}
}  // namespace cslt
}  // namespace ria

#endif  // RIA_WITH_CUSPARSELT
