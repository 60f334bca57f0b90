import json

import pytest

from ria_kernels.cli import main
from conftest import make_text, make_tiny_model, make_tiny_tokenizer


@pytest.fixture
def tiny_checkpoint(tmp_path):
    model_dir = tmp_path / "model"
    make_tiny_model("llama").save_pretrained(model_dir)
    make_tiny_tokenizer(model_dir)
    (tmp_path / "calib.txt").write_text(make_text(2000, seed=1))
    (tmp_path / "eval.txt").write_text(make_text(2000, seed=2))
    return tmp_path


def _args(d, *extra):
    return ["--model", str(d / "model"), "--calib-text", str(d / "calib.txt"), "--eval-text", str(d / "eval.txt"),
            "--nsamples", "4", "--seqlen", "32", "--device", "cpu", "--quiet", *extra]


def test_help_explains(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--sparsity-type" in out and "N of every M" in out and "examples" in out


def test_prune_json_save_reload(tiny_checkpoint, capsys):
    from transformers import AutoModelForCausalLM
    d = tiny_checkpoint
    rc = main(_args(d, "--method", "ria", "--sparsity-type", "2:4", "--json", str(d / "r.json"),
                    "--save", str(d / "out")))
    assert rc == 0
    out = capsys.readouterr().out
    assert "dense  perplexity" in out and "pruned perplexity" in out
    r = json.loads((d / "r.json").read_text())
    assert r["actual_sparsity"] == pytest.approx(0.5)
    assert r["dense_ppl"] > 1 and r["pruned_ppl"] > 1
    model = AutoModelForCausalLM.from_pretrained(d / "out")
    w = model.model.layers[0].mlp.down_proj.weight
    assert float((w == 0).float().mean()) == pytest.approx(0.5)


@pytest.mark.parametrize("extra,msg", [
    (["--sparsity-ratio", "1.5"], "in [0, 1)"),
    (["--sparsity-type", "4:2"], "1 <= N < M"),
    (["--sparsity-type", "2:3"], "not divisible by M=3"),
    (["--calib-text", "/nonexistent/file.txt"], "not found"),
])
def test_bad_input_is_one_clear_line(tiny_checkpoint, capsys, extra, msg):
    rc = main(_args(tiny_checkpoint, *extra))
    err = capsys.readouterr().err
    assert rc == 2
    assert msg in err and "Traceback" not in err
    assert [ln for ln in err.splitlines() if "error" in ln.lower()] == [ln for ln in err.splitlines() if ln.startswith("ria-prune: error:")]
    assert len([ln for ln in err.splitlines() if ln.startswith("ria-prune: error:")]) == 1


def test_unsupported_model(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(tmp_path)
    rc = main(["--model", str(tmp_path), "--device", "cpu", "--calib-text", __file__, "--eval-text", __file__])
    assert rc == 2
    assert "unsupported model architecture 'gpt2'" in capsys.readouterr().err
