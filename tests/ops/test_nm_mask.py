import pytest
import torch

from ria_kernels import RiaInputError
from ria_kernels.ops.nm_mask import (kth_smallest, nm_mask, nm_mask_reference, nm_topk_blocks,
                                     nm_topk_blocks_reference, threshold_mask, unstructured_mask,
                                     unstructured_mask_reference)
from ._util import DEVICE, DTYPES, TOL, huge_row_view, needs_triton, nm_topk_guarded, rand

# M = 2..16 incl. non-powers of two (3, 6, 12: padded lanes), and 32 (the max we test)
NM = [(2, 4), (1, 4), (3, 4), (4, 8), (2, 8), (5, 16), (1, 2), (1, 3), (2, 6), (6, 12), (16, 32)]


@needs_triton
@pytest.mark.parametrize("rows,k", [(1, 3), (7, 1), (7, 5), (128, 2)])
@pytest.mark.parametrize("n,m", NM)
def test_nm_topk_kernel_exact(rows, n, m, k):
    s = rand(rows, m * k, seed=rows * 31 + m * 7 + k)
    s[0, :m] = 0.5  # a fully tied group: lower column index must win
    s[rows // 2] = 0  # an all-zero row (every group fully tied)
    mask, sums, ref_sums = nm_topk_guarded(s, n, m)
    assert bool((mask.reshape(rows, k, m).sum(-1) == m - n).all())
    assert bool(mask[0, : m - n].all()) and not bool(mask[0, m - n:m].any())
    rtol, atol = TOL["block_sum"][torch.float32]
    torch.testing.assert_close(sums, ref_sums, rtol=rtol, atol=atol)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,n,m", [((7, 24), 2, 4), ((128, 48), 4, 8), ((1, 32), 5, 16)])
def test_nm_topk_dtypes(dtype, shape, n, m):
    s = rand(*shape, dtype=dtype, seed=shape[1] + m)
    mask, sums = nm_topk_blocks(s, n, m, backend="triton")
    ref_mask, ref_sums = nm_topk_blocks_reference(s, n, m)
    assert torch.equal(mask, ref_mask)
    rtol, atol = TOL["block_sum"][dtype]
    torch.testing.assert_close(sums, ref_sums, rtol=rtol, atol=atol)
    assert torch.equal(nm_mask(s, n, m, backend="triton"), nm_mask_reference(s, n, m))


@needs_triton
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (3, 6)])
def test_ties_deterministic(n, m):
    # integer scores in {0, 1, 2}: most groups have ties; the stable-sort reference decides
    g = torch.Generator().manual_seed(m)
    s = torch.randint(0, 3, (7, 4 * m), generator=g).float().to(DEVICE)
    assert torch.equal(nm_mask(s, n, m, backend="triton"), nm_mask_reference(s, n, m))
    assert torch.equal(nm_mask(s, n, m, backend="triton"), nm_mask(s, n, m, backend="triton"))


@needs_triton
def test_negative_and_infinite_scores():
    s = rand(7, 16, seed=11) - 3.0
    s[1, 2] = float("-inf")
    s[2, :4] = float("-inf")  # a group of all -inf: ties again, lower index kept
    s[3, 5] = float("inf")
    mask, sums = nm_topk_blocks(s, 2, 4, backend="triton")
    ref_mask, ref_sums = nm_topk_blocks_reference(s, 2, 4)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(sums, ref_sums, rtol=1e-6, atol=1e-6)


