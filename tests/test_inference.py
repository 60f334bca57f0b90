"""to_sparse_inference: converted models (SparseLinear in permuted space, permuted
norms, folded / gathered permutations) give the masked dense model's outputs."""
from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

from conftest import make_calibration, make_tiny_model
from ria_kernels import RiaInputError, SparseLinear, prune_model, to_sparse_inference
from ria_kernels.inference import (InputPermutedLinear, PermutedLayerNorm, PermutedRMSNorm,
                                   head_local_permutation)
from ria_kernels.pruning import PruneReport

ATOL = 1e-4  # fp32 logits, the bound
GQA_FAMILIES = ("llama", "mistral", "qwen2")
MODES = {"2:4+perm": dict(sparsity="2:4", permute=True), "2:4": dict(sparsity="2:4"),
         "0.5": dict(sparsity=0.5)}
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")

_CACHE: dict = {}


def tiny(family: str, **kw) -> nn.Module:
    """make_tiny_model with random norm weights/biases and linear biases: HF initialises
    them to ones/zeros, which would hide a norm weight or bias left in the wrong order."""
    model = make_tiny_model(family, **kw)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norm weights / biases, linear biases
                p.copy_(1.0 + 0.5 * torch.randn(p.shape, generator=g) if name.endswith("norm.weight")
                        else 0.5 * torch.randn(p.shape, generator=g))
    return model


def pruned(family: str, mode: str):
    """(masked dense model, report), pruned once per session; callers deep-copy."""
    key = (family, mode)
    if key not in _CACHE:
        model = tiny(family)
        report = prune_model(model, make_calibration(), progress=False, **MODES[mode])
        _CACHE[key] = (model, report)
    return _CACHE[key]


def inputs(batch: int = 2, seqlen: int = 11) -> torch.Tensor:
    return make_calibration(batch, seqlen, seed=123)


def max_logit_diff(a: nn.Module, b: nn.Module, ids: torch.Tensor) -> float:
    with torch.no_grad():
        la, lb = a(ids).logits, b(ids).logits
    assert torch.isfinite(la).all() and torch.isfinite(lb).all()
    return (la.float() - lb.float()).abs().max().item()


def inner(mod: nn.Module) -> nn.Module:
    return mod.linear if isinstance(mod, InputPermutedLinear) else mod


# "cusparselt" on a CPU machine: no cuSPARSELt copy can be built (CUDA only), so its modules hold and run
# the compact format like "compact" -- the test checks the mode is accepted end to end and exact;
# the copy's accounting is tested in test_sparse_linear.py with a fake compressor.
MEMORY = ("compact", "cusparselt")


@pytest.mark.parametrize("memory", MEMORY)
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("family", GQA_FAMILIES)
def test_logits_match_masked_dense(family, mode, memory):
    dense, report = pruned(family, mode)
    model = copy.deepcopy(dense)
    out = to_sparse_inference(model, report, memory=memory)
    assert out is model  # in place
    assert max_logit_diff(model, dense, inputs()) <= ATOL
    layer = model.model.layers[0]
    mods = {n: layer.get_submodule(n) for n in LINEARS}
    if mode == "0.5":  # unstructured: nothing is 2:4, nothing changes
        assert all(type(m) is nn.Linear for m in mods.values())
        assert not any(isinstance(m, (PermutedRMSNorm, InputPermutedLinear)) for m in model.modules())
        return
    assert all(isinstance(inner(m), SparseLinear) for m in mods.values())
    # one compressed weight per linear: no dense copy held
    assert all(inner(m).weight is None and inner(m).memory == memory for m in mods.values())
    norms = (layer.input_layernorm, layer.post_attention_layernorm)
    if mode == "2:4":
        assert not any(isinstance(n, PermutedRMSNorm) for n in norms)
        assert not isinstance(mods["self_attn.o_proj"], InputPermutedLinear)
        return
    assert all(isinstance(n, PermutedRMSNorm) for n in norms)
    # the permutation search moves channels across heads: o_proj needs the runtime gather
    assert isinstance(mods["self_attn.o_proj"], InputPermutedLinear)
    perm = report.permutations["model.layers.0.self_attn.q_proj"]
    torch.testing.assert_close(layer.input_layernorm.perm.cpu(), perm)
    # q/k/v hold W[:, perm] of the masked dense weights; gate/up rows follow down's perm
    dl = dense.model.layers[0]
    torch.testing.assert_close(mods["self_attn.q_proj"].dense_weight(), dl.self_attn.q_proj.weight[:, perm],
                               rtol=0, atol=0)
    down = report.permutations["model.layers.0.mlp.down_proj"]
    up = report.permutations["model.layers.0.mlp.up_proj"]
    torch.testing.assert_close(mods["mlp.up_proj"].dense_weight(), dl.mlp.up_proj.weight[down][:, up], rtol=0,
                               atol=0)


