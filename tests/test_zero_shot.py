import sys
import types

import pytest

from ria_kernels import RiaInputError
from ria_kernels.zero_shot import evaluate_zero_shot


def test_missing_lm_eval_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(RiaInputError, match="pip install lm-eval"):
        evaluate_zero_shot(object(), object(), ("rte",))


def _fake_lm_eval(monkeypatch, seen, fail=None):
    """An ``lm_eval`` stand-in recording what reaches it (the real one downloads task data)."""
    class HFLM:
        def __init__(self, pretrained, tokenizer, batch_size):
            seen.update(pretrained=pretrained, tokenizer=tokenizer, batch_size=batch_size)

    def simple_evaluate(model, tasks, limit):
        if fail:
            raise fail
        seen.update(lm=model, tasks=tasks, limit=limit)
        return {"results": {t: {"alias": t, "acc,none": 0.5 + i / 10, "acc_stderr,none": 0.01, "flag": True}
                            for i, t in enumerate(tasks)}}

    mod = types.ModuleType("lm_eval")
    mod.simple_evaluate = simple_evaluate
    hf = types.ModuleType("lm_eval.models.huggingface")
    hf.HFLM = HFLM
    monkeypatch.setitem(sys.modules, "lm_eval", mod)
    monkeypatch.setitem(sys.modules, "lm_eval.models", types.ModuleType("lm_eval.models"))
    monkeypatch.setitem(sys.modules, "lm_eval.models.huggingface", hf)
    return HFLM


def test_in_memory_model_reaches_lm_eval(monkeypatch):
    seen = {}
    hflm = _fake_lm_eval(monkeypatch, seen)
    model, tok = object(), object()
    res = evaluate_zero_shot(model, tok, ("boolq", "rte"), batch_size=4, limit=10)
    assert seen["pretrained"] is model and seen["tokenizer"] is tok and seen["batch_size"] == 4
    assert isinstance(seen["lm"], hflm) and seen["tasks"] == ["boolq", "rte"] and seen["limit"] == 10
    assert res == {"boolq": {"acc,none": 0.5, "acc_stderr,none": 0.01},
                   "rte": {"acc,none": 0.6, "acc_stderr,none": 0.01}}


def test_offline_task_download_is_a_clear_error(monkeypatch):
    _fake_lm_eval(monkeypatch, {}, fail=ConnectionError("hub unreachable"))
    with pytest.raises(RiaInputError, match="needs network access"):
        evaluate_zero_shot(object(), object(), ("rte",))
    with pytest.raises(RiaInputError, match="tasks must be"):
        evaluate_zero_shot(object(), object(), ())


def test_cli_checks_lm_eval_before_pruning(monkeypatch, capsys):
    from ria_kernels.cli import main
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    assert main(["--eval-zero-shot", "default", "--model", "/nonexistent", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "pip install lm-eval" in err
