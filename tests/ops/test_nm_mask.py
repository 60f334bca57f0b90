import pytest
import torch

from ria_kernels import RiaInputError
from ria_kernels.ops.nm_mask import (_nm_topk_triton, nm_mask, nm_topk_blocks, nm_topk_blocks_reference,
                                     threshold_mask, unstructured_mask, unstructured_mask_reference)
from ._util import needs_triton, rand

NM = [(2, 4), (1, 4), (3, 4), (4, 8), (2, 8), (5, 16)]


@needs_triton
@pytest.mark.parametrize("rows,k", [(1, 3), (7, 1), (7, 5), (128, 2)])
@pytest.mark.parametrize("n,m", NM)
def test_nm_topk_kernel_exact(rows, n, m, k):
    s = rand(rows, m * k, seed=rows * 31 + m * 7 + k)
    s[0, :m] = 0.5  # a fully tied group: lower column index must win
    mask, sums = _nm_topk_triton(s, n, m)
    ref_mask, ref_sums = nm_topk_blocks_reference(s, n, m)
    assert torch.equal(mask, ref_mask)
    assert bool((mask.reshape(rows, k, m).sum(-1) == m - n).all())
    assert bool(mask[0, : m - n].all()) and not bool(mask[0, m - n:m].any())
    torch.testing.assert_close(sums, ref_sums, rtol=1e-6, atol=1e-6)


@needs_triton
def test_nm_topk_zero_and_half_scores():
    s = torch.zeros(3, 16, device=rand(1).device)
    mask, sums = nm_topk_blocks(s, 2, 4, backend="triton")
    assert torch.equal(mask, nm_topk_blocks_reference(s, 2, 4)[0]) and bool((sums == 0).all())
    h = rand(5, 32, dtype=torch.float16, seed=9)
    assert torch.equal(nm_mask(h, 2, 4, backend="triton"), nm_mask(h.float(), 2, 4, backend="torch"))


@needs_triton
@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("per_output", [False, True])
def test_unstructured_selection_exact(ratio, per_output):
    s = rand(7, 40, seed=int(ratio * 10))
    s[2, :10] = 0.125  # ties across the threshold
    assert torch.equal(unstructured_mask(s, ratio, per_output, backend="triton"),
                       unstructured_mask_reference(s, ratio, per_output))


def test_threshold_mask_ties_lower_index_pruned_first():
    s = torch.tensor([[1.0, 1.0, 1.0, 0.0, 2.0]])
    # prune 3: the 0.0, then the two lowest-index 1.0s
    assert threshold_mask(s, 3, 1).tolist() == [[False, False, True, False, True]]


def test_bad_inputs():
    s = rand(4, 10)
    with pytest.raises(RiaInputError, match="not divisible"):
        nm_topk_blocks(s, 2, 4)
    with pytest.raises(RiaInputError, match="N < M"):
        nm_mask(rand(4, 8), 5, 4)
    with pytest.raises(RiaInputError, match="M must be"):
        nm_mask(rand(4, 8), 1, 1)
