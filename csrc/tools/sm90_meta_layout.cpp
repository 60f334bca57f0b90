// Host-only program: where CUTLASS's sm90 2:4 sparse GEMM reads the metadata of every group of 4 inputs,
// evaluated with CUTLASS's own CuTe layouts (no GPU, no nvcc: the system g++ and the nvidia-cutlass headers,
// plus the CUDA toolkit's CCCL / cuda_runtime_api.h headers that CuTe includes).
//
// The SparseConfig is derived exactly as cutlass/gemm/collective/builders/sm90_sparse_gmma_builder.inl does
// for the kernel in csrc/cutlass_sparse_sm90_kernel.cuh (K-major A and B, fp32 accumulation, TileShape
// 128x128x128, the cooperative schedule's 2x1x1 atom layout): TiledMma from GMMA::ss_op_selector_sparse, its
// ValTypeA / ValTypeE, MinTileShapeK = min(tile K, 128). Then Sm90GemmSparseConfig::fill_layoutE of the
// problem (M = out_features, K = in_features) maps each (row, logical K column) to an offset in logical
// columns (8 per byte, 4 per 4-bit code). The program checks that fill_layoutA (the compressed values) is
// plain row-major [M, K/2], that each group's 4 columns are contiguous and nibble-aligned, that a
// recast<uint8_t> tensor over that layout (what CUTLASS's compressor writes through) puts each byte where
// offset / 8 says, that fp16 and bf16 give the same layout, and prints
//
//   sm90_meta_layout cutlass <major>.<minor>.<patch> align_m <TensorEAlignmentM> align_k <TensorEAlignmentK> k_per_byte <ElementEMmaSparsity>
//   atom <TensorEAtom as cute::print writes it>
//   shape <M> <K> <M_pad> <K_pad>
//   <M_pad lines, row r: the nibble index (offset / 4) of group g = 0 .. K_pad/4 - 1 of row r>
//   end
//
// per shape given on the command line as "M K" pairs. Exit status: 0 ok, 2 usage, 3 a check failed.
// tests/ops/test_sparse24_layout.py compiles it (cached) and compares with sparse24_layout.compact_to_sm90_meta.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <cute/tensor.hpp>
#include <cute/arch/mma_sm90.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cute/atom/mma_traits_sm90_gmma_sparse.hpp>
#include <cutlass/version.h>
#include <cutlass/bfloat16.h>
#include <cutlass/half.h>
#include <cutlass/gemm/collective/builders/sm90_sparse_config.inl>

using namespace cute;

template <class Element>
struct KernelSparseConfig {  // sm90_sparse_gmma_builder.inl, KernelTmaWarpSpecializedCooperative
  using TileShape = Shape<_128, _128, _128>;
  using AtomLayoutMNK = Layout<Shape<_2, _1, _1>>;
  using TiledMma = decltype(make_tiled_mma(
      GMMA::ss_op_selector_sparse<Element, Element, float, TileShape, GMMA::Major::K, GMMA::Major::K>(),
      AtomLayoutMNK{}));
  using type = cutlass::Sm90GemmSparseConfig<typename TiledMma::ValTypeA, GMMA::Major::K, typename TiledMma::ValTypeE,
                                             decltype(cute::min(size<2>(TileShape{}), _128{}))>;
};
using CfgF16 = KernelSparseConfig<cutlass::half_t>::type;
using CfgBF16 = KernelSparseConfig<cutlass::bfloat16_t>::type;

static int fail(const char* what, int m, int k, long a, long b) {
  std::fprintf(stderr, "sm90_meta_layout: check failed: %s at (row %d, column %d): %ld vs %ld\n", what, m, k, a, b);
  return 3;
}

