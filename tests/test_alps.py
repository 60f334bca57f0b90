import copy

import pytest
import torch

from ria_kernels import RiaInputError, get_adapter, prune_model, to_sparse_inference
from ria_kernels.alps import AlpsHessian, alps_prune, prepare_hessian, project
from ria_kernels._validation import parse_sparsity
from ria_kernels.ops.nm_mask import nm_mask_reference
from ria_kernels.ops.ria_score import pruning_score_reference
from ria_kernels.permutation import channel_permutation
from ria_kernels.refit import ls_refit, output_error
from ria_kernels.sparsegpt import sparsegpt_prune
from conftest import make_calibration, make_layer_problem, make_tiny_model


def _nm_ok(w: torch.Tensor, n: int, m: int) -> bool:
    return bool(((w != 0).reshape(w.shape[0], -1, m).sum(-1) <= m - n).all())


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "3:4", "4:8"])
@pytest.mark.parametrize("permuted", [False, True])
def test_alps_holds_the_exact_pattern(pattern, permuted):
    W, X, H = make_layer_problem(1)
    n, m = map(int, pattern.split(":"))
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(3)) if permuted else None
    res = alps_prune(W, H, pattern, perm=perm)
    p = perm if permuted else torch.arange(64)
    keep_p = res.mask[:, p]
    assert bool((keep_p.reshape(48, -1, m).sum(-1) == m - n).all())  # exactly M-N kept per group ...
    assert _nm_ok(res.weight[:, p], n, m)                              # ... on weight[:, perm]
    assert bool((res.weight[~res.mask] == 0).all())
    assert torch.isfinite(res.weight).all() and res.weight.dtype == W.dtype
    assert res.iterations >= 3 and res.cg_iterations >= 1 and res.rho > 0


@pytest.mark.parametrize("ratio", [0.5, 0.7])
@pytest.mark.parametrize("per_output", [False, True])
def test_alps_unstructured_counts(ratio, per_output):
    W, X, H = make_layer_problem(2)
    res = alps_prune(W, H, ratio, per_output=per_output)
    if per_output:
        assert bool((res.mask.sum(1) == 64 - int(64 * ratio)).all())
    else:
        assert int(res.mask.sum()) == W.numel() - int(W.numel() * ratio)
    assert bool((res.weight[~res.mask] == 0).all())


@pytest.mark.parametrize("seed", range(3))
def test_output_error_alps_cp_le_ls_refit_le_obs(seed):
    """The issue's ordering on one layer: ALPS + CP <= RIA + CP + LS refit <= RIA + CP + OBS."""
    W, X, H = make_layer_problem(seed)
    score = pruning_score_reference(W, X.norm(dim=0), "ria")
    perm = channel_permutation(score, 2, 4).perm
    mask = torch.empty_like(score, dtype=torch.bool)
    mask[:, perm] = nm_mask_reference(score[:, perm].contiguous(), 2, 4)
    obs, _ = sparsegpt_prune(W, H, "2:4", mask=mask)
    ls, _ = ls_refit(W, H, mask)
    alps = alps_prune(W, H, "2:4", perm=perm)
    e_obs, e_ls, e_alps = (output_error(x, W, H) for x in (obs, ls, alps.weight))
    assert e_alps <= e_ls <= e_obs, (e_alps, e_ls, e_obs)


def test_shared_hessian_equals_own():
    W, X, H = make_layer_problem(4)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    hs = prepare_hessian(H, perm=perm)
    assert isinstance(hs, AlpsHessian) and torch.allclose(torch.diagonal(hs.hn), torch.ones(64))
    a = alps_prune(W, hs, "2:4")
    b = alps_prune(W, H, "2:4", perm=perm)
    assert torch.equal(a.mask, b.mask)
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)


@pytest.mark.parametrize("pattern,k", [("2:4", 2), ("1:4", 3), ("3:4", 1)])
def test_projection_matches_topk_with_ties(pattern, k):
    spec = parse_sparsity(pattern)
    g = torch.Generator().manual_seed(0)
    for z in (torch.randn(32, 64, generator=g), torch.randint(-2, 3, (32, 64), generator=g).float(),
              torch.zeros(4, 8)):
        keep = project(z, spec).reshape(z.shape[0], -1, 4)
        a = z.abs().reshape(z.shape[0], -1, 4)
        assert bool((keep.sum(-1) == k).all())
        inf = torch.full_like(a, float("inf"))
        assert bool((torch.where(keep, a, inf).amin(-1) >= torch.where(keep, -inf, a).amax(-1)).all())