@needs_triton
@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("per_output", [False, True])
@pytest.mark.parametrize("shape", [(1, 40), (7, 40), (128, 12)])
def test_unstructured_selection_exact(ratio, per_output, shape):
    s = rand(*shape, seed=int(ratio * 10) + shape[0])
    s[shape[0] // 2, :10] = 0.125  # ties across the threshold
    s[-1] = 0  # an all-zero row
    assert torch.equal(unstructured_mask(s, ratio, per_output, backend="triton"),
                       unstructured_mask_reference(s, ratio, per_output))


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
def test_unstructured_integer_ties(dtype):
    g = torch.Generator().manual_seed(3)
    s = torch.randint(-2, 3, (9, 20), generator=g).to(dtype).to(DEVICE)
    for per_output in (False, True):
        assert torch.equal(unstructured_mask(s, 0.45, per_output, backend="triton"),
                           unstructured_mask_reference(s, 0.45, per_output))


def test_threshold_mask_ties_lower_index_pruned_first():
    s = torch.tensor([[1.0, 1.0, 1.0, 0.0, 2.0]])
    # prune 3: the 0.0, then the two lowest-index 1.0s
    assert threshold_mask(s, 3, 1).tolist() == [[False, False, True, False, True]]
    assert threshold_mask(s, 3, None).tolist() == [[False, False, True, False, True]]


@pytest.mark.parametrize("seed", range(6))
def test_kth_smallest_radix_select(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(997 + 131 * seed, generator=g) * 10 ** (seed - 3)
    if seed % 2:
        x = x.round()  # many exact ties
    x[::11] = -0.0
    x[::13] = float("inf")
    x[::17] = float("-inf")
    x = x.to(DEVICE)
    for k in (1, 2, 100, x.numel() // 2, x.numel() - 1, x.numel()):
        assert float(kth_smallest(x, k)) == float(torch.kthvalue(x.cpu(), k).values)


@needs_triton
def test_column_strided_score_rejected_on_triton():
    with pytest.raises(RiaInputError, match="stride"):
        nm_mask(rand(16, 8).t(), 2, 4, backend="triton")
    with pytest.raises(RiaInputError, match="stride"):
        nm_topk_blocks(rand(16, 8).t(), 2, 4, backend="triton")
    # the torch reference accepts any layout
    s = rand(16, 8).t()
    assert torch.equal(nm_mask(s, 2, 4, backend="torch"), nm_mask_reference(s.contiguous(), 2, 4))


def test_bad_inputs():
    s = rand(4, 10)
    with pytest.raises(RiaInputError, match="not divisible"):
        nm_topk_blocks(s, 2, 4)
    with pytest.raises(RiaInputError, match="N < M"):
        nm_mask(rand(4, 8), 5, 4)
    with pytest.raises(RiaInputError, match="M must be"):
        nm_mask(rand(4, 8), 1, 1)
    with pytest.raises(RiaInputError, match="dtype"):
        nm_mask(rand(4, 8).to(torch.int32), 2, 4)
    with pytest.raises(RiaInputError, match="2-D"):
        nm_topk_blocks(rand(8), 2, 4)
    with pytest.raises(RiaInputError, match=r"\[0, 1\)"):
        unstructured_mask(rand(4, 8), 1.0)
    with pytest.raises(RiaInputError, match="backend must be one of"):
        nm_topk_blocks(rand(4, 8), 2, 4, backend="cuda")


# ---- custom op: ria_kernels::nm_topk_blocks
@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_custom_op_opcheck_and_compile(backend):
    s = rand(7, 16, seed=2)
    torch.library.opcheck(torch.ops.ria_kernels.nm_topk_blocks.default, (s, 2, 4, backend))
    fn = torch.compile(lambda t: nm_topk_blocks(t, 2, 4, backend=backend), fullgraph=True, backend="aot_eager")
    mask, sums = fn(s)
    ref_mask, ref_sums = nm_topk_blocks_reference(s, 2, 4)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(sums, ref_sums, rtol=1e-6, atol=1e-6)


# ---- NaN / inf / -0.0: one meaning (NaN ranks as -inf), every group keeps exactly M - N
@needs_triton
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (8, 16), (1, 3)])
def test_nan_inf_scores_keep_exactly_m_minus_n(n, m):
    s = rand(7, 4 * m, seed=m + 40)
    s[0, :m] = float("nan")                      # a group of NaN only: lower columns kept
    s[1, 1] = float("nan")                       # one NaN among finite scores: pruned first
    s[2, :m] = float("-inf")
    s[2, 0] = float("nan")                       # NaN ties with -inf: the lower column index wins
    s[3, m:2 * m] = float("inf")                 # all +inf: ties
    s[4, 2 * m] = float("nan")
    s[4, 2 * m + 1] = float("inf")
    s[5, :] = torch.where(torch.arange(4 * m) % 2 == 0, -0.0, 0.0)  # -0.0 == +0.0: lower index wins
    mask, sums, ref_sums = nm_topk_guarded(s, n, m)
    assert bool((mask.reshape(7, 4, m).sum(-1) == m - n).all())
    assert bool(mask[0, : m - n].all()) and not bool(mask[0, m - n:m].any())
    assert not bool(mask[1, 1])
    assert bool(mask[2, 0]) == (m - n >= 1)      # lane 0 (NaN) ties -inf and is the lowest index
    assert bool(mask[5].reshape(4, m)[:, : m - n].all())
    torch.testing.assert_close(sums, ref_sums, rtol=1e-6, atol=1e-6)  # -inf where a NaN/-inf is kept


def test_nan_reference_ranks_nan_as_minus_inf():
    s = torch.tensor([[float("nan"), 1.0, float("-inf"), 0.5]])
    assert nm_mask_reference(s, 2, 4).tolist() == [[False, True, False, True]]
    assert nm_mask_reference(torch.tensor([[float("nan"), float("-inf"), 0.0, float("nan")]]), 1, 4).tolist() == \
        [[True, True, True, False]]


@needs_triton
@pytest.mark.parametrize("per_output", [False, True])
def test_unstructured_with_nan_prunes_exactly_k(per_output):
    s = rand(9, 20, seed=5)
    s[1, 3] = float("nan")
    s[4, :5] = float("nan")
    s[6, 7] = float("inf")
    got = unstructured_mask(s, 0.4, per_output, backend="triton")
    assert torch.equal(got, unstructured_mask_reference(s, 0.4, per_output))
    assert not bool(got[1, 3]) and not bool(got[4, :5].any())  # NaN ranks lowest: pruned first
    if per_output:
        assert bool(((~got).sum(1) == 8).all())
    else:
        assert int((~got).sum()) == int(9 * 20 * 0.4)


@needs_triton
@pytest.mark.parametrize("shape,n,m", [((1, 12), 2, 4), ((1, 9), 1, 3), ((3, 15), 2, 5), ((1, 16), 8, 16)])
def test_single_row_and_odd_widths(shape, n, m):
    s = rand(*shape, seed=shape[1])
    mask, sums = nm_topk_blocks(s, n, m, backend="triton")
    ref_mask, ref_sums = nm_topk_blocks_reference(s, n, m)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(sums, ref_sums, rtol=1e-6, atol=1e-6)


# ---- issue 20 regressions
@needs_triton
@pytest.mark.parametrize("r,n,m,groups", [(1, 1, 9, 17), (3, 2, 6, 45), (2, 4, 12, 22), (1, 1, 3, 86), (5, 2, 4, 65)])
def test_nm_grid_covers_every_group(r, n, m, groups):
    """M not a power of two and G * MP > 256 (1x153 at 1:9): the grid must count groups
    (BLOCK_W // MP per program), not BLOCK_W columns, or the last groups are never written."""
    s = rand(r, m * groups, seed=m * groups)
    mask, sums, ref_sums = nm_topk_guarded(s, n, m)
    torch.testing.assert_close(sums, ref_sums, rtol=1e-6, atol=1e-6)


@needs_triton
@pytest.mark.parametrize("row,n,m,keep", [([float("nan"), float("nan"), 1.0], 1, 3, [True, False, True]),
                                          ([float("nan")] * 3, 1, 3, [True, True, False]),
                                          ([float("nan"), 1.0, float("nan"), float("nan"), float("-inf"), 2.0], 3, 6,
                                           [True, True, False, False, False, True]),
                                          ([float("nan")] * 5, 3, 5, [True, True, False, False, False])])
def test_nan_with_padding_lanes(row, n, m, keep):
    """NaN ranks as -inf and so do the padding lanes of a non-power-of-two M: the real lanes
    (lower index) must win the tie, so a group still keeps exactly M - N real columns."""
    s = torch.tensor([row], device=DEVICE)
    want = torch.tensor([keep], device=DEVICE)
    assert torch.equal(nm_mask_reference(s, n, m), want)
    mask, sums = nm_topk_blocks(s, n, m, backend="triton")
    assert torch.equal(mask, want)
    torch.testing.assert_close(sums, nm_topk_blocks_reference(s, n, m)[1], equal_nan=True)
    assert torch.equal(nm_mask(s, n, m, backend="triton"), want)


@needs_triton
@pytest.mark.parametrize("n,m", [(2, 4), (1, 3), (4, 8)])
def test_row_strided_score_view(n, m):
    """Scores as a column slice of a wider matrix (stride(0) > shape[1]): rows are addressed
    with the row stride, outputs with the view's own width."""
    big = rand(9, 12 * m + 20, seed=m)
    view = big[:, 5:5 + 12 * m]
    assert view.stride(0) != view.shape[1]
    mask, sums = nm_topk_blocks(view, n, m, backend="triton")
    ref_mask, ref_sums = nm_topk_blocks_reference(view.contiguous(), n, m)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(sums, ref_sums, rtol=1e-6, atol=1e-6)
    assert torch.equal(nm_mask(view, n, m, backend="triton"), nm_mask_reference(view.contiguous(), n, m))


@needs_triton
@pytest.mark.parametrize("n,m", [(2, 4), (1, 3)])
def test_int64_row_offsets(n, m):
    """Row r at r * stride(0) >= 2^31 elements: the N:M kernel's row offsets are int64."""
    view = huge_row_view(12 * m, seed=m)
    mask, sums = nm_topk_blocks(view, n, m, backend="triton")
    ref_mask, ref_sums = nm_topk_blocks_reference(view.contiguous(), n, m)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(sums, ref_sums, rtol=1e-6, atol=1e-6)
