import pytest
import torch

from ria_kernels import RiaInputError
from ria_kernels.ops.nm_mask import nm_mask_reference, unstructured_mask_reference
from ria_kernels.ops.ria_score import pruning_score_reference
from ria_kernels.refit import damped_hessian, ls_refit, ls_refit_reference, masked_pcg, output_error
from ria_kernels.sparsegpt import sparsegpt_prune
from conftest import make_layer_problem


def _layer40(seed=0):
    return make_layer_problem(seed, out=40)


def _mask(W, X, sparsity, method="ria"):
    s = pruning_score_reference(W, X.norm(dim=0), method)
    return nm_mask_reference(s, 2, 4) if sparsity == "2:4" else unstructured_mask_reference(s, sparsity)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("sparsity", ["2:4", 0.5, 0.7])
def test_pcg_equals_exact_least_squares_float64(seed, sparsity):
    W, X, H = _layer40(seed)
    mask = _mask(W, X, sparsity)
    ref = ls_refit_reference(W, H, mask)
    Hd = damped_hessian(H.double())
    got, info = masked_pcg(W.double(), Hd, mask, maxiter=500, rtol=1e-12)
    assert info.converged and info.iterations < 500
    assert bool((got[~mask] == 0).all())
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-8 * float(ref.abs().max()))


@pytest.mark.parametrize("sparsity", ["2:4", 0.5])
def test_ls_refit_float32_default_iterations_near_exact(sparsity):
    W, X, H = _layer40(1)
    mask = _mask(W, X, sparsity)
    ref = ls_refit_reference(W, H, mask)
    got, info = ls_refit(W, H, mask, maxiter=60)
    assert got.dtype == torch.float32 and bool((got[~mask] == 0).all())
    # float32 on a unit-diagonal problem: relative error of the solution ~1e-4
    assert float((got.double() - ref).norm() / ref.norm()) < 1e-3
    # the default 20 iterations already give (almost) the optimal output error (the optimum
    # is that of the DAMPED objective, so the undamped error may be a hair below it)
    e_ref = output_error(ref, W, H)
    e20 = output_error(ls_refit(W, H, mask)[0], W, H)
    assert e_ref * 0.999 <= e20 <= e_ref * 1.02


@pytest.mark.parametrize("sparsity", ["2:4", 0.5, 0.7])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "ria"])
def test_ls_refit_never_worse_than_obs_on_the_same_mask(sparsity, method):
    for seed in range(3):
        W, X, H = _layer40(seed)
        mask = _mask(W, X, sparsity, method)
        obs, _ = sparsegpt_prune(W, H, sparsity, mask=mask)
        ls, _ = ls_refit(W, H, mask)
        e_obs, e_ls, e_masked = output_error(obs, W, H), output_error(ls, W, H), output_error(W * mask, W, H)
        assert e_ls <= e_obs * (1 + 1e-4) and e_ls < e_masked


def test_dead_inputs_and_empty_rows():
    W, X, H = _layer40(2)
    X[:, :4] = 0
    H = X.T @ X
    mask = _mask(W, X, 0.5)
    mask[0] = False  # a row with nothing kept stays zero, no NaN
    got, info = ls_refit(W, H, mask)
    assert torch.isfinite(got).all() and bool((got[0] == 0).all())
    torch.testing.assert_close(got.double(), ls_refit_reference(W, H, mask), rtol=1e-3, atol=1e-3)


def test_output_error_definition():
    W, X, H = _layer40(3)
    Wp = W * _mask(W, X, 0.5)
    expect = float(((X @ (Wp - W).T) ** 2).sum() / ((X @ W.T) ** 2).sum())
    assert output_error(Wp, W, H) == pytest.approx(expect, rel=1e-4)


def test_bad_inputs():
    W, X, H = _layer40()
    mask = _mask(W, X, 0.5)
    with pytest.raises(RiaInputError, match="hessian must have shape"):
        ls_refit(W, H[:8, :8], mask)
    with pytest.raises(RiaInputError, match="mask must have the weight's shape"):
        ls_refit(W, H, mask[:4])
    with pytest.raises(RiaInputError, match="bool tensor"):
        ls_refit(W, H, mask.float())
    with pytest.raises(RiaInputError, match="percdamp"):
        ls_refit(W, H, mask, percdamp=0)
    with pytest.raises(RiaInputError, match="maxiter"):
        masked_pcg(W, damped_hessian(H), mask, maxiter=-1)
    with pytest.raises(RiaInputError, match="rtol"):
        masked_pcg(W, damped_hessian(H), mask, rtol=0)
