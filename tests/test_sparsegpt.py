import pytest
import torch

from ria_kernels import RiaInputError, prune_model
from ria_kernels.ops.nm_mask import nm_mask_reference, unstructured_mask_reference
from ria_kernels.ops.ria_score import pruning_score_reference
from ria_kernels.sparsegpt import sparsegpt_prune
from conftest import make_calibration, make_layer_problem, make_tiny_model


def _err(W, Wh, X):
    return float(torch.linalg.norm(X @ W.T - X @ Wh.T))


@pytest.mark.parametrize("sparsity", [0.5, "2:4"])
def test_sparsegpt_beats_magnitude_and_wanda(sparsity):
    W, X, H = make_layer_problem()
    new_w, keep = sparsegpt_prune(W, H, sparsity)
    e_sgpt = _err(W, new_w, X)
    for method in ("magnitude", "wanda"):
        s = pruning_score_reference(W, X.norm(dim=0), method)
        mask = nm_mask_reference(s, 2, 4) if sparsity == "2:4" else unstructured_mask_reference(s, 0.5, True)
        assert e_sgpt < _err(W, W * mask, X), method
    assert float((new_w == 0).float().mean()) >= 0.5
    if sparsity == "2:4":
        assert bool((keep.reshape(48, -1, 4).sum(-1) == 2).all())
        assert bool(((new_w != 0).reshape(48, -1, 4).sum(-1) <= 2).all())


@pytest.mark.parametrize("sparsity", ["2:4", 0.5, 0.7])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "ria"])
def test_reconstruction_with_fixed_mask_never_worse(sparsity, method):
    for seed in range(3):
        W, X, H = make_layer_problem(seed)
        score = pruning_score_reference(W, X.norm(dim=0), method)
        mask = nm_mask_reference(score, 2, 4) if sparsity == "2:4" else unstructured_mask_reference(score, sparsity)
        rec, keep = sparsegpt_prune(W, H, sparsity, mask=mask)
        assert torch.equal(keep, mask)
        assert bool((rec[~mask] == 0).all())
        assert _err(W, rec, X) <= _err(W, W * mask, X)


def test_bad_inputs():
    W, _, H = make_layer_problem()
    with pytest.raises(RiaInputError, match="hessian must have shape"):
        sparsegpt_prune(W, H[:10, :10], 0.5)
    with pytest.raises(RiaInputError, match="not divisible by M=3"):
        sparsegpt_prune(W[:, :62], H[:62, :62], "1:3")
    with pytest.raises(RiaInputError, match="percdamp"):
        sparsegpt_prune(W, H, 0.5, percdamp=0)


@pytest.mark.parametrize("kwargs", [dict(method="sparsegpt", sparsity=0.5), dict(method="sparsegpt", sparsity="2:4"),
                                    dict(method="ria", sparsity="2:4", reconstruction=True)])
def test_pipeline_end_to_end(kwargs):
    model = make_tiny_model("llama")
    report = prune_model(model, make_calibration(8, 32), progress=False, **kwargs)
    assert report.actual_sparsity == pytest.approx(0.5, abs=0.01)
    w = model.model.layers[1].mlp.down_proj.weight
    if kwargs["sparsity"] == "2:4":
        assert bool(((w != 0).reshape(w.shape[0], -1, 4).sum(-1) <= 2).all())


@pytest.mark.parametrize("sparsity", ["2:4", 0.5])
def test_permuted_with_identity_equals_unpermuted(sparsity):
    W, _, H = make_layer_problem(1)
    plain = sparsegpt_prune(W, H, sparsity)
    ident = sparsegpt_prune(W, H, sparsity, perm=torch.arange(W.shape[1]))
    assert torch.equal(plain[1], ident[1])
    torch.testing.assert_close(plain[0], ident[0], rtol=0, atol=0)


def test_permuted_pattern_holds_on_permuted_columns():
    W, X, H = make_layer_problem(2)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    new_w, keep = sparsegpt_prune(W, H, "2:4", perm=perm)
    assert bool((keep[:, perm].reshape(48, -1, 4).sum(-1) == 2).all())
    assert bool(((new_w[:, perm] != 0).reshape(48, -1, 4).sum(-1) <= 2).all())
    assert bool((new_w[~keep] == 0).all())
    # same as running SparseGPT by hand on the permuted problem
    ref_w, ref_keep = sparsegpt_prune(W[:, perm], H[perm][:, perm], "2:4")
    assert torch.equal(keep[:, perm], ref_keep)
    torch.testing.assert_close(new_w[:, perm], ref_w, rtol=0, atol=0)
    with pytest.raises(RiaInputError, match="perm must be a permutation"):
        sparsegpt_prune(W, H, "2:4", perm=torch.zeros(64, dtype=torch.long))


def test_pipeline_sparsegpt_cp_stores_permutations():
    model = make_tiny_model("llama")
    report = prune_model(model, make_calibration(8, 32), method="sparsegpt", sparsity="2:4", permute=True,
                         progress=False)
    assert report.permute and report.permutations and report.actual_sparsity == pytest.approx(0.5)
    w = model.model.layers[1].mlp.down_proj.weight
    perm = report.permutations["model.layers.1.mlp.down_proj"]
    assert bool(((w[:, perm] != 0).reshape(w.shape[0], -1, 4).sum(-1) <= 2).all())
    assert report.layers[0].linears["mlp.down_proj"].output_error is not None