@pytest.mark.parametrize("family", GQA_FAMILIES)
def test_generate_matches_dense(family):
    dense, report = pruned(family, "2:4+perm")
    model = to_sparse_inference(copy.deepcopy(dense), report)
    prompt = make_calibration(2, 7, seed=5)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        want = dense.generate(prompt, **kw)
        got = model.generate(prompt, **kw)
    assert got.shape == want.shape == (2, 13)
    assert torch.equal(got, want)


def _magnitude_24(weight: torch.Tensor, perm: torch.Tensor) -> None:
    """Zero the 2 smallest of every 4 weights of ``weight[:, perm]`` in place."""
    wp = weight[:, perm].reshape(weight.shape[0], -1, 4)
    drop = wp.abs().argsort(-1)[..., :2]
    mask_p = torch.ones_like(wp, dtype=torch.bool).scatter_(-1, drop, False).reshape(weight.shape[0], -1)
    mask = torch.empty_like(mask_p)
    mask[:, perm] = mask_p
    weight.mul_(mask)


def handmade(family: str, attn_out_perm, seed: int = 0):
    """Tiny model made 2:4 by magnitude in random permuted spaces; ``attn_out_perm(gen)``
    gives o_proj's permutation. Returns (masked dense model, report)."""
    model = tiny(family)
    gen = torch.Generator().manual_seed(seed)
    perms = {}
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            groups = {("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"): torch.randperm(64, generator=gen),
                      ("self_attn.o_proj",): attn_out_perm(gen),
                      ("mlp.gate_proj", "mlp.up_proj"): torch.randperm(64, generator=gen),
                      ("mlp.down_proj",): torch.randperm(128, generator=gen)}
            for names, perm in groups.items():
                for n in names:
                    _magnitude_24(layer.get_submodule(n).weight, perm)
                    perms[f"model.layers.{i}.{n}"] = perm
    report = PruneReport(method="magnitude", sparsity="2:4", a=0.5, per_output=False, family=family, permute=True,
                         permutations=perms)
    return model, report


