import json
import os

import pytest
import torch

from ria_kernels import BackendUnavailableError, RiaInputError, get_adapter, prune_model
from ria_kernels.calibration import collect_stats
from ria_kernels.evaluation import perplexity
from ria_kernels.ops.nm_mask import nm_mask, unstructured_mask
from ria_kernels.ops.ria_score import pruning_score
from conftest import FAMILIES, make_calibration, make_tiny_model


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _check_nm(w, n, m):
    zeros = (w == 0).reshape(w.shape[0], -1, m).sum(-1)
    return bool((zeros >= n).all())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method,sparsity", [("ria", "2:4"), ("wanda", 0.5), ("magnitude", "4:8"), ("ri", 0.3)])
def test_pipeline_sparsity_exact(family, method, sparsity):
    model = make_tiny_model(family)
    report = prune_model(model, make_calibration(), method=method, sparsity=sparsity, progress=False)
    adapter = get_adapter(model)
    for i, layer in enumerate(adapter.layers()):
        for name, lin in adapter.linears(layer).items():
            w = lin.weight
            if isinstance(sparsity, str):
                n, m = map(int, sparsity.split(":"))
                assert _check_nm(w, n, m), f"{name}: N:M pattern violated"
                expect = n / m
            else:
                expect = int(w.numel() * sparsity) / w.numel()  # exact count per linear module
                assert int((w == 0).sum()) >= int(w.numel() * sparsity)
            r = report.layers[i].linears[name]
            assert r.sparsity == pytest.approx(expect) and r.total == w.numel() and r.time_s >= 0
    assert report.family == family and report.nsamples == 4 and report.seqlen == 16
    assert report.backend["score"] == "torch" and report.backend["device"] == "cpu"
    d = json.loads(json.dumps(report.to_dict()))
    assert d["method"] == method and len(d["layers"]) == 2
    assert d["actual_sparsity"] == pytest.approx(report.actual_sparsity)
    assert d["layers"][0]["actual_sparsity"] == pytest.approx(report.layers[0].actual_sparsity)


def test_per_output_prunes_each_row_exactly():
    model = make_tiny_model("opt")
    prune_model(model, make_calibration(), method="wanda", sparsity=0.4, per_output=True, progress=False)
    for layer in get_adapter(model).layers():
        for name, lin in get_adapter(model).linears(layer).items():
            per_row = (lin.weight == 0).sum(1)
            assert bool((per_row == int(lin.in_features * 0.4)).all()), name


