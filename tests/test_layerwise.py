import pytest
import torch

from ria_kernels import RiaInputError, prune_model
from ria_kernels.layerwise import (atp_sparsities, max_atp_beta, owl_outlier_ratios, owl_sparsities,
                                   search_atp_beta)
from conftest import make_calibration, make_tiny_model


@pytest.mark.parametrize("L,s,beta", [(32, 0.5, 0.01), (4, 0.7, 0.05), (2, 0.3, 0.1)])
def test_atp_mean_and_monotone(L, s, beta):
    rates = atp_sparsities(L, s, beta)
    assert len(rates) == L and sum(rates) / L == pytest.approx(s)
    assert all(b - a == pytest.approx(beta) for a, b in zip(rates, rates[1:]))
    assert all(0 <= r < 1 for r in rates)


def test_atp_illegal_beta():
    bound = max_atp_beta(32, 0.7)
    assert bound == pytest.approx(0.3 / 15.5, rel=1e-6)
    with pytest.raises(RiaInputError, match="beta must be in"):
        atp_sparsities(32, 0.7, bound * 1.01)
    with pytest.raises(RiaInputError, match="beta must be in"):
        atp_sparsities(32, 0.7, -0.001)


@pytest.mark.parametrize("lam", [0.0, 0.05, 0.08])
def test_owl_rates(lam):
    g = torch.Generator().manual_seed(1)
    ratios = torch.rand(12, generator=g).tolist()
    rates = owl_sparsities(ratios, 0.6, lam)
    assert sum(rates) / 12 == pytest.approx(0.6)
    assert all(0.6 - lam - 1e-9 <= r <= 0.6 + lam + 1e-9 for r in rates)
    if lam > 0:  # the layer with the most outliers is pruned least
        assert rates[ratios.index(max(ratios))] == min(rates)
    with pytest.raises(RiaInputError, match="lambda"):
        owl_sparsities(ratios, 0.95, 0.1)


def test_owl_ratios_and_atp_search_on_tiny_model():
    model = make_tiny_model("llama", layers=3)
    calib = make_calibration(8, 16)
    ratios = owl_outlier_ratios(model, calib, m=3.0)
    assert len(ratios) == 3 and all(0 <= r <= 1 for r in ratios)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    beta, table = search_atp_beta(model, calib, method="wanda", sparsity=0.5, betas=[0.0, 0.05, 0.1])
    assert beta in (0.0, 0.05, 0.1) and len(table) == 3
    assert min(r["calib_ppl"] for r in table) == next(r["calib_ppl"] for r in table if r["beta"] == beta)
    for k, v in model.state_dict().items():  # the search works on copies
        assert torch.equal(v, before[k])
    report = prune_model(model, calib, method="wanda", sparsity=0.5,
                         layer_sparsities=atp_sparsities(3, 0.5, beta), progress=False)
    assert [round(layer.target_sparsity, 6) for layer in report.layers] == \
        [round(x, 6) for x in atp_sparsities(3, 0.5, beta)]
