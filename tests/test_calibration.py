import pytest
import torch

from ria_kernels import RiaInputError, get_adapter
from ria_kernels.calibration import check_calibration, collect_stats, sample_windows
from conftest import make_calibration, make_tiny_model


def test_stats_equal_direct_computation():
    model = make_tiny_model("llama")
    adapter = get_adapter(model)
    layer = adapter.layers()[0]
    calib = make_calibration(3, 10)
    inputs = adapter.capture_layer_inputs(calib)
    seen = {}
    h = layer.self_attn.q_proj.register_forward_hook(lambda m, i, o: seen.setdefault("x", []).append(i[0].clone()))
    with collect_stats(adapter.linears(layer), need_hessian=True) as stats:
        for hid, kw in zip(inputs.hidden, inputs.kwargs):
            adapter.run_layer(layer, hid, kw)
    h.remove()
    x = torch.cat([t.reshape(-1, t.shape[-1]) for t in seen["x"]]).double()
    s = stats["self_attn.q_proj"]
    assert s.tokens == 30
    torch.testing.assert_close(s.act_norm.double(), x.norm(dim=0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.hessian.double(), x.T @ x, rtol=1e-4, atol=1e-4)
    # q/k/v see the same input
    torch.testing.assert_close(stats["self_attn.k_proj"].sq_sum, s.sq_sum)


def test_sample_windows_deterministic_and_in_range():
    ids = torch.arange(1000)
    a = sample_windows(ids, 8, 32, seed=3)
    b = sample_windows(ids, 8, 32, seed=3)
    assert a.shape == (8, 32) and torch.equal(a, b)
    assert bool(((a[:, 1:] - a[:, :-1]) == 1).all())  # contiguous windows
    with pytest.raises(RiaInputError, match="fewer than seqlen"):
        sample_windows(torch.arange(10), 2, 32)


@pytest.mark.parametrize("bad", [torch.zeros(4, 8), torch.zeros(8, dtype=torch.long), [[1, 2]]])
def test_check_calibration_rejects(bad):
    with pytest.raises(RiaInputError, match="calibration must be a LongTensor"):
        check_calibration(bad)