def _manual_prune(model, calib, method, ratio_of, mask_fn):
    """Independent sequential reference: stats on the pruned-upstream inputs, score, mask, recompute."""
    adapter = get_adapter(model)
    inputs = adapter.capture_layer_inputs(calib)
    hidden = inputs.hidden
    for i, layer in enumerate(adapter.layers()):
        lins = adapter.linears(layer)
        with collect_stats(lins) as st:
            for h, kw in zip(hidden, inputs.kwargs):
                adapter.run_layer(layer, h, kw)
        for n, lin in lins.items():
            lin.weight.data *= mask_fn(pruning_score(lin.weight, st[n].act_norm, method), ratio_of(i))
        hidden = [adapter.run_layer(layer, h, kw) for h, kw in zip(hidden, inputs.kwargs)]


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_sequential_calibration_uses_pruned_outputs(family):
    """Layer 1's masks must come from inputs produced by the *pruned* layer 0 (as in the seeds)."""
    calib = make_calibration(4, 16)
    pruned = make_tiny_model(family)
    prune_model(pruned, calib, method="ria", sparsity=0.5, progress=False)
    ref = make_tiny_model(family)
    _manual_prune(ref, calib, "ria", lambda i: 0.5, unstructured_mask)
    for (k, v), (k2, v2) in zip(pruned.state_dict().items(), ref.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


def test_layer_sparsities_per_layer_exact():
    model = make_tiny_model("llama", layers=3)
    ratios = [0.2, 0.5, 0.7]
    report = prune_model(model, make_calibration(), method="ria", sparsity=0.5, layer_sparsities=ratios,
                         progress=False)
    ref = make_tiny_model("llama", layers=3)
    _manual_prune(ref, make_calibration(), "ria", lambda i: ratios[i], unstructured_mask)
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k
    for lrep, r in zip(report.layers, ratios):
        assert lrep.target_sparsity == r
        for lin in lrep.linears.values():
            assert lin.total - lin.kept == int(lin.total * r)
    assert report.to_dict()["layer_sparsities"] == ratios


def test_batching_and_offload_do_not_change_masks():
    calib = make_calibration(4, 16)
    a, b = make_tiny_model("qwen2"), make_tiny_model("qwen2")
    prune_model(a, calib, method="ria", sparsity="2:4", progress=False)
    b.config.use_cache = True
    b.train()
    prune_model(b, calib, method="ria", sparsity="2:4", batch_size=3, offload=True, progress=False)
    assert b.training and b.config.use_cache is True  # mode and cache flag restored
    for (k, v), v2 in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v == 0, v2 == 0), k


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_permute_records_perm_for_every_linear_and_nm_holds_on_permuted_weight(family):
    model = make_tiny_model(family)
    report = prune_model(model, make_calibration(), method="ria", sparsity="2:4", permute=True, progress=False)
    adapter = get_adapter(model)
    assert len(report.permutations) == 2 * len(adapter.linear_names())
    for i, layer in enumerate(adapter.layers()):
        for g in adapter.groups:
            key = f"{adapter.full_name(i, '')}.{g.name}"
            st = report.permutation_stats[key]
            assert st["retained"]["lsa"] >= st["retained"]["identity"] and st["linears"] == list(g.linears)
            perms = [report.permutations[adapter.full_name(i, n)] for n in g.linears]
            for n, perm in zip(g.linears, perms):
                assert perm.device.type == "cpu" and perm.dtype == torch.long
                assert torch.equal(perm, perms[0])  # one permutation per shared input
                w = layer.get_submodule(n).weight
                assert torch.equal(torch.sort(perm).values, torch.arange(w.shape[1]))
                assert _check_nm(w[:, perm], 2, 4)
                assert float((w == 0).float().mean()) == pytest.approx(0.5)
    json.dumps(report.to_dict())


def test_permute_masks_match_formula():
    """With permutation the masks are N:M masks of the permuted scores, mapped back."""
    from ria_kernels import permutation
    calib = make_calibration()
    model = make_tiny_model("llama")
    adapter = get_adapter(model)
    layer = adapter.layers()[0]
    lins = adapter.linears(layer)
    inputs = adapter.capture_layer_inputs(calib)
    with collect_stats(lins) as st:
        for h, kw in zip(inputs.hidden, inputs.kwargs):
            adapter.run_layer(layer, h, kw)
    names = adapter.groups[0].linears
    scores = {n: pruning_score(lins[n].weight, st[n].act_norm, "ria") for n in names}
    perm = permutation.channel_permutation(torch.cat([scores[n] for n in names]), 2, 4).perm
    expect = {}
    for n in names:
        mask = torch.empty_like(scores[n], dtype=torch.bool)
        mask[:, perm] = nm_mask(scores[n][:, perm], 2, 4)
        expect[n] = lins[n].weight * mask
    report = prune_model(model, calib, method="ria", sparsity="2:4", permute=True, progress=False)
    assert torch.equal(report.permutations["model.layers.0.self_attn.q_proj"], perm)
    for n in names:
        assert torch.equal(lins[n].weight, expect[n]), n


