import pytest
import torch

from ria_kernels import RiaInputError, prune_model
from ria_kernels.ops.nm_mask import nm_mask_reference, unstructured_mask_reference
from ria_kernels.ops.ria_score import pruning_score_reference
from ria_kernels.sparsegpt import sparsegpt_prune
from conftest import make_calibration, make_tiny_model


def _layer(seed=0, out=48, inp=64, tokens=512):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(inp, inp, generator=g) / inp ** 0.5 + torch.eye(inp)
    X = torch.randn(tokens, inp, generator=g) @ mix * (torch.rand(inp, generator=g) * 3 + 0.1)  # correlated inputs
    W = torch.randn(out, inp, generator=g)
    return W, X, X.T @ X


def _err(W, Wh, X):
    return float(torch.linalg.norm(X @ W.T - X @ Wh.T))


@pytest.mark.parametrize("sparsity", [0.5, "2:4"])
def test_sparsegpt_beats_magnitude_and_wanda(sparsity):
    W, X, H = _layer()
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
        W, X, H = _layer(seed)
        score = pruning_score_reference(W, X.norm(dim=0), method)
        mask = nm_mask_reference(score, 2, 4) if sparsity == "2:4" else unstructured_mask_reference(score, sparsity)
        rec, keep = sparsegpt_prune(W, H, sparsity, mask=mask)
        assert torch.equal(keep, mask)
        assert bool((rec[~mask] == 0).all())
        assert _err(W, rec, X) <= _err(W, W * mask, X)


def test_bad_inputs():
    W, _, H = _layer()
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
