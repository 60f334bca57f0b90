"""Zero-shot evaluation through lm-evaluation-harness on the in-memory model."""
from __future__ import annotations

from ._errors import RiaInputError

DEFAULT_TASKS = ("boolq", "rte", "hellaswag", "arc_challenge", "mnli")


def evaluate_zero_shot(model, tokenizer, tasks=DEFAULT_TASKS, *, batch_size: int = 8, limit: int | None = None) -> dict:
    """Accuracy per task (lm-eval's ``acc``), on ``model`` as it is in memory."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise RiaInputError("zero-shot evaluation needs lm-evaluation-harness: pip install lm-eval") from None
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), limit=limit)
    except Exception as exc:  # task download needs network
        raise RiaInputError(f"zero-shot evaluation failed ({type(exc).__name__}: {exc}); "
                            "its task data is downloaded from the hub, which needs network access") from None
    return {task: {k: v for k, v in res.items() if isinstance(v, (int, float))}
            for task, res in out["results"].items()}
