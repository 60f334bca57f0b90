import math
import sys

import pytest
import torch
import torch.nn.functional as F

from ria_kernels import RiaInputError
from ria_kernels.evaluation import eval_tokens, evaluate_perplexity, perplexity
from conftest import make_calibration, make_text, make_tiny_model, make_tiny_tokenizer


@torch.no_grad()
def _manual(model, ids, seqlen):
    nwin = ids.numel() // seqlen
    nll, count = 0.0, 0
    for w in ids[: nwin * seqlen].reshape(nwin, seqlen):
        logits = model(input_ids=w[None]).logits[0].double()
        nll += float(F.cross_entropy(logits[:-1], w[1:], reduction="sum"))
        count += seqlen - 1
    return math.exp(nll / count)


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_perplexity_matches_manual_protocol(family):
    model = make_tiny_model(family)
    ids = make_calibration(1, 100, seed=2).reshape(-1)
    seqlen = 24  # 4 windows, 4 trailing tokens dropped
    expect = _manual(model, ids, seqlen)
    assert perplexity(model, ids, seqlen, batch_size=3) == pytest.approx(expect, rel=1e-5)
    assert perplexity(model, ids[None], seqlen) == pytest.approx(expect, rel=1e-5)  # [1, N] accepted
    assert perplexity(model, ids, seqlen, max_windows=1) == pytest.approx(_manual(model, ids[:24], 24), rel=1e-5)


def test_perplexity_on_text_and_file(tmp_path):
    model = make_tiny_model("qwen2")
    tok = make_tiny_tokenizer(tmp_path / "tok")
    text = make_text(200, seed=7)
    (tmp_path / "e.txt").write_text(text)
    ids = eval_tokens(tok, path=tmp_path / "e.txt")
    assert ids.dtype == torch.long and ids.numel() == 200
    assert torch.equal(ids, eval_tokens(tok, text=text))
    assert perplexity(model, text, 32, tokenizer=tok) == pytest.approx(_manual(model, ids, 32), rel=1e-5)
    with pytest.raises(RiaInputError, match="needs tokenizer"):
        perplexity(model, text, 32)
    with pytest.raises(RiaInputError, match="exactly one"):
        eval_tokens(tok, text=text, path=tmp_path / "e.txt")
    with pytest.raises(RiaInputError, match="not found"):
        eval_tokens(tok, path=tmp_path / "nope.txt")


def test_dataset_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(RiaInputError, match="`datasets` package"):
        eval_tokens(None, dataset="wikitext2")
    with pytest.raises(RiaInputError, match="dataset must be one of"):
        eval_tokens(None, dataset="lambada")


def test_bad_inputs():
    model = make_tiny_model("llama")
    with pytest.raises(RiaInputError, match="fewer than one window"):
        perplexity(model, torch.arange(10), 32)
    with pytest.raises(RiaInputError, match="seqlen must be"):
        perplexity(model, torch.arange(10), 1)
    with pytest.raises(RiaInputError, match="max_position_embeddings=256"):
        perplexity(model, torch.arange(1000) % 128, 512)
    with pytest.raises(RiaInputError, match="vocab_size=128"):
        perplexity(model, torch.arange(300), 32)
    with pytest.raises(RiaInputError, match="integer tensor of token ids"):
        perplexity(model, torch.rand(100), 32)
    with pytest.raises(RiaInputError, match="batch_size"):
        perplexity(model, torch.arange(100), 32, batch_size=0)


def test_evaluate_perplexity_reports_the_tokens_used():
    """Row 5 of issue #13: the window cap is visible in the result."""
    model = make_tiny_model("llama")
    ids = make_calibration(1, 330).reshape(-1)
    res = evaluate_perplexity(model, ids, 32, max_windows=3)
    assert (res.windows, res.tokens, res.predicted_tokens, res.available_tokens, res.max_windows) == (3, 96, 93, 330, 3)
    assert res.ppl == pytest.approx(perplexity(model, ids, 32, max_windows=3))
    full = evaluate_perplexity(model, ids, 32)
    assert full.windows == 10 and full.tokens == 320 and full.max_windows is None
    with pytest.raises(RiaInputError, match="max_windows must be an integer >= 1"):
        evaluate_perplexity(model, ids, 32, max_windows=0)
