"""compressed-tensors ``sparse-24-bitmask`` <-> the compact 2:4 format (ria_kernels/compressed_tensors.py).

- The peer: ``assets/compressed_tensors/tiny_llama_24`` was written by compressed-tensors 0.14.0.1's own
  compressor (``make_peer_checkpoint.py``, committed beside it) and ``tiny_llama_24_dense.safetensors`` is
  what that library decompresses it to. ``load_sparse`` imports it straight into compact SparseLinear
  modules (no dense weight built) whose weights and logits equal the dense decompression.
- Our export, read back (a) by a reader written here from the documented format (numpy ``unpackbits``,
  little bit order) and (b) by compressed-tensors 0.14.0.1 + transformers 4.57 themselves, in their own
  venv (``$RIA_CT014_VENV``, default ``~/.cache/ria-kernels/venv-ct014``, made by ``.ci/run``; skipped
  without it unless ``RIA_CT014_REQUIRED=1``), equals our masked weights bit for bit.
- Sharded import, bad input (one clear error, nothing written), and the peak host memory of a sharded
  import (<= 1.2x the compressed bytes, ``scripts/measure_ct_import_memory.py`` in a subprocess).
"""
from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_calibration, make_tiny_model
from ria_kernels import RiaInputError, SparseLinear, load_sparse, prune_model, save_sparse, to_sparse_inference
from ria_kernels import compressed_tensors as ct
from ria_kernels.inference import detect_2to4, why_not_2to4
from ria_kernels.ops.sparse24_mm import compress_24, decompress_24

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).resolve().parent / "assets" / "compressed_tensors"
PEER = ASSETS / "tiny_llama_24"
PEER_DENSE = ASSETS / "tiny_llama_24_dense.safetensors"
VENV = Path(os.environ.get("RIA_CT014_VENV") or Path.home() / ".cache" / "ria-kernels" / "venv-ct014")
IDS = make_calibration(2, 12, seed=5)


def dense_reference_model(dtype: torch.dtype):
    """The peer's config as a plain HF model holding the weights compressed-tensors decompresses to."""
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.from_pretrained(PEER)
    del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    model.load_state_dict({k: v.to(dtype) for k, v in load_file(str(PEER_DENSE)).items()})
    return model


def logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids % model.config.vocab_size).logits