def test_bad_inputs():
    W, _, H = make_layer_problem()
    with pytest.raises(RiaInputError, match="hessian must have shape"):
        alps_prune(W, H[:8, :8], "2:4")
    with pytest.raises(RiaInputError, match="not divisible by M=3"):
        alps_prune(W[:, :62], H[:62, :62], "1:3")
    with pytest.raises(RiaInputError, match="perm must be a permutation"):
        alps_prune(W, H, "2:4", perm=torch.zeros(64, dtype=torch.long))
    with pytest.raises(RiaInputError, match="needs an N:M"):
        alps_prune(W, H, 0.5, perm=torch.arange(64))
    with pytest.raises(RiaInputError, match="per_output=True is for unstructured"):
        alps_prune(W, H, "2:4", per_output=True)
    with pytest.raises(RiaInputError, match="rho must be in"):
        alps_prune(W, H, "2:4", rho=0)
    with pytest.raises(RiaInputError, match="max_iter"):
        alps_prune(W, H, "2:4", max_iter=0)
    with pytest.raises(RiaInputError, match="perm is taken from the AlpsHessian"):
        alps_prune(W, prepare_hessian(H), "2:4", perm=torch.arange(64))


def test_pipeline_alps_cp_report_and_sparse_inference():
    calib = make_calibration(8, 32)
    dense = make_tiny_model("llama")
    model = copy.deepcopy(dense)
    report = prune_model(model, calib, method="alps", sparsity="2:4", permute=True, progress=False)
    assert report.actual_sparsity == pytest.approx(0.5)
    adapter = get_adapter(model)
    for i, layer in enumerate(adapter.layers()):
        for name, lin in adapter.linears(layer).items():
            perm = report.permutations[adapter.full_name(i, name)]
            assert _nm_ok(lin.weight[:, perm], 2, 4), name
            r = report.layers[i].linears[name]
            assert r.iterations >= 3 and r.cg_iterations >= 1 and r.output_error is not None
            assert 0 <= r.output_error < 1 and r.support_change is not None
    d = report.to_dict()
    assert d["reconstruction_kind"] is None and d["stage_times_s"]["alps_admm"] > 0
    assert d["stage_times_s"]["alps_eig"] > 0 and d["stage_times_s"]["permutation"] > 0
    assert "output_error" in d["layers"][0]["linears"]["self_attn.q_proj"]
    # the permutations are stored as for RIA + CP: the converted model computes the same outputs
    sparse = to_sparse_inference(copy.deepcopy(model), report)
    x = make_calibration(2, 12, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x).logits, model(x).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kwargs", [dict(sparsity="2:4"), dict(sparsity=0.5), dict(sparsity=0.6, per_output=True)])
def test_pipeline_alps_sparsity(kwargs):
    model = make_tiny_model("llama")
    report = prune_model(model, make_calibration(8, 32), method="alps", progress=False, **kwargs)
    ratio = 0.5 if kwargs["sparsity"] == "2:4" else kwargs["sparsity"]
    assert report.actual_sparsity == pytest.approx(ratio, abs=0.01)
    assert report.backend["alps"] == "torch"


@pytest.mark.parametrize("flags", [["--method", "alps", "--permute"], ["--method", "ria", "--reconstruction", "ls"],
                                   ["--method", "sparsegpt", "--permute"]])
def test_cli_report_validates(flags, tmp_path):
    from ria_kernels.cli import build_parser, run
    from ria_kernels.run_report import validate_report
    out = tmp_path / "r.json"
    run(build_parser().parse_args(flags + ["--sparsity-type", "2:4", "--nsamples", "4", "--seqlen", "32",
                                           "--no-eval", "--quiet", "--device", "cpu", "--json", str(out)]))
    import json
    report = json.loads(out.read_text())
    validate_report(report)
    lin = report["pruning"]["layers"][0]["linears"]["self_attn.q_proj"]
    assert lin["output_error"] >= 0
    if "ls" in flags or "alps" in flags:
        assert lin["cg_iterations"] >= 1
    assert report["settings"]["reconstruction"] == ("ls" in flags)
    assert report["settings"]["reconstruction_kind"] == ("ls" if "ls" in flags else None)
    assert report["settings"]["permute"] == ("--permute" in flags) and report["settings"]["percdamp"] == 0.01
    assert set(report["pruning"]["stage_times_s"]) >= {"stats", "refit", "recompute"}
