import pytest
import torch

from ria_kernels import RiaInputError, get_adapter
from conftest import FAMILIES, make_calibration, make_tiny_model


@pytest.mark.parametrize("family", FAMILIES)
def test_groups_cover_every_linear(family):
    model = make_tiny_model(family)
    adapter = get_adapter(model)
    assert adapter.family == family
    layer = adapter.layers()[0]
    linears = {n for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(adapter.linear_names()) == linears
    for g in adapter.groups:
        if g.norm is not None:
            assert isinstance(layer.get_submodule(g.norm), torch.nn.Module)
        ins = {layer.get_submodule(n).in_features for n in g.linears}
        assert len(ins) == 1, "a group's linears must share an input width"


@pytest.mark.parametrize("family", FAMILIES)
def test_captured_inputs_reproduce_full_forward(family):
    """Running the decoder layers on captured inputs gives the model's own last hidden state."""
    model = make_tiny_model(family)
    adapter = get_adapter(model)
    calib = make_calibration(3, 12)
    inputs = adapter.capture_layer_inputs(calib, batch_size=2)
    assert sum(h.shape[0] for h in inputs.hidden) == 3
    hidden = [h for h in inputs.hidden]
    for layer in adapter.layers():
        hidden = [adapter.run_layer(layer, h, kw) for h, kw in zip(hidden, inputs.kwargs)]
    out = model(input_ids=calib, output_hidden_states=True, use_cache=False)
    # hidden_states[-1] is after the final norm; compare before it via the norm module
    final_norm = model.model.decoder.final_layer_norm if family == "opt" else model.model.norm
    got = final_norm(torch.cat(hidden))
    torch.testing.assert_close(got, out.hidden_states[-1], rtol=1e-5, atol=1e-5)


def test_unsupported_architecture_named():
    from transformers import GPT2Config, GPT2LMHeadModel
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(RiaInputError, match="unsupported model architecture 'gpt2'.*llama"):
        get_adapter(model)