def test_sparsegpt_and_reconstruction_run_and_keep_sparsity():
    calib = make_calibration(8, 16)
    evaluation = make_calibration(1, 128, seed=9)
    sg = make_tiny_model("llama")
    r = prune_model(sg, calib, method="sparsegpt", sparsity="2:4", progress=False)
    assert r.actual_sparsity == pytest.approx(0.5) and "sparsegpt" in r.backend
    for lin in get_adapter(sg).linears(get_adapter(sg).layers()[1]).values():
        assert _check_nm(lin.weight, 2, 4)
    plain, rec = make_tiny_model("llama"), make_tiny_model("llama")
    prune_model(plain, calib, method="ria", sparsity=0.5, progress=False)
    r = prune_model(rec, calib, method="ria", sparsity=0.5, reconstruction=True, progress=False)
    assert r.reconstruction and r.actual_sparsity == pytest.approx(0.5)
    q_plain, q_rec = plain.model.layers[0].self_attn.q_proj.weight, rec.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(q_plain == 0, q_rec == 0)  # same RIA mask on layer 0 ...
    assert not torch.equal(q_plain, q_rec)  # ... but the kept weights were updated
    assert perplexity(rec, evaluation, 32) > 1


@pytest.mark.parametrize("family", FAMILIES)
def test_calibrate_prune_eval_save_reload(family, tmp_path):
    from transformers import AutoModelForCausalLM
    model = make_tiny_model(family)
    evaluation = make_calibration(1, 256, seed=5)
    dense = perplexity(model, evaluation, 32)
    report = prune_model(model, make_calibration(), method="ria", sparsity="2:4", progress=False)
    pruned = perplexity(model, evaluation, 32)
    assert dense > 1 and pruned > 1 and pruned != dense
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert perplexity(again, evaluation, 32) == pytest.approx(pruned, rel=1e-5)
    adapter = get_adapter(again)
    zeros = sum(int((lin.weight == 0).sum()) for layer in adapter.layers() for lin in adapter.linears(layer).values())
    assert zeros >= report.total - report.kept


BAD = [
    (dict(method="foo"), "method must be one of"),
    (dict(method=None), "method must be one of"),
    (dict(sparsity=1.0), r"in \[0, 1\)"),
    (dict(sparsity=-0.2), r"in \[0, 1\)"),
    (dict(sparsity="4:4"), "1 <= N < M"),
    (dict(sparsity="5:3"), "1 <= N < M"),
    (dict(sparsity="2:3"), "not divisible by M=3"),
    (dict(sparsity="3:48"), "in_features=64 is not divisible by M=48"),
    (dict(sparsity="half"), "sparsity must be a ratio"),
    (dict(sparsity=0.5, permute=True), "needs an N:M sparsity"),
    (dict(method="alps", reconstruction="ls"), "method='alps' ends with the least-squares refit"),
    (dict(method="ria", reconstruction="lsq"), "reconstruction must be False, True"),
    (dict(sparsity="2:4", layer_sparsities=[0.5, 0.5]), "needs unstructured"),
    (dict(sparsity=0.5, layer_sparsities=[0.5]), "has 1 entries"),
    (dict(sparsity=0.5, layer_sparsities=0.5), "must be a sequence"),
    (dict(sparsity=0.5, layer_sparsities=[0.5, 1.2]), r"layer_sparsities\[1\]"),
    (dict(a=float("nan")), "finite number"),
    (dict(blocks=0), "blocks must be an integer >= 1"),
    (dict(blocksize=0), "blocksize must be an integer >= 1"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(percdamp=0.0), r"percdamp must be in \(0, 1\)"),
    (dict(backend="cuda"), "backend must be one of"),
    (dict(calibration=torch.rand(2, 8)), "LongTensor"),
    (dict(calibration=torch.full((2, 8), 128)), "vocab_size=128"),
    # the checks ria-prune makes, applied by the API too (issue #13)
    (dict(calibration=torch.zeros(1, 300, dtype=torch.long)),
     "calibration seqlen=300 exceeds the model's max_position_embeddings=256"),
    (dict(sparsity="2:4", per_output=True), "per_output=True is for unstructured"),
    (dict(sparsity="2:4", blocks=2), "blocks=2 splits the LSA step"),
    (dict(sparsity="2:4", permute=True, lsa=False, blocks=2), "blocks=2 splits the LSA step"),
    (dict(sparsity="2:4", permute=True, blocks=9), "blocks=9 is too many LSA communities"),
    (dict(method="sparsegpt", reconstruction=True), "reconstruction=True is what method='sparsegpt'"),
]


