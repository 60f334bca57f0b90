import sys

import pytest
import torch

from ria_kernels import RiaInputError, get_adapter
from ria_kernels.calibration import (LinearStats, calibration_from_dataset, calibration_from_file,
                                     check_calibration, collect_stats, load_dataset_text, sample_windows)
from conftest import make_calibration, make_text, make_tiny_model, make_tiny_tokenizer


def _inputs_of(layer, names):
    seen = {n: [] for n in names}
    handles = [layer.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen[n].append(i[0].clone()))
               for n in names]
    return seen, handles


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_stats_equal_direct_computation(family):
    model = make_tiny_model(family)
    adapter = get_adapter(model)
    layer = adapter.layers()[1]
    calib = make_calibration(3, 10, seed=4)
    inputs = adapter.capture_layer_inputs(calib, batch_size=2)
    names = adapter.linear_names()
    seen, handles = _inputs_of(layer, names)
    shared = [g.linears for g in adapter.groups]
    with collect_stats(adapter.linears(layer), need_hessian=True, shared=shared) as stats:
        for hid, kw in zip(inputs.hidden, inputs.kwargs):
            adapter.run_layer(layer, hid, kw)
    for h in handles:
        h.remove()
    for n in names:
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in seen[n]]).double()
        s = stats[n]
        assert s.tokens == 30 and s.sq_sum.dtype == torch.float32
        torch.testing.assert_close(s.sq_sum.double(), (x ** 2).sum(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(s.act_norm.double(), x.norm(dim=0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(s.hessian.double(), x.T @ x, rtol=1e-4, atol=1e-4)
    # linears sharing an input share one stats object (one hook, one Hessian)
    for g in adapter.groups:
        assert len({id(stats[n]) for n in g.linears}) == 1


def test_stats_without_sharing_and_without_hessian():
    model = make_tiny_model("mistral")
    adapter = get_adapter(model)
    layer = adapter.layers()[0]
    inputs = adapter.capture_layer_inputs(make_calibration(2, 8))
    with collect_stats(adapter.linears(layer)) as stats:
        for hid, kw in zip(inputs.hidden, inputs.kwargs):
            adapter.run_layer(layer, hid, kw)
    q, k = stats["self_attn.q_proj"], stats["self_attn.k_proj"]
    assert q is not k and q.hessian is None and q.tokens == 16
    torch.testing.assert_close(q.sq_sum, k.sq_sum)
    # hooks are removed on exit
    assert not layer.self_attn.q_proj._forward_hooks


def test_linear_stats_accumulates_batches():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(2, 5, 6, generator=g), torch.randn(7, 6, generator=g).half()]
    s = LinearStats(6, need_hessian=True)
    for x in xs:
        s.add(x)
    full = torch.cat([x.reshape(-1, 6).double() for x in xs])
    assert s.tokens == 17
    torch.testing.assert_close(s.act_norm.double(), full.norm(dim=0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.hessian.double(), full.T @ full, rtol=1e-5, atol=1e-5)
    with pytest.raises(RiaInputError, match="in_features"):
        s.add(torch.randn(3, 5))


def test_sample_windows_deterministic_and_in_range():
    ids = torch.arange(1000)
    a = sample_windows(ids, 8, 32, seed=3)
    b = sample_windows(ids, 8, 32, seed=3)
    assert a.shape == (8, 32) and a.dtype == torch.long and torch.equal(a, b)
    assert not torch.equal(a, sample_windows(ids, 8, 32, seed=4))
    assert bool(((a[:, 1:] - a[:, :-1]) == 1).all())  # contiguous windows
    assert int(a.max()) < 1000
    with pytest.raises(RiaInputError, match="fewer than seqlen"):
        sample_windows(torch.arange(10), 2, 32)
    with pytest.raises(RiaInputError, match="nsamples"):
        sample_windows(ids, 0, 32)
    with pytest.raises(RiaInputError, match="seqlen"):
        sample_windows(ids, 2, 1)


def test_calibration_from_file(tmp_path):
    tok = make_tiny_tokenizer(tmp_path / "tok")
    (tmp_path / "c.txt").write_text(make_text(500, seed=3))
    calib = calibration_from_file(tok, tmp_path / "c.txt", 5, 20, seed=1)
    assert calib.shape == (5, 20) and calib.dtype == torch.long
    assert int(calib.min()) >= 2 and int(calib.max()) < 128  # real words, no <unk>
    with pytest.raises(RiaInputError, match="not found"):
        calibration_from_file(tok, tmp_path / "missing.txt", 5, 20)
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(RiaInputError, match="empty"):
        calibration_from_file(tok, tmp_path / "empty.txt", 5, 20)


def test_datasets_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    with pytest.raises(RiaInputError, match="needs the `datasets` package"):
        load_dataset_text("wikitext2", "test")
    with pytest.raises(RiaInputError, match="needs the `datasets` package"):
        calibration_from_dataset(None, "c4", 4, 16)
    with pytest.raises(RiaInputError, match="dataset must be one of"):
        load_dataset_text("pile", "train")


@pytest.mark.parametrize("bad", [torch.zeros(4, 8), torch.zeros(8, dtype=torch.long), [[1, 2]],
                                 torch.zeros(0, 8, dtype=torch.long)])
def test_check_calibration_rejects(bad):
    with pytest.raises(RiaInputError, match="calibration"):
        check_calibration(bad)


def test_check_calibration_vocab_range():
    check_calibration(torch.tensor([[0, 127]]), vocab_size=128)
    with pytest.raises(RiaInputError, match=r"vocab_size=128"):
        check_calibration(torch.tensor([[0, 128]]), vocab_size=128)
    with pytest.raises(RiaInputError, match=r"vocab_size=128"):
        check_calibration(torch.tensor([[-1, 3]]), vocab_size=128)


def test_seqlen_longer_than_the_model_is_the_clis_error(tmp_path):
    """Row 13 of issue #13: the API rejects what ria-prune rejects, with the same message."""
    tok = make_tiny_tokenizer(tmp_path / "tok")
    (tmp_path / "c.txt").write_text(make_text(3000))
    model = make_tiny_model("llama")  # max_position_embeddings=256
    with pytest.raises(RiaInputError, match="seqlen=300 exceeds the model's max_position_embeddings=256"):
        calibration_from_file(tok, tmp_path / "c.txt", 2, 300, model=model)
    with pytest.raises(RiaInputError, match="seqlen=300 exceeds the model's max_position_embeddings=128"):
        calibration_from_file(tok, tmp_path / "c.txt", 2, 300, max_positions=128)
    tok.model_max_length = 200  # a tokenizer that knows its model's limit is enough
    with pytest.raises(RiaInputError, match="max_position_embeddings=200"):
        calibration_from_file(tok, tmp_path / "c.txt", 2, 300)
    assert calibration_from_file(tok, tmp_path / "c.txt", 2, 256, model=model).shape == (2, 256)
    with pytest.raises(RiaInputError, match="nsamples must be an integer"):
        calibration_from_file(tok, tmp_path / "c.txt", True, 16)


def test_read_text_is_strict_and_names_the_byte_offset(tmp_path):
    """Issue #25 item 3: bytes invalid in the encoding are an error with the file and the byte
    offset (never replaced); another encoding is read when asked; directories are named as such."""
    from ria_kernels.calibration import read_text
    p = tmp_path / "latin1.txt"
    p.write_bytes("na\xefve caf\xe9".encode("latin-1"))
    with pytest.raises(RiaInputError, match=r"latin1.txt: not valid utf-8 text at byte offset 2 \(byte\(s\) ef"):
        read_text(p)
    assert read_text(p, "latin-1") == "na\xefve caf\xe9"
    with pytest.raises(RiaInputError, match="at byte offset 2"):
        calibration_from_file(make_tiny_tokenizer(tmp_path / "tok"), p, 1, 2)
    (tmp_path / "nul.txt").write_bytes(b"abc\x00def")
    with pytest.raises(RiaInputError, match="NUL byte at byte offset 3"):
        read_text(tmp_path / "nul.txt")
    with pytest.raises(RiaInputError, match="is a directory"):
        read_text(tmp_path)
    with pytest.raises(RiaInputError, match="text file not found"):
        read_text(tmp_path / "missing.txt")
    with pytest.raises(RiaInputError, match="unknown text encoding"):
        read_text(p, "no-such-codec")
