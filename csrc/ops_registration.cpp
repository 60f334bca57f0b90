// torch.library registration of the ria_kernels namespace, and the Python module init of
// ria_kernels._C (an empty module: importing it runs the static registrations below).
//
// Schemas (the op contract): every matmul is y[T, N] = alpha[n] * (x[T, K] @ W[N, K]^T) + bias[n].
//   cslt_search returns [alg_id, split_k, split_k_mode]:
//     alg_id       cuSPARSELt CUSPARSELT_MATMUL_ALG_CONFIG_ID chosen by cusparseLtMatmulSearch
//     split_k      CUSPARSELT_MATMUL_SPLIT_K (1 = no split along K)
//     split_k_mode cusparseLtSplitKMode_t as int (1 = one kernel, 2 = two kernels, ...); only applied
//                  when split_k > 1
//   cslt_mm(alg_id=-1) uses the in-memory searched config for the shape key, searching on first use.
//   cslt_cache_stats returns [plan_hits, plan_misses, searches] since load / the last cslt_clear_cache.
//   cutlass_* is the CUTLASS 2.x sm80 SparseGemm (any sm80+ GPU); cutlass90_* the CUTLASS 3.x sm90 sparse
//   collective (sm_90a builds, compute capability 9.0 only). Their values/meta formats differ and are not
//   interchangeable: cutlass90_compress -> [values [N, K/2], meta uint8 [round_up(N,64), round_up(K,128)/8]].
//   cutlass*_sparse_mm(config, split_k, workspace): config is a row of csrc/cutlass_sparse_configs.h (0 = the
//   prefill tile; the others narrow token tiles with split-K / stream-K for decode); the workspace (uint8, at
//   least cutlass*_workspace_size(n, t, k, config, split_k) bytes) is passed in so the launch allocates nothing.
// Fake (meta) implementations are registered from Python (ria_kernels/ops/sparse_mm.py).
#include <Python.h>
#include <torch/library.h>

#include "ria_ops.h"

// FRAGMENT: the Python side defines ops in the same namespace too (the Triton custom ops of
// ria_kernels/ops/*.py via torch.library.custom_op), so no single block owns it.
TORCH_LIBRARY_FRAGMENT(ria_kernels, m) {
  m.def("cslt_available() -> bool", &ria::cslt::available);
  m.def("cslt_version() -> int", &ria::cslt::version);
  m.def("cslt_compress(Tensor weight) -> Tensor");
  m.def("cslt_search(Tensor x, Tensor compressed, int out_features, Tensor? bias, Tensor? alpha) -> int[]");
  m.def(
      "cslt_mm(Tensor x, Tensor compressed, int out_features, Tensor? bias, Tensor? alpha, int alg_id, "
      "int split_k, int split_k_mode) -> Tensor");
  m.def("cslt_cache_stats() -> int[]", &ria::cslt::cache_stats);
  m.def("cslt_clear_cache() -> ()", &ria::cslt::clear_cache);
  m.def("cutlass_available() -> bool", &ria::cutlass_sp::available);
  m.def("cutlass_compress(Tensor weight) -> Tensor[]");
  m.def(
      "cutlass_sparse_mm(Tensor x, Tensor values, Tensor meta, Tensor? bias, Tensor? alpha, int config=0, "
      "int split_k=1, Tensor? workspace=None) -> Tensor");
  m.def("cutlass_workspace_size(int n, int t, int k, int config, int split_k) -> int",
        &ria::cutlass_sp::workspace_size);
  m.def("cutlass90_available() -> bool", &ria::cutlass90::available);
  m.def("cutlass90_compress(Tensor weight) -> Tensor[]");
  m.def(
      "cutlass90_sparse_mm(Tensor x, Tensor values, Tensor meta, Tensor? bias, Tensor? alpha, int config=0, "
      "int split_k=1, Tensor? workspace=None) -> Tensor");
  m.def("cutlass90_workspace_size(int n, int t, int k, int config, int split_k) -> int",
        &ria::cutlass90::workspace_size);
}

TORCH_LIBRARY_IMPL(ria_kernels, CUDA, m) {
  m.impl("cslt_compress", &ria::cslt::compress);
  m.impl("cslt_search", &ria::cslt::search);
  m.impl("cslt_mm", &ria::cslt::mm);
  m.impl("cutlass_compress", &ria::cutlass_sp::compress);
  m.impl("cutlass_sparse_mm", &ria::cutlass_sp::sparse_mm);
  m.impl("cutlass90_compress", &ria::cutlass90::compress);
  m.impl("cutlass90_sparse_mm", &ria::cutlass90::sparse_mm);
}

// Module init named after TORCH_EXTENSION_NAME (``_C`` from setup.py, another name from the JIT path).
#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME _C
#endif
#define RIA_STR2(x) #x
#define RIA_STR(x) RIA_STR2(x)
#define RIA_CAT2(a, b) a##b
#define RIA_CAT(a, b) RIA_CAT2(a, b)

static PyModuleDef ria_module_def = {
    PyModuleDef_HEAD_INIT, RIA_STR(TORCH_EXTENSION_NAME),
    "ria_kernels C++/CUDA extension; ops live in torch.ops.ria_kernels", -1, nullptr,
};

PyMODINIT_FUNC RIA_CAT(PyInit_, TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&ria_module_def); }