static int emit(int M, int K) {
  const auto problem = make_tuple(M, 1, K, 1);
  const auto layout = CfgF16::fill_layoutE(problem);
  const auto layout_bf16 = CfgBF16::fill_layoutE(problem);
  const int align_m = typename CfgF16::TensorEAlignmentM{}, align_k = typename CfgF16::TensorEAlignmentK{};
  const int per_byte = typename CfgF16::ElementEMmaSparsity{};
  const int m_pad = (M + align_m - 1) / align_m * align_m, k_pad = (K + align_k - 1) / align_k * align_k;
  const long cosize_bytes = long(cute::cosize(layout)) / per_byte;
  const long want_bytes = long(m_pad) * k_pad / per_byte;
  if (cosize_bytes != want_bytes) return fail("buffer size", m_pad, k_pad, cosize_bytes, want_bytes);

  // The compressor's view: a uint8 tensor over the sparse-element layout (sm90_sparse_gemm_compressor.hpp).
  std::vector<uint8_t> buf(cosize_bytes + 16);
  auto gE_sparse = make_tensor(make_gmem_ptr(recast_ptr<typename CfgF16::ElementEMma>(buf.data())), layout);
  auto gE = recast<typename CfgF16::ElementEMmaRaw>(gE_sparse);

  // The compressed A (values): fill_layoutA for K-major A, in logical columns (2 per kept value). Row-major
  // [M, K/2] means logical column k of row m at m*K + k, i.e. kept value (k/2) of row m at m*K/2 + k/2.
  const auto layout_a = CfgF16::fill_layoutA(problem);
  for (int m = 0; m < M; ++m)
    for (int k = 0; k < K; ++k)
      if (long(layout_a(m, k, 0)) != long(m) * K + k)
        return fail("values row-major [M, K/2]", m, k, layout_a(m, k, 0), long(m) * K + k);

  std::printf("shape %d %d %d %d\n", M, K, m_pad, k_pad);
  std::vector<long> row(k_pad / 4);
  for (int m = 0; m < m_pad; ++m) {
    for (int g = 0; g < k_pad / 4; ++g) {
      const long off = layout(m, 4 * g, 0);
      if (off % 4) return fail("nibble alignment", m, 4 * g, off, 0);
      for (int i = 0; i < 4; ++i) {
        const long o = layout(m, 4 * g + i, 0);
        if (o != off + i) return fail("contiguous group", m, 4 * g + i, o, off + i);
        const long o_bf16 = layout_bf16(m, 4 * g + i, 0);
        if (o_bf16 != o) return fail("bf16 == fp16", m, 4 * g + i, o_bf16, o);
      }
      if (g % 2 == 0) {
        const long byte = long(&gE(m, g / 2, 0) - buf.data());
        if (byte != off / per_byte) return fail("recast<uint8_t> byte", m, 4 * g, byte, off / per_byte);
      }
      row[g] = off / 4;
    }
    for (int g = 0; g < k_pad / 4; ++g) std::printf(g ? " %ld" : "%ld", row[g]);
    std::printf("\n");
  }
  std::printf("end\n");
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 3 || (argc - 1) % 2) {
    std::fprintf(stderr, "usage: %s M K [M K ...]\n", argv[0]);
    return 2;
  }
  std::printf("sm90_meta_layout cutlass %d.%d.%d align_m %d align_k %d k_per_byte %d\n", CUTLASS_MAJOR, CUTLASS_MINOR,
              CUTLASS_PATCH, int(typename CfgF16::TensorEAlignmentM{}), int(typename CfgF16::TensorEAlignmentK{}),
              int(typename CfgF16::ElementEMmaSparsity{}));
  std::printf("atom ");  // informational: cute::print writes to stdout
  print(typename CfgF16::TensorEAtom{});
  std::printf("\n");
  for (int i = 1; i + 1 < argc; i += 2) {
    const int M = std::atoi(argv[i]), K = std::atoi(argv[i + 1]);
    if (M <= 0 || K <= 0 || K % 16) {
      std::fprintf(stderr, "sm90_meta_layout: bad shape %s x %s (M > 0, K > 0, K %% 16 == 0)\n", argv[i], argv[i + 1]);
      return 2;
    }
    if (int rc = emit(M, K)) return rc;
  }
  return 0;
}