@pytest.mark.parametrize("kwargs,msg", BAD)
def test_bad_input_leaves_model_untouched(kwargs, msg):
    model = make_tiny_model("llama")
    before = _weights(model)
    calib = kwargs.pop("calibration", make_calibration())
    with pytest.raises(RiaInputError, match=msg):
        prune_model(model, calib, progress=False, **kwargs)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_forced_triton_on_cpu_without_interpreter_fails_before_touching(monkeypatch):
    monkeypatch.setattr("ria_kernels._backend._INTERPRET_AT_IMPORT", False)  # as if imported without it
    model = make_tiny_model("opt")
    before = _weights(model)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET"):
        prune_model(model, make_calibration(), backend="triton", progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="Triton kernels on CPU need TRITON_INTERPRET=1")
@pytest.mark.parametrize("sparsity", ["2:4", 0.5])
def test_triton_backend_gives_the_same_model(sparsity):
    calib = make_calibration(2, 8)
    a, b = make_tiny_model("mistral"), make_tiny_model("mistral")
    prune_model(a, calib, method="ria", sparsity=sparsity, backend="torch", progress=False)
    r = prune_model(b, calib, method="ria", sparsity=sparsity, backend="triton", progress=False)
    assert r.backend["score"] == "triton" and r.backend["mask"] == "triton"
    for (k, v), v2 in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v == 0, v2 == 0), k


def test_unsupported_model():
    from transformers import GPT2Config, GPT2LMHeadModel
    with pytest.raises(RiaInputError, match="unsupported model architecture 'gpt2'"):
        prune_model(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)),
                    make_calibration(), progress=False)


def test_permutation_blocks_limit_is_the_useful_maximum():
    """blocks up to half the narrowest input's block count is accepted (8 here: 64 channels / 4 / 2)."""
    from ria_kernels.pruning import max_permutation_blocks
    from ria_kernels._validation import parse_sparsity
    model = make_tiny_model("llama")
    assert max_permutation_blocks(get_adapter(model), parse_sparsity("2:4")) == 8
    report = prune_model(model, make_calibration(), sparsity="2:4", permute=True, blocks=8, progress=False)
    assert report.permutation_stats and all(s["lsa_solver"] in ("sparse", "lapjv", "scipy") for s in report.permutation_stats.values())


def test_report_numbers_are_numbers():
    model = make_tiny_model("llama")
    d = json.loads(json.dumps(prune_model(model, make_calibration(), sparsity=0.5, progress=False).to_dict()))
    assert d["sparsity_type"] == "unstructured" and d["sparsity_ratio"] == 0.5 and "sparsity" not in d
    d = json.loads(json.dumps(prune_model(make_tiny_model("llama"), make_calibration(), sparsity="2:4",
                                          progress=False).to_dict()))
    assert d["sparsity_type"] == "2:4" and d["sparsity_ratio"] == 0.5


def test_ria_score_rejects_negative_act_norm():
    import ria_kernels as rk
    with pytest.raises(RiaInputError, match="act_norm"):
        rk.ria_score(torch.randn(4, 8), -torch.rand(8))


def test_reconstruction_ls_same_mask_lower_error_than_obs():
    """reconstruction='ls' keeps the metric's mask (with and without permute) and, on layer 0
    (same inputs for both), reaches a lower output error than the OBS update."""
    calib = make_calibration(8, 32)
    for permute in (False, True):
        runs = {}
        for rec in (None, "obs", "ls"):
            model = make_tiny_model("llama")
            report = prune_model(model, calib, method="ria", sparsity="2:4", permute=permute, reconstruction=rec,
                                 progress=False)
            runs[rec] = (model, report)
        q = {k: m.model.layers[0].self_attn.q_proj.weight for k, (m, _) in runs.items()}
        assert torch.equal(q[None] == 0, q["ls"] == 0) and not torch.equal(q[None], q["ls"])
        rep_ls, rep_obs = runs["ls"][1], runs["obs"][1]
        assert rep_ls.reconstruction and rep_ls.reconstruction_kind == "ls" and rep_obs.reconstruction_kind == "obs"
        for name, lin in rep_ls.layers[0].linears.items():
            assert lin.cg_iterations >= 1
            assert lin.output_error <= rep_obs.layers[0].linears[name].output_error * (1 + 1e-4), name
        assert runs[None][1].layers[0].linears["self_attn.q_proj"].output_error is None
        stages = rep_ls.to_dict()["stage_times_s"]
        assert stages["refit"] > 0 and stages["stats"] > 0 and stages["recompute"] > 0


