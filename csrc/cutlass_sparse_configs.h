// The CUTLASS 2:4 sparse GEMM instantiations ("configs") as X-macro tables: the one list the launchers
// (cutlass_sparse_sm80.cu, cutlass_sparse_sm90*.cu) instantiate and dispatch on. ria_kernels/ops/sparse_mm.py
// holds the same table in Python (CUTLASS_CONFIGS, for the dispatch by token bucket); a CPU test
// (tests/ops/test_sparse_mm_configs.py) parses this file and checks that the two agree, so keep one entry
// per line in exactly this form.
//
// GEMM dimensions (both kernels): M = out_features (the 2:4 weight is the sparse A operand [N, K]),
// N = tokens, K = in_features. So "tile_n" below is the token tile: the narrow decode tiles are narrow in N.
//
// sm80 (CUTLASS 2.x cutlass::gemm::device::SparseGemm, mma.sp m16n8k32):
//   X(id, tb_m, tb_n, tb_k, warp_m, warp_n, warp_k, stages, split_k_serial)
//   split_k_serial = 1: SplitKSerial kernel (serial split-K over a semaphore workspace that the caller passes)
//   with an fp32 D (the partial sums of the K slices are added in fp32, not in x's dtype).
//   tb_k is in logical (uncompressed) K; every config keeps tb_k = 64 so that the shape limits
//   (N % 32, K % 64) and the LayoutE metadata are the same for all.
#define RIA_SM80_CONFIGS(X)                 \
  X(0, 128, 128, 64, 64, 64, 64, 3, 0)      \
  X(1, 128, 16, 64, 32, 16, 64, 6, 1)       \
  X(2, 128, 32, 64, 32, 32, 64, 6, 1)       \
  X(3, 128, 64, 64, 64, 32, 64, 4, 1)

// sm90 (CUTLASS 3.x warp-specialized cooperative kernel, wgmma.sp, OpClassSparseTensorOp):
//   X(id, tile_m, tile_n, tile_k, stream_k)
//   stream_k = 1: cutlass::gemm::StreamKScheduler (stream-K or, with split_k > 1, split-K decomposition; its
//   workspace is passed by the caller), else the default persistent data-parallel scheduler.
//   tile_k = 128 for all: the metadata layout (Sm90GemmSparseConfig's MinTileShapeK = min(tile_k, 128)) must
//   stay the one sparse24_layout.compact_to_sm90_meta writes; tile_m = 128: the cooperative schedule's minimum.
#define RIA_SM90_CONFIGS(X)        \
  X(0, 128, 128, 128, 0)           \
  X(1, 128, 16, 128, 1)            \
  X(2, 128, 32, 128, 1)            \
  X(3, 128, 64, 128, 1)
