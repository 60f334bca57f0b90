import copy

import pytest
import torch

from ria_kernels import RiaInputError, get_adapter
from ria_kernels.models import check_config, materialized, module_device
from conftest import FAMILIES, make_calibration, make_tiny_model

EXPECTED = {
    "llama": [("attn_in", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "input_layernorm", ()),
              ("attn_out", ("self_attn.o_proj",), None, ("self_attn.v_proj",)),
              ("mlp_in", ("mlp.gate_proj", "mlp.up_proj"), "post_attention_layernorm", ()),
              ("mlp_out", ("mlp.down_proj",), None, ("mlp.gate_proj", "mlp.up_proj"))],
    "opt": [("attn_in", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn_layer_norm", ()),
            ("attn_out", ("self_attn.out_proj",), None, ("self_attn.v_proj",)),
            ("mlp_in", ("fc1",), "final_layer_norm", ()),
            ("mlp_out", ("fc2",), None, ("fc1",))],
}
EXPECTED["mistral"] = EXPECTED["qwen2"] = EXPECTED["llama"]


@pytest.mark.parametrize("family", FAMILIES)
def test_groups_exact_and_cover_every_linear(family):
    model = make_tiny_model(family)
    adapter = get_adapter(model)
    assert adapter.family == family
    assert adapter.norm_kind == ("layernorm" if family == "opt" else "rms")
    assert [(g.name, g.linears, g.norm, g.producers) for g in adapter.groups] == EXPECTED[family]
    assert adapter.num_layers == 2 and adapter.hidden_size == 64 and adapter.head_dim == 16
    assert adapter.num_kv_heads == (2 if family in ("mistral", "qwen2") else 4)
    layer = adapter.layers()[0]
    linears = {n for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(adapter.linear_names()) == linears
    for g in adapter.groups:
        if g.norm is not None:
            norm = layer.get_submodule(g.norm)
            assert norm.weight.shape[0] == layer.get_submodule(g.linears[0]).in_features
        ins = {layer.get_submodule(n).in_features for n in g.linears}
        assert len(ins) == 1, "a group's linears must share an input width"
        width = ins.pop()
        if g.name == "mlp_out":  # producers' output channels are this group's input channels
            assert all(layer.get_submodule(p).out_features == width for p in g.producers)
    assert adapter.full_name(1, "fc1") == ("model.decoder.layers.1.fc1" if family == "opt" else "model.layers.1.fc1")


@pytest.mark.parametrize("family", FAMILIES)
def test_captured_inputs_reproduce_full_forward(family):
    """Running the decoder layers on captured inputs gives the model's own last hidden state."""
    model = make_tiny_model(family)
    adapter = get_adapter(model)
    calib = make_calibration(3, 12)
    inputs = adapter.capture_layer_inputs(calib, batch_size=2)
    assert [h.shape[0] for h in inputs.hidden] == [2, 1] and inputs.num_tokens == 36
    assert all("past_key_values" not in kw and "use_cache" not in kw for kw in inputs.kwargs)
    hidden = list(inputs.hidden)
    for layer in adapter.layers():
        hidden = [adapter.run_layer(layer, h, kw) for h, kw in zip(hidden, inputs.kwargs)]
        assert all(isinstance(h, torch.Tensor) and h.shape[-1] == 64 for h in hidden)
    out = model(input_ids=calib, output_hidden_states=True, use_cache=False)
    final_norm = model.model.decoder.final_layer_norm if family == "opt" else model.model.norm
    torch.testing.assert_close(final_norm(torch.cat(hidden)), out.hidden_states[-1], rtol=1e-5, atol=1e-5)


def test_capture_offload_keeps_inputs_on_cpu_and_restores_cache_flag():
    model = make_tiny_model("qwen2")
    model.config.use_cache = True
    inputs = get_adapter(model).capture_layer_inputs(make_calibration(2, 8), offload=True)
    assert all(h.device.type == "cpu" for h in inputs.hidden)
    assert model.config.use_cache is True


def test_unsupported_architecture_named():
    from transformers import GPT2Config, GPT2LMHeadModel
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(RiaInputError, match="unsupported model architecture 'gpt2'.*llama.*mistral.*opt.*qwen2"):
        get_adapter(model)
    with pytest.raises(RiaInputError, match="unsupported model architecture 'gpt2'"):
        check_config(model.config)
    with pytest.raises(RiaInputError, match="unsupported model architecture None"):
        get_adapter(torch.nn.Linear(2, 2))


def test_accelerate_offloaded_layer_is_pruned_and_written_back():
    """A layer offloaded by accelerate (weights on 'meta', real ones in the weights map,
    as with device_map='auto' and CPU offload) is pruned like an in-memory one."""
    pytest.importorskip("accelerate")
    from accelerate.hooks import attach_align_device_hook_on_blocks
    from ria_kernels import prune_model
    ref = make_tiny_model("llama")
    model = copy.deepcopy(ref)
    calib = make_calibration()
    weights = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("model.layers.1.")}
    blocks = ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm", "model.rotary_emb", "lm_head"]
    attach_align_device_hook_on_blocks(model, execution_device={b: "cpu" for b in blocks},
                                       offload={b: b == "model.layers.1" for b in blocks}, weights_map=weights)
    layer1 = model.model.layers[1]
    assert layer1.mlp.down_proj.weight.device.type == "meta"
    assert module_device(layer1).type == "cpu"
    prune_model(ref, calib, method="ria", sparsity="2:4", progress=False)
    report = prune_model(model, calib, method="ria", sparsity="2:4", progress=False)
    assert report.actual_sparsity == pytest.approx(0.5)
    assert layer1.mlp.down_proj.weight.device.type == "meta"  # still offloaded
    assert torch.equal(weights["model.layers.1.mlp.down_proj.weight"], ref.model.layers[1].mlp.down_proj.weight)
    torch.testing.assert_close(model(calib).logits, ref(calib).logits)
    with materialized(layer1):
        assert layer1.self_attn.q_proj.weight.device.type == "cpu"
    assert layer1.self_attn.q_proj.weight.device.type == "meta"