def head_local(gen, num_heads=4, num_kv=2, head_dim=16):
    """An o_proj permutation that folds into v_proj: within-head, same for the
    query heads of one kv head."""
    local = torch.stack([torch.randperm(head_dim, generator=gen) for _ in range(num_kv)])
    local = local.repeat_interleave(num_heads // num_kv, dim=0)
    return (local + torch.arange(num_heads)[:, None] * head_dim).reshape(-1)


@pytest.mark.parametrize("o_proj", ["auto", "gather"])
def test_foldable_o_proj_permutation(o_proj):
    dense, report = handmade("qwen2", head_local)
    model = to_sparse_inference(copy.deepcopy(dense), report, o_proj=o_proj)
    assert max_logit_diff(model, dense, inputs()) <= ATOL
    attn = model.model.layers[1].self_attn
    if o_proj == "auto":  # folded into v_proj's rows: no runtime gather
        assert isinstance(attn.o_proj, SparseLinear)
        assert not any(isinstance(m, InputPermutedLinear) for m in model.modules())
        assert not torch.equal(attn.v_proj.bias, dense.model.layers[1].self_attn.v_proj.bias)  # rows (and bias) moved
    else:
        assert isinstance(attn.o_proj, InputPermutedLinear)
        torch.testing.assert_close(attn.v_proj.bias, dense.model.layers[1].self_attn.v_proj.bias, rtol=0, atol=0)


def test_cross_head_o_proj_permutation_is_gathered():
    dense, report = handmade("mistral", lambda g: torch.randperm(64, generator=g), seed=1)
    model = to_sparse_inference(copy.deepcopy(dense), report)
    assert isinstance(model.model.layers[0].self_attn.o_proj, InputPermutedLinear)
    assert max_logit_diff(model, dense, inputs()) <= ATOL


def test_head_local_permutation_rules():
    ident = torch.arange(64)
    got = head_local_permutation(ident, 4, 2, 16)
    assert torch.equal(got, torch.arange(16).expand(2, 16))
    g = torch.Generator().manual_seed(0)
    ok = head_local(g)
    local = head_local_permutation(ok, 4, 2, 16)
    assert local is not None and torch.equal(local[0], ok[:16])
    assert head_local_permutation(torch.roll(ident, 1), 4, 2, 16) is None  # crosses heads
    bad = ok.clone()
    bad[16:32] = bad[16:32].flip(0)  # query head 1 differs from head 0 (same kv head)
    assert head_local_permutation(bad, 4, 2, 16) is None
    assert head_local_permutation(bad, 4, 4, 16) is not None  # fine without GQA
    swap = torch.cat([ident[16:32], ident[:16], ident[32:]])  # whole heads swapped: not within-head
    assert head_local_permutation(swap, 4, 4, 16) is None


def test_other_nm_stays_dense_and_unpermuted():
    dense = tiny("llama")
    report = prune_model(dense, make_calibration(), sparsity="4:8", permute=True, progress=False)
    assert report.permutations
    model = to_sparse_inference(copy.deepcopy(dense), report)
    assert all(type(model.model.layers[0].get_submodule(n)) is nn.Linear for n in LINEARS)
    assert not any(isinstance(m, PermutedRMSNorm) for m in model.modules())
    assert max_logit_diff(model, dense, inputs()) <= ATOL


def test_without_report_converts_unpermuted_24():
    dense, _ = pruned("llama", "2:4")
    model = to_sparse_inference(copy.deepcopy(dense))
    assert isinstance(model.model.layers[1].mlp.down_proj, SparseLinear)
    assert max_logit_diff(model, dense, inputs()) <= ATOL


# -- OPT: permuted conversion with a torch permuted LayerNorm; post-LN OPT rejects perms
@pytest.mark.parametrize("memory", MEMORY)
@pytest.mark.parametrize("permute", [True, False])
def test_opt(permute, memory):
    dense = tiny("opt")
    report = prune_model(dense, make_calibration(), sparsity="2:4", permute=permute, progress=False)
    model = to_sparse_inference(copy.deepcopy(dense), report, memory=memory)
    layer = model.model.decoder.layers[0]
    assert isinstance(inner(layer.fc2), SparseLinear) and isinstance(inner(layer.self_attn.out_proj), SparseLinear)
    assert isinstance(layer.final_layer_norm, PermutedLayerNorm) == permute
    assert isinstance(layer.self_attn_layer_norm, PermutedLayerNorm) == permute
    assert max_logit_diff(model, dense, inputs()) <= ATOL


def test_opt_post_layernorm_rejects_permutations():
    from transformers import OPTConfig, OPTForCausalLM
    torch.manual_seed(0)
    cfg = OPTConfig(vocab_size=128, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, ffn_dim=128,
                    max_position_embeddings=64, word_embed_proj_dim=64, do_layer_norm_before=False)
    dense = OPTForCausalLM(cfg).eval()
    report = prune_model(dense, make_calibration(2, 8), sparsity="2:4", permute=True, progress=False)
    model = copy.deepcopy(dense)
    with pytest.raises(RiaInputError, match="do_layer_norm_before"):
        to_sparse_inference(model, report)
    assert type(model.model.decoder.layers[0].fc1) is nn.Linear  # untouched
    dense = OPTForCausalLM(cfg).eval()
    report = prune_model(dense, make_calibration(2, 8), sparsity="2:4", progress=False)
    model = to_sparse_inference(copy.deepcopy(dense), report)  # unpermuted 2:4 is fine
    assert isinstance(model.model.decoder.layers[0].fc1, SparseLinear)
    assert max_logit_diff(model, dense, inputs()) <= ATOL


# -- validation: before anything is modified
def _bad(report: PruneReport, **perm_edits) -> PruneReport:
    r = copy.copy(report)
    r.permutations = dict(report.permutations)
    for k, v in perm_edits.items():
        r.permutations[k.replace("__", ".")] = v
    return r


Q0 = "model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize("case, match", [
    ("unknown_key", "does not have"),
    ("short", "in_features"),
    ("repeated", "not a permutation"),
    ("float", "int32/int64"),
    ("group_mismatch", "share an input"),
    ("group_missing", "no entry"),
    ("family", "made for a 'mistral'"),
    ("not_report", "PruneReport"),
    ("weights_not_24", "not 2:4"),
    ("o_proj", "o_proj must be"),
])
def test_bad_report_raises_before_touching(case, match):
    dense, report = pruned("llama", "2:4+perm")
    model = copy.deepcopy(dense)
    perm = report.permutations[Q0]
    kwargs = {}
    if case == "unknown_key":
        bad = _bad(report, **{"model.layers.7.self_attn.q_proj": perm})
    elif case == "short":
        bad = _bad(report, **{Q0: perm[:-4]})
    elif case == "repeated":
        p = perm.clone()
        p[1] = p[0]
        bad = _bad(report, **{Q0: p})
    elif case == "float":
        bad = _bad(report, **{Q0: perm.float()})
    elif case == "group_mismatch":
        bad = _bad(report, **{Q0: perm.flip(0)})
    elif case == "group_missing":
        bad = _bad(report)
        del bad.permutations[Q0]
    elif case == "family":
        bad = copy.copy(report)
        bad.family = "mistral"
    elif case == "not_report":
        bad = {"permutations": report.permutations}
    elif case == "weights_not_24":  # a 2:4 report applied to an unpruned model
        bad, model = report, make_tiny_model("llama")
    else:
        bad, kwargs = report, {"o_proj": "fold"}
    before = {n: type(m) for n, m in model.named_modules()}
    with pytest.raises(RiaInputError, match=match):
        to_sparse_inference(model, bad, **kwargs)
    assert {n: type(m) for n, m in model.named_modules()} == before


