// Device-agnostic packing of a 2:4 weight for the CUTLASS sm80 SparseGemm (see cutlass_sparse_sm80.cu
// for the layout). Pure ATen ops, no CUDA headers: it runs on the weight's device (once per weight) and
// can be compiled and tested on a CPU-only machine (tests/test_build.py).
//
// values [N, K/2]: per group of 4 consecutive input channels, the 2 kept entries in increasing column order.
// meta   [N, K/16] int16 (uint16 bits): one code per 16 input channels, group g at bits 4g..4g+3, low 2 bits =
//        first kept index, high 2 bits = second kept index; stored in the ColumnMajorInterleaved<2> layout of
//        SparseGemm::LayoutE after the row/2x2 permutation of cutlass::reorder_meta (16-bit metadata).
#include "cutlass_meta.h"

namespace ria {
namespace cutlass_sp {

std::vector<at::Tensor> pack_2to4_sm80(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2, "weight must be 2-D [out_features, in_features], got ", weight.dim(), "-D");
  const int64_t n = weight.size(0), k = weight.size(1);
  TORCH_CHECK(n > 0 && n % 32 == 0, "weight.size(0) (out_features) must be a positive multiple of 32 (metadata "
              "row interleave), got ", n);
  TORCH_CHECK(k > 0 && k % 32 == 0, "weight.size(1) (in_features) must be a positive multiple of 32 (metadata "
              "column pairs), got ", k);
  const auto w = weight.contiguous();
  const auto long_opts = w.options().dtype(at::kLong);

  auto groups = w.view({n, k / 4, 4});
  auto nz = groups.ne(0);
  const int64_t too_dense = nz.sum(-1).gt(2).sum().item<int64_t>();
  TORCH_CHECK(too_dense == 0, "weight is not 2:4 sparse along in_features: ", too_dense,
              " groups of 4 consecutive input weights have more than 2 non-zeros");
  // Pick the 2 kept positions per group: non-zeros first, then the lowest free index; sort ascending.
  auto position = at::arange(4, long_opts);
  auto score = nz.to(at::kLong) * 8 + (3 - position);
  auto idx = std::get<0>(at::sort(std::get<1>(at::topk(score, 2, /*dim=*/-1)), /*dim=*/-1));  // [n, k/4, 2]
  auto values = groups.gather(-1, idx).reshape({n, k / 2}).contiguous();

  // 4-bit code per group, 4 groups per uint16 (group g at bits 4g).
  auto code = idx.select(-1, 0) + idx.select(-1, 1) * 4;                       // [n, k/4], values 0..15
  auto place = at::pow(16, at::arange(4, long_opts)).view({1, 1, 4});         // 1, 16, 256, 4096 = << 4g
  auto meta16 = (code.view({n, k / 16, 4}) * place).sum(-1);                   // [n, k/16], 0..65535
  meta16 = at::where(meta16.ge(32768), meta16 - 65536, meta16).to(at::kShort);  // uint16 bits in int16

  // Reorder into SparseGemm's LayoutE (ColumnMajorInterleaved<2>), following cutlass::reorder_meta for
  // 16-bit metadata: rows permuted within groups of 32 (interleave 4), then 2x2 blocks swizzled Z -> N.
  const int64_t kc = k / 16;
  auto r = at::arange(n, long_opts).view({n, 1}).expand({n, kc});
  auto c = at::arange(kc, long_opts).view({1, kc}).expand({n, kc});
  auto dr = at::floor_divide(r, 32) * 32 + r.remainder(8) * 4 + at::floor_divide(r.remainder(32), 8);
  auto dc = c.clone();
  auto row_even = dr.remainder(2).eq(0), col_odd = dc.remainder(2).eq(1);
  auto down = row_even.logical_and(col_odd);                        // (even, odd) -> (row+1, col-1)
  auto up = row_even.logical_not().logical_and(col_odd.logical_not());  // (odd, even) -> (row-1, col+1)
  dr = dr + down.to(at::kLong) - up.to(at::kLong);
  dc = dc - down.to(at::kLong) + up.to(at::kLong);
  auto offset = at::floor_divide(dc, 2) * (2 * n) + dr * 2 + dc.remainder(2);
  auto meta = at::empty({n * kc}, w.options().dtype(at::kShort));
  meta.scatter_(0, offset.reshape({-1}), meta16.reshape({-1}));
  return {values, meta.view({n, kc})};
}

}  // namespace cutlass_sp
}  // namespace ria