def documented_decompress(values: torch.Tensor, bitmask: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """Reader written from compressed-tensors' documented format, independent of our tables:
    ``numpy.unpackbits(bitmask, axis=-1, count=K, bitorder="little")`` is the keep-mask, the values fill
    its True positions in row-major order."""
    mask = np.unpackbits(bitmask.numpy(), axis=-1, count=shape[1], bitorder="little").astype(bool)
    per_group = mask.reshape(shape[0], -1, 4).sum(-1)
    assert (per_group == 2).all()
    dense = torch.zeros(shape, dtype=values.dtype)
    dense[torch.from_numpy(mask)] = values.flatten()
    return dense


# --------------------------------------------------------------------------- the nibble tables
def test_tables_are_inverse_and_cover_the_six_groups():
    valid = [m for m in range(16) if ct.MASK_TO_CODE[m] != 255]
    assert sorted(valid) == sorted(m for m in range(16) if bin(m).count("1") == 2) and len(valid) == 6
    for m in valid:
        code = ct.MASK_TO_CODE[m]
        i0, i1 = code & 3, code >> 2
        assert i0 < i1 and m == (1 << i0) | (1 << i1) and ct.CODE_TO_MASK[code] == m


@pytest.mark.parametrize("k", [8, 12, 36, 64])  # 12 and 36: an odd group count (padding nibble)
def test_meta_bitmask_conversion_matches_numpy_packbits(k):
    g = torch.Generator().manual_seed(k)
    w = torch.randn(7, k, generator=g)
    keep = torch.rand(7, k // 4, 4, generator=g).argsort(-1)[..., :2]
    w = w * torch.zeros(7, k // 4, 4).scatter_(-1, keep, 1.0).reshape(7, k)
    values, meta = compress_24(w)
    keep_mask = decompress_24(torch.ones_like(values), meta) != 0
    want = torch.from_numpy(np.packbits(keep_mask.numpy(), axis=-1, bitorder="little"))
    bitmask = ct.meta_to_bitmask(meta, k)
    assert torch.equal(bitmask, want)
    assert torch.equal(ct.bitmask_to_meta(bitmask, k), meta)
    assert torch.equal(documented_decompress(values, bitmask, [7, k]), w)


def test_bitmask_with_three_kept_columns_is_one_clear_error():
    meta = compress_24(torch.tensor([[1.0, 0, 2.0, 0, 0, 3.0, 4.0, 0]]))[1]
    bitmask = ct.meta_to_bitmask(meta, 8)
    bad = bitmask.clone()
    bad[0, 0] |= 0b0010  # group 0 now keeps columns 0, 1, 2
    with pytest.raises(RiaInputError, match=r"row 0, columns 0\.\.3 keep 3 column\(s\) \[0, 1, 2\].*exactly 2"):
        ct.bitmask_to_meta(bad, 8, "layer")


# --------------------------------------------------------------------------- the peer's checkpoint
def test_peer_checkpoint_imports_into_compact_format_without_dense_weights(monkeypatch):
    import ria_kernels.ops.sparse24_mm as ops
    import ria_kernels.sparse_linear.module as sl  # where SparseLinear looks it up

    def no_dense(*_a, **_k):
        raise AssertionError("a dense weight was materialised during the import")
    monkeypatch.setattr(sl, "decompress_24", no_dense)
    monkeypatch.setattr(ops, "decompress_24", no_dense)
    model = load_sparse(PEER)  # detected from config.json: no ria_sparse.json
    monkeypatch.undo()
    ref = load_file(str(PEER_DENSE))
    sparse = {n: m for n, m in model.named_modules() if isinstance(m, SparseLinear)}
    assert len(sparse) == 14 and all(m.weight is None and m.memory == "compact" for m in sparse.values())
    for name, m in sparse.items():
        assert m.values.dtype == torch.bfloat16
        assert torch.equal(m.dense_weight(), ref[f"{name}.weight"]), name
    assert type(model.lm_head) is torch.nn.Linear  # left dense, as the file says
    assert torch.equal(model.lm_head.weight, ref["lm_head.weight"])
    # the compressed values are byte-identical to the file's (the two formats share them)
    raw = load_file(str(PEER / "model.safetensors"))
    q = "model.layers.1.mlp.up_proj"
    assert torch.equal(sparse[q].values.view(torch.int16), raw[f"{q}.compressed"].view(torch.int16))


def test_peer_checkpoint_logits_equal_the_dense_decompressed_model():
    # float32 compact: the compact kernel's CPU reference is float32 F.linear on the decompressed weight
    assert torch.equal(logits(load_sparse(PEER, dtype=torch.float32)), logits(dense_reference_model(torch.float32)))
    # bf16 as stored: memory="dense" runs F.linear on the same weights -> identical; compact rounds once
    ref = logits(dense_reference_model(torch.bfloat16))
    assert torch.equal(logits(load_sparse(PEER, memory="dense")), ref)
    got = logits(load_sparse(PEER)).float()
    assert (got - ref.float()).abs().max().item() <= 2e-2 * ref.float().abs().max().item()


def test_reexport_of_the_peer_checkpoint_is_byte_identical(tmp_path):
    save_sparse(load_sparse(PEER), tmp_path / "out", format="compressed-tensors")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (PEER / "model.safetensors").read_bytes()
    qc = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["sparsity_config"]["format"] == "sparse-24-bitmask"
    assert qc["sparsity_config"]["ignore"] == ["lm_head"] and len(qc["sparsity_config"]["targets"]) == 14


# --------------------------------------------------------------------------- our export
_CONVERTED: dict = {}


def converted(family: str, dtype: torch.dtype = torch.float32, permute: bool = False):
    """(masked dense model, report, converted model) for a tiny model pruned to 2:4 by magnitude."""
    key = (family, dtype, permute)
    if key not in _CONVERTED:
        model = make_tiny_model(family)
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for name, p in model.named_parameters():  # non-zero biases, non-trivial norms
                if p.dim() == 1:
                    p.copy_((1.0 if "norm" in name else 0.0) + 0.3 * torch.randn(p.shape, generator=g))
        report = prune_model(model, make_calibration(), method="magnitude", sparsity="2:4", permute=permute,
                             lsa=False, progress=False)
        rotary = {n: b.clone() for n, b in model.named_buffers() if "inv_freq" in n}
        model = model.to(dtype)
        for n, b in rotary.items():  # as HF loads a checkpoint in a half dtype: rotary frequencies stay float32
            owner, _, attr = n.rpartition(".")
            setattr(model.get_submodule(owner), attr, b)
        _CONVERTED[key] = (model, report)
    dense, report = _CONVERTED[key]
    return dense, report, to_sparse_inference(copy.deepcopy(dense), report if permute else None)


def masked_weights(model) -> dict[str, torch.Tensor]:
    return {n: m.dense_weight() for n, m in model.named_modules() if isinstance(m, SparseLinear)}


EXPORTS = [("llama", torch.float32), ("qwen2", torch.bfloat16), ("opt", torch.float16)]


@pytest.mark.parametrize("family, dtype", EXPORTS)
def test_export_decompresses_to_our_masked_weights_bit_for_bit(tmp_path, family, dtype):
    dense, _, model = converted(family, dtype)
    save_sparse(model, tmp_path / "ct", format="compressed-tensors")
    files = load_file(str(tmp_path / "ct" / "model.safetensors"))
    ours = masked_weights(model)
    for name, w in ours.items():
        assert files[f"{name}.shape"].flatten().tolist() == list(w.shape)
        got = documented_decompress(files[f"{name}.compressed"], files[f"{name}.bitmask"], list(w.shape))
        assert torch.equal(got.view(torch.uint8), w.view(torch.uint8)), name  # bit for bit (+0.0 zeros)
        assert torch.equal(got, dense.get_submodule(name).weight)  # the masked dense weight
        assert f"{name}.weight" not in files
    # round trip back into the compact format: the same values / meta / other tensors
    back = load_sparse(tmp_path / "ct")
    for name, m in back.named_modules():
        if isinstance(m, SparseLinear):
            src = model.get_submodule(name)
            assert torch.equal(m.values, src.values) and torch.equal(m.meta, src.meta)
            assert (m.bias is None) == (src.bias is None) and (m.bias is None or torch.equal(m.bias, src.bias))
    assert torch.equal(logits(back), logits(model))


def _peer_python() -> Path | None:
    py = VENV / "bin" / "python"
    if py.is_file():
        return py
    if os.environ.get("RIA_CT014_REQUIRED") == "1":
        pytest.fail(f"RIA_CT014_REQUIRED=1 but the compressed-tensors 0.14 venv {VENV} is missing (see .ci/run)")
    pytest.skip(f"no compressed-tensors 0.14 venv at {VENV} (.ci/run creates it; or set RIA_CT014_VENV)")


def test_export_read_back_by_compressed_tensors_and_transformers_457(tmp_path):
    py = _peer_python()
    pairs, models = [], {}
    for family, dtype in EXPORTS:
        _, _, model = converted(family, dtype)
        save_sparse(model, tmp_path / family, format="compressed-tensors")
        pairs += [str(tmp_path / family), str(tmp_path / f"{family}.back.safetensors")]
        models[family] = model
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    run = subprocess.run([str(py), str(ASSETS / "peer_read_back.py"), *pairs], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    info = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert info and all(i["compressed_tensors"] == "0.14.0.1" and i["transformers"].startswith("4.57") for i in info)
    for family, model in models.items():
        back = load_file(str(tmp_path / f"{family}.back.safetensors"))
        for name, w in masked_weights(model).items():
            for reader in ("hf", "ct"):
                got = back[f"{reader}.{name}.weight"]
                assert got.dtype == w.dtype and torch.equal(got.view(torch.uint8), w.view(torch.uint8)), \
                    (family, reader, name)
        state = model.state_dict()
        for key, t in state.items():  # every other tensor (norms, embeddings, biases, lm_head) as we hold it
            if key.rsplit(".", 1)[-1] in ("values", "meta"):
                continue
            assert torch.equal(back[f"hf.{key}"], t), (family, key)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_export_in_a_save_dtype_casts_floating_tensors_only(tmp_path, dtype):
    """save_sparse(dtype=...) with format='compressed-tensors' (ria-prune passes the source dtype): values
    and other floating tensors in ``dtype``, bitmasks and shapes unchanged, config.json says so."""
    _, _, model = converted("llama")
    save_sparse(model, tmp_path / "ct", format="compressed-tensors", dtype=dtype)
    files = load_file(str(tmp_path / "ct" / "model.safetensors"))
    ours = masked_weights(model)
    for name, w in ours.items():
        assert files[f"{name}.compressed"].dtype == dtype
        got = documented_decompress(files[f"{name}.compressed"], files[f"{name}.bitmask"], list(w.shape))
        assert torch.equal(got, w.to(dtype)), name
    assert all(t.dtype == dtype for k, t in files.items() if t.is_floating_point())
    assert json.loads((tmp_path / "ct" / "config.json").read_text())["dtype"] == str(dtype).replace("torch.", "")
    with pytest.raises(RiaInputError, match="dtype"):
        save_sparse(model, tmp_path / "bad", format="compressed-tensors", dtype=torch.int8)
    assert not (tmp_path / "bad").exists()


def test_export_refuses_a_permuted_model_and_writes_nothing(tmp_path):
    _, report, model = converted("llama", permute=True)
    with pytest.raises(RiaInputError, match="channel permutation.*permuted channel order"):
        save_sparse(model, tmp_path / "ct", report=report, format="compressed-tensors")
    assert not (tmp_path / "ct").exists() and list(tmp_path.iterdir()) == []


def test_unknown_save_format_is_refused(tmp_path):
    _, _, model = converted("llama")
    with pytest.raises(RiaInputError, match="format must be one of"):
        save_sparse(model, tmp_path / "x", format="gguf")
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- sharded import
def test_sharded_export_and_import(tmp_path):
    _, _, model = converted("llama", torch.bfloat16)
    ct.save_compressed_tensors(model, tmp_path / "sh", max_shard_size=20_000)
    shards = sorted(p.name for p in (tmp_path / "sh").glob("*.safetensors"))
    index = json.loads((tmp_path / "sh" / "model.safetensors.index.json").read_text())
    assert len(shards) > 2 and not (tmp_path / "sh" / "model.safetensors").exists()
    assert sorted(set(index["weight_map"].values())) == shards
    back = load_sparse(tmp_path / "sh")
    assert torch.equal(logits(back), logits(model))
    (tmp_path / "sh" / shards[1]).unlink()
    with pytest.raises(RiaInputError, match=f"missing shard {shards[1]}"):
        load_sparse(tmp_path / "sh")


def test_sharded_import_peak_host_memory_is_at_most_1_2x_the_compressed_bytes(tmp_path):
    """A 8-layer LLaMA (hidden 1024, ~135 MB compressed, 9 shards) written straight in the compressed
    format, imported in a fresh process: peak RSS during load_sparse minus the RSS before it."""
    script = ROOT / "scripts" / "measure_ct_import_memory.py"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    w = subprocess.run([sys.executable, str(script), "write", str(tmp_path / "big"), "--hidden", "1024",
                        "--layers", "8", "--shard-mb", "16"], capture_output=True, text=True, env=env, timeout=600)
    assert w.returncode == 0, w.stderr[-2000:]
    assert json.loads(w.stdout.splitlines()[-1])["shards"] > 1
    r = subprocess.run([sys.executable, str(script), "load", str(tmp_path / "big")], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads(r.stdout.splitlines()[-1])
    assert m["sparse_linears"] == 56 and m["compressed_bytes"] > 100e6
    assert m["model_bytes"] <= 1.01 * m["compressed_bytes"]  # what the model holds: the file's tensors
    assert m["import_peak_bytes"] <= 1.2 * m["compressed_bytes"], m


# --------------------------------------------------------------------------- bad input
def _copy_peer(tmp_path: Path) -> Path:
    d = tmp_path / "peer"
    shutil.copytree(PEER, d)
    return d


def _edit_tensors(d: Path, fn) -> None:
    t = load_file(str(d / "model.safetensors"))
    fn(t)
    save_file(t, str(d / "model.safetensors"), metadata={"format": "pt"})


def _edit_config(d: Path, fn) -> None:
    cfg = json.loads((d / "config.json").read_text())
    fn(cfg["quantization_config"])
    (d / "config.json").write_text(json.dumps(cfg))


def _bad_group(t):
    t["model.layers.0.mlp.up_proj.bitmask"][3, 1] = 0b0111_0011  # group 3 keeps 3 columns


def _bad_shape(t):
    t["model.layers.1.self_attn.o_proj.shape"] = torch.tensor([[32], [16]])


def _fp8(t):
    t["model.layers.0.self_attn.q_proj.compressed"] = t["model.layers.0.self_attn.q_proj.compressed"].to(
        torch.float8_e4m3fn)


def _quantized(qc):
    qc["format"] = "float-quantized"
    qc["config_groups"] = {"group_0": {"targets": ["Linear"], "format": "float-quantized",
                                       "weights": {"num_bits": 8, "type": "float"}}}


def _unstructured(qc):
    qc["sparsity_config"]["format"] = "sparse-bitmask"


@pytest.mark.parametrize("edit, kind, match", [
    (_bad_group, "tensors", r"up_proj\.bitmask: row 3, columns 12\.\.15 keep 3 column"),
    (_bad_shape, "tensors", r"o_proj\.shape is \[32, 16\], the model's .* is \[32, 32\]"),
    (_fp8, "tensors", r"F8_E4M3 \(fp8\) values"),
    (_quantized, "config", r"sparse sparse-24-bitmask \+ quantized format float-quantized"),
    (_unstructured, "config", r"sparsity format 'sparse-bitmask'\): only 'sparse-24-bitmask'"),
])
def test_bad_input_is_one_clear_error(tmp_path, edit, kind, match):
    d = _copy_peer(tmp_path)
    (_edit_tensors if kind == "tensors" else _edit_config)(d, edit)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(RiaInputError, match=match) as exc:
        load_sparse(d)
    assert "\n" not in str(exc.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_truncated_file_is_one_clear_error(tmp_path):
    d = _copy_peer(tmp_path)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(RiaInputError, match="outside the file"):
        load_sparse(d)


# --------------------------------------------------------------------------- dense checkpoints already 2:4
def test_to_sparse_inference_detects_dense_24_linears_and_says_why_others_stay_dense(caplog):
    dense, _, _ = converted("llama")
    model = copy.deepcopy(dense)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.add_(1.0)  # no longer 2:4
    found = detect_2to4(model)
    assert found["model.layers.1.mlp.up_proj"].startswith("2048 of 2048 groups of 4 have more than 2 non-zeros")
    assert sum(v is None for v in found.values()) == len(found) - 1
    with caplog.at_level(logging.INFO, logger="ria_kernels"):
        to_sparse_inference(model)
    text = caplog.text
    assert f"{len(found) - 1} of {len(found)} decoder linears are exactly 2:4" in text
    assert "model.layers.1.mlp.up_proj stays dense nn.Linear: 2048 of 2048 groups" in text
    assert type(model.model.layers[1].mlp.up_proj) is torch.nn.Linear
    assert isinstance(model.model.layers[1].mlp.down_proj, SparseLinear)
    assert torch.allclose(logits(model), logits(_with_dense_up(dense)), atol=1e-4)


def _with_dense_up(dense):
    m = copy.deepcopy(dense)
    with torch.no_grad():
        m.model.layers[1].mlp.up_proj.weight.add_(1.0)
    return m


def test_why_not_2to4_reasons():
    assert why_not_2to4(torch.zeros(4, 8)) is None
    assert why_not_2to4(torch.ones(4, 6)) == "in_features=6 is not divisible by 4"
    assert "8 of 8 groups" in why_not_2to4(torch.ones(4, 8))


# --------------------------------------------------------------------------- the CLI
def test_cli_exports_compressed_tensors_and_refuses_it_with_permute(tmp_path, capsys):
    from ria_kernels.cli import main
    out = tmp_path / "ct"
    assert main(["--sparsity-type", "2:4", "--method", "magnitude", "--no-eval", "--nsamples", "2", "--quiet",
                 "--device", "cpu", "--save-sparse", str(out), "--save-sparse-format", "compressed-tensors"]) == 0
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["sparsity_config"]["format"] == "sparse-24-bitmask"
    back = load_sparse(out)  # the embedded model: tied embeddings, re-tied on import
    assert back.lm_head.weight is back.model.embed_tokens.weight
    assert sum(isinstance(m, SparseLinear) for m in back.modules()) == 28
    capsys.readouterr()
    assert main(["--sparsity-type", "2:4", "--permute", "--no-eval", "--save-sparse", str(tmp_path / "p"),
                 "--save-sparse-format", "compressed-tensors"]) == 2
    assert "cannot hold a permuted model" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_cli_runs_a_compressed_tensors_checkpoint_without_pruning(tmp_path, capsys):
    from conftest import make_text, make_tiny_tokenizer
    from ria_kernels.cli import main
    _, _, model = converted("llama")
    src = tmp_path / "published"
    save_sparse(model, src, format="compressed-tensors", tokenizer=make_tiny_tokenizer(tmp_path / "tok"))
    text = tmp_path / "eval.txt"
    text.write_text(make_text(400))
    assert main(["--model", str(src), "--eval-text", str(text), "--seqlen", "16", "--max-eval-windows", "4",
                 "--quiet", "--save-sparse", str(tmp_path / "ours")]) == 0
    printed = capsys.readouterr().out
    assert "14 of 15 linears as compact SparseLinear, no pruning" in printed and "perplexity:" in printed
    again = load_sparse(tmp_path / "ours")  # re-saved in this package's format
    assert (tmp_path / "ours" / "ria_sparse.json").is_file()
    assert torch.equal(logits(again), logits(model))
    assert main(["--model", str(src), "--eval-text", str(text), "--permute", "--sparsity-type", "2:4"]) == 2
    assert "already 2:4 sparse" in capsys.readouterr().err
    assert main(["--model", str(src), "--eval-text", str(tmp_path / "missing.txt")]) == 2
    assert "--eval-text: text file not found" in capsys.readouterr().err


def test_dense_format_checkpoint_with_24_weights_is_compressed_linear_by_linear(tmp_path):
    """compressed-tensors' ``dense`` sparsity format (2:4 metadata over dense weights, as some published
    dense 2:4 models are stored): the linears that are exactly 2:4 become compact SparseLinear."""
    d = tmp_path / "dense24"
    d.mkdir()
    weights = load_file(str(PEER_DENSE))
    weights["model.layers.0.mlp.up_proj.weight"] = weights["model.layers.0.mlp.up_proj.weight"] + 1  # not 2:4
    save_file(weights, str(d / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((PEER / "config.json").read_text())
    cfg["quantization_config"]["sparsity_config"]["format"] = "dense"
    (d / "config.json").write_text(json.dumps(cfg))
    model = load_sparse(d)
    sparse = {n: m for n, m in model.named_modules() if isinstance(m, SparseLinear)}
    assert len(sparse) == 13 and "model.layers.0.mlp.up_proj" not in sparse
    assert all(m.weight is None for m in sparse.values())
    for n, m in sparse.items():
        assert torch.equal(m.dense_weight(), weights[f"{n}.weight"])
    assert type(model.lm_head) is torch.nn.Linear
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, weights["model.layers.0.mlp.up_proj.weight"])