def test_already_converted_and_unsupported():
    dense, report = pruned("llama", "2:4")
    model = to_sparse_inference(copy.deepcopy(dense), report)
    with pytest.raises(RiaInputError, match="converted already"):
        to_sparse_inference(model, report)
    with pytest.raises(RiaInputError, match="unsupported model architecture"):
        to_sparse_inference(nn.Linear(4, 4))


# -- the replacement modules on their own
def test_permuted_rms_norm_module():
    torch.manual_seed(0)
    w = torch.randn(48)
    perm = torch.randperm(48)
    x = torch.randn(3, 5, 48)
    mod = PermutedRMSNorm(w, perm, 1e-5)
    ref = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w
    out = mod(x)
    torch.testing.assert_close(out, ref[..., perm], rtol=1e-5, atol=1e-5)
    bad = perm.clone()
    bad[0] = bad[1]
    with pytest.raises(RiaInputError, match="permutation"):
        PermutedRMSNorm(w, bad, 1e-5)


def test_permuted_layer_norm_and_gather_modules():
    torch.manual_seed(0)
    ln = nn.LayerNorm(32)
    nn.init.normal_(ln.weight)
    nn.init.normal_(ln.bias)
    perm = torch.randperm(32)
    x = torch.randn(4, 32)
    mod = PermutedLayerNorm(ln.weight, ln.bias, perm, ln.eps, 32)
    torch.testing.assert_close(mod(x), ln(x)[:, perm], rtol=1e-6, atol=1e-6)
    lin = nn.Linear(32, 8)
    g = InputPermutedLinear(lin, perm)
    assert (g.in_features, g.out_features) == (32, 8)
    torch.testing.assert_close(g(x), lin(x[:, perm]), rtol=0, atol=0)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="Triton kernels run on the CPU only interpreted")
