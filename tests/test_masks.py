"""Reference metrics and masks against their formulas, on fresh random inputs."""
import pytest
import torch

from ria_kernels import RiaInputError, nm_mask, pruning_score, ria_score, unstructured_mask


def _rand(r, c, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(r, c, generator=g), torch.rand(c, generator=g) + 0.1


@pytest.mark.parametrize("shape", [(1, 8), (7, 12), (33, 64)])
def test_ria_formula(shape):
    w, norm = _rand(*shape, seed=sum(shape))
    a = 0.5
    wd = w.double().abs()
    expect = (wd / wd.sum(0, keepdim=True) + wd / wd.sum(1, keepdim=True)) * norm.double() ** a
    torch.testing.assert_close(ria_score(w, norm, a).double(), expect, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(pruning_score(w, norm, "wanda").double(), wd * norm.double(), rtol=1e-6, atol=0)
    torch.testing.assert_close(pruning_score(w, None, "magnitude"), w.abs())


def test_zero_rows_and_columns_are_finite():
    w, norm = _rand(6, 8, 1)
    w[2] = 0
    w[:, 5] = 0
    s = ria_score(w, norm)
    assert torch.isfinite(s).all() and (s[2] == 0).all() and (s[:, 5] == 0).all()


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (3, 4), (5, 16)])
def test_nm_keeps_exactly_m_minus_n_top(n, m):
    s, _ = _rand(9, m * 5, seed=n * 100 + m)
    mask = nm_mask(s, n, m)
    groups = mask.reshape(9, 5, m)
    assert bool((groups.sum(-1) == m - n).all())
    # every kept score >= every pruned score within its group
    sg = s.reshape(9, 5, m)
    kept_min = torch.where(groups, sg, torch.full_like(sg, float("inf"))).amin(-1)
    pruned_max = torch.where(~groups, sg, torch.full_like(sg, -float("inf"))).amax(-1)
    assert bool((kept_min >= pruned_max).all())


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.77])
@pytest.mark.parametrize("per_output", [False, True])
def test_unstructured_exact_ratio(ratio, per_output):
    s, _ = _rand(13, 40, seed=int(ratio * 100))
    mask = unstructured_mask(s, ratio, per_output)
    if per_output:
        assert bool(((~mask).sum(1) == int(40 * ratio)).all())
    else:
        assert int((~mask).sum()) == int(13 * 40 * ratio)
        if ratio > 0:
            assert s[~mask].max() <= s[mask].min()


def test_bad_inputs():
    s = torch.rand(4, 10)
    with pytest.raises(RiaInputError, match="not divisible by M=4"):
        nm_mask(s, 2, 4)
    with pytest.raises(RiaInputError, match="1 <= N < M"):
        nm_mask(torch.rand(4, 8), 4, 4)
    with pytest.raises(RiaInputError, match=r"in \[0, 1\)"):
        unstructured_mask(s, 1.0)
    with pytest.raises(RiaInputError, match=r"in \[0, 1\)"):
        unstructured_mask(s, -0.1)
    with pytest.raises(RiaInputError, match="act_norm must have shape"):
        ria_score(s, torch.rand(3))
    with pytest.raises(RiaInputError, match="dtype"):
        ria_score(s.int(), torch.rand(10))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("method", ["magnitude", "wanda", "ri", "ria"])
def test_masks_equal_formula_on_fresh_inputs(seed, method):
    """Score by the paper formula in float64, then select by brute force: the N:M mask keeps
    the M-N best of each group; the unstructured mask prunes the k lowest scores."""
    w, norm = _rand(16, 32, seed=1000 + seed)
    wd, nd = w.double().abs(), norm.double()
    formula = {"magnitude": wd, "wanda": wd * nd,
               "ri": wd / wd.sum(0, keepdim=True) + wd / wd.sum(1, keepdim=True),
               "ria": (wd / wd.sum(0, keepdim=True) + wd / wd.sum(1, keepdim=True)) * nd.sqrt()}[method]
    score = pruning_score(w, norm if method in ("wanda", "ria") else None, method, 0.5)
    torch.testing.assert_close(score.double(), formula, rtol=1e-5, atol=1e-8)
    expect_nm = torch.zeros(16, 8, 4, dtype=torch.bool)
    expect_nm.scatter_(-1, formula.reshape(16, 8, 4).topk(2, dim=-1).indices, True)
    assert torch.equal(nm_mask(score, 2, 4), expect_nm.reshape(16, 32))
    k = int(16 * 32 * 0.6)
    thresh = formula.flatten().kthvalue(k).values
    assert torch.equal(unstructured_mask(score, 0.6), formula > thresh)
    k_row = int(32 * 0.25)
    row_thresh = formula.kthvalue(k_row, dim=1, keepdim=True).values
    assert torch.equal(unstructured_mask(score, 0.25, per_output=True), formula > row_thresh)


def test_ties_keep_lower_column_index():
    s = torch.ones(2, 8)
    assert torch.equal(nm_mask(s, 2, 4), torch.tensor([[True, True, False, False] * 2] * 2))