@pytest.mark.parametrize("rec", [True, "obs", "OBS", False, None])
def test_reconstruction_values(rec):
    from ria_kernels.pruning import normalize_reconstruction
    assert normalize_reconstruction(rec) == ("obs" if rec else None)


@pytest.mark.parametrize("blocks", [1, 2])
def test_permute_reports_blocks_gain_solver_and_search_time_per_layer(blocks, caplog):
    """Issue #26 item 6: each group's stats name its blocks / gain backend / LSA solver, each layer
    carries its search seconds (the sum over its groups), the run a summary, the log one INFO line
    per layer and the progress bar a "perm" field."""
    import logging
    from ria_kernels.pruning import _postfix
    model = make_tiny_model("llama")
    with caplog.at_level(logging.INFO, logger="ria_kernels"):
        report = prune_model(model, make_calibration(), method="ria", sparsity="2:4", permute=True, blocks=blocks,
                             progress=False)
    adapter = get_adapter(model)
    stats = report.permutation_stats
    assert len(stats) == 2 * len(adapter.groups)
    for st in stats.values():
        assert st["blocks"] == blocks and st["gain_backend"] in ("native", "torch")
        assert st["lsa_solver"] in ("sparse", "lapjv", "scipy") and 0 <= st["rounds_accepted"] <= 4
    for i, lrep in enumerate(report.layers):
        mine = [s["time_s"] for k, s in stats.items() if k.startswith(f"{adapter.full_name(i, '')}.")]
        assert len(mine) == len(adapter.groups) and lrep.permutation_time_s == pytest.approx(sum(mine))
        assert _postfix(lrep)["perm"] == f"{lrep.permutation_time_s:.2f} s"
        assert lrep.to_dict()["permutation_time_s"] == lrep.permutation_time_s
    summary = json.loads(json.dumps(report.to_dict()))["permutation"]
    assert summary["blocks"] == blocks and summary["blocks_used"] == [blocks] and summary["lsa"] is True
    assert summary["problems"] == len(stats)
    assert summary["time_s"] == pytest.approx(sum(s["time_s"] for s in stats.values()))
    assert summary["max_layer_time_s"] == pytest.approx(max(la.permutation_time_s for la in report.layers))
    assert summary["gain_backend"] == ",".join(sorted({s["gain_backend"] for s in stats.values()}))
    lines = [r.getMessage() for r in caplog.records if "channel permutation" in r.getMessage()]
    assert len(lines) == len(report.layers)
    for i, line in enumerate(lines):
        assert line.startswith(f"layer {i}: channel permutation ") and f"blocks={blocks}," in line
        assert f"LSA {summary['lsa_solver']}" in line and f"gain {summary['gain_backend']}" in line
        assert all(f"{g.name} " in line for g in adapter.groups)


def test_permute_without_lsa_and_without_permute_report_no_search_fields():
    from ria_kernels.pruning import _postfix
    report = prune_model(make_tiny_model("llama"), make_calibration(), sparsity="2:4", permute=True, lsa=False,
                         progress=False)
    summary = report.to_dict()["permutation"]
    assert summary["lsa"] is False and summary["lsa_solver"] is None and summary["gain_backend"] is None
    assert summary["blocks_used"] == [] and all(s["blocks"] is None for s in report.permutation_stats.values())
    assert all(la.permutation_time_s is not None for la in report.layers)
    plain = prune_model(make_tiny_model("llama"), make_calibration(), sparsity="2:4", progress=False)
    d = plain.to_dict()
    assert d["permutation"] is None and "permutation_time_s" not in d["layers"][0]
    assert "perm" not in _postfix(plain.layers[0])
