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