def test_converted_model_with_triton_norm(monkeypatch):
    """The GPU path of PermutedRMSNorm (the Triton kernel, interpreted) inside a converted model."""
    dense, report = pruned("qwen2", "2:4+perm")
    model = to_sparse_inference(copy.deepcopy(dense), report)
    monkeypatch.setenv("RIA_KERNELS_BACKEND", "triton")
    assert max_logit_diff(model, dense, inputs(1, 5)) <= ATOL


def test_replacement_modules_under_torch_compile():
    """The modules a converted model runs trace without graph breaks (dynamo, eager backend)."""
    torch.manual_seed(0)
    perm = torch.randperm(32)
    x = torch.randn(2, 3, 32)
    for mod in (PermutedRMSNorm(torch.randn(32), perm, 1e-6), InputPermutedLinear(nn.Linear(32, 8), perm),
                PermutedLayerNorm(torch.randn(32), torch.randn(32), perm, 1e-5, 32)):
        compiled = torch.compile(mod, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), mod(x), rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("memory", MEMORY)
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_cuda_fp16_converted_model(family, memory):
    """On the GPU: Triton PermutedRMSNorm + SparseLinear's compact kernel / tensor-core copy inside the model."""
    dense, report = pruned(family, "2:4+perm")
    dense = copy.deepcopy(dense).to("cuda", torch.float16)
    model = to_sparse_inference(copy.deepcopy(dense), report, memory=memory)
    ids = inputs(4, 64).cuda()
    with torch.no_grad():
        want, got = dense(ids).logits.float(), model(ids).logits.float()
    assert torch.isfinite(got).all()
    assert (got - want).abs().max().item() <= 2e-2 * max(1.0, want.abs().max().item())


# -- bytes held by the converted linears: one compressed weight per linear
def _decoder_linear_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes of the SparseLinear modules, bytes of plain nn.Linear modules) inside the decoder layers:
    parameters + buffers (a gather's permutation belongs to the wrapper, not to the linear)."""
    from ria_kernels.models import get_adapter
    from ria_kernels.sparse_linear import linear_bytes
    got = [linear_bytes(layer) for layer in get_adapter(model).layers()]
    return sum(g["sparse"] for g in got), sum(g["dense"] for g in got)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("family", ["llama", "qwen2", "opt"])
def test_converted_model_linear_bytes(family, dtype, monkeypatch):
    """compact <= 0.57x the dense linear bytes (fp16: values K/2 + indices K/8 per row, plus the bias);
    cusparselt <= 1.15x. FAKED for cusparselt (no CUDA here): the cuSPARSELt copy, a buffer of cuSPARSELt's documented
    compressed size (tests/sparse_fakes.py); the rest of what the modules hold is real."""
    from sparse_fakes import FakeTensorCores
    if family == "opt":
        dense = tiny("opt")
        report = prune_model(dense, make_calibration(), sparsity="2:4", permute=True, progress=False)
    else:
        dense, report = pruned(family, "2:4+perm")
    dense = copy.deepcopy(dense).to(dtype)
    _, dense_bytes = _decoder_linear_bytes(dense)
    compact = to_sparse_inference(copy.deepcopy(dense), report, memory="compact")
    sparse_bytes, left_dense = _decoder_linear_bytes(compact)
    assert left_dense == 0  # every decoder linear is 2:4 and converted
    assert sparse_bytes <= 0.57 * dense_bytes, sparse_bytes / dense_bytes
    if dtype == torch.float16:  # cuSPARSELt takes fp16/bf16 only
        FakeTensorCores(monkeypatch, runnable=("cusparselt", "cutlass"))
        fast = to_sparse_inference(copy.deepcopy(dense), report, memory="cusparselt")
        mods = [m for m in fast.modules() if isinstance(m, SparseLinear)]
        assert all(m._held_copies() == ["cusparselt"] for m in mods)  # one cuSPARSELt copy each
        assert any(m.meta_layout == "sm90" for m in mods)  # and CUTLASS on the compact weight, no copy
        fast_bytes, _ = _decoder_linear_bytes(fast)
        assert sparse_bytes < fast_bytes <= 1.15 * dense_bytes, fast_bytes / dense_bytes


# -- issue 22: one stored weight, its metadata in the CUTLASS order of the (faked) GPU
@pytest.mark.parametrize("layout", ["sm80", "sm90"])
@pytest.mark.parametrize("family, mode", [("llama", "2:4+perm"), ("llama", "2:4"), ("qwen2", "2:4+perm"),
                                          ("qwen2", "2:4"), ("opt", "2:4+perm"), ("opt", "2:4")])
def test_one_copy_model_in_the_cutlass_order(family, mode, layout, monkeypatch, tmp_path):
    """FAKED (tests/sparse_fakes.py): that the extension's CUTLASS kernel can run here, which order it reads,
    its matmul (the float32 reference of the values + metadata it is handed, decoded from that order) and, so
    float32 logits can be compared at 1e-4, that it takes float32. Real: the conversion, the layouts, the
    bytes, the dispatch, save_sparse / load_sparse."""
    from sparse_fakes import FakeTensorCores
    from ria_kernels import load_sparse, save_sparse
    if family == "opt":
        dense = tiny("opt")
        report = prune_model(dense, make_calibration(), progress=False, **MODES[mode])
    else:
        dense, report = pruned(family, mode)
    fake = FakeTensorCores(monkeypatch, runnable=("cutlass",), cutlass_layout=layout, any_dtype=True)
    model = to_sparse_inference(copy.deepcopy(dense), report)  # the default memory mode
    mods = [m for m in model.modules() if isinstance(m, SparseLinear)]
    # sm90 pads its metadata to 64 x 128: such a (tiny) linear stays row-major, so the copy never grows
    padded = [m for m in mods if layout == "sm90" and (m.out_features % 64 or m.in_features % 128)]
    assert all(m.memory == "compact" and m.meta_layout == ("rowmajor" if m in padded else layout) for m in mods)
    assert len(padded) < len(mods)
    sparse_bytes, left_dense = _decoder_linear_bytes(model)
    assert left_dense == 0 and sparse_bytes <= 0.57 * _decoder_linear_bytes(dense)[1]
    monkeypatch.setenv("RIA_KERNELS_SPARSE_AUTOTUNE", "0")
    from ria_kernels import sparse_linear as sl
    table = sl.TuneTable(tmp_path / "table.json")  # empty: nothing measured
    for m in mods:  # the modules as on a GPU: CUTLASS is the static choice from 16 tokens
        fake.as_gpu(m, monkeypatch, table)
        assert m.backend_for(16) == ("sparse24" if m in padded else "cutlass") and m.backend_for(1) == "sparse24"
    for ids in (inputs(batch=1, seqlen=7), inputs(batch=4, seqlen=40)):  # 7 tokens: compact kernel; 160: CUTLASS
        assert max_logit_diff(model, dense, ids) <= ATOL
    assert {t for t, _ in fake.cutlass_calls} == {160} and len(fake.cutlass_calls) >= len(mods) - len(padded)
    save_sparse(model, tmp_path / "ck", report=report)
    loaded = load_sparse(tmp_path / "ck")
    lm = [m for m in loaded.modules() if isinstance(m, SparseLinear)]
    assert [m.meta_layout for m in lm] == [m.meta_layout for m in mods]  # laid out again for the device on load
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical, row-major meta
    assert all(torch.equal(m.meta, n.meta) for m, n in zip(mods, lm))
