"""Zero-shot evaluation through lm-evaluation-harness on the in-memory model
(no save/reload round trip). Task data comes from the HuggingFace hub, so it needs
network access; without it the error says so."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from ._errors import RiaInputError

DEFAULT_TASKS = ("boolq", "rte", "hellaswag", "arc_challenge", "mnli")


def require_lm_eval():
    """The ``lm_eval`` module, or RiaInputError saying how to install it."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM  # noqa: F401
    except ImportError:
        raise RiaInputError("zero-shot evaluation needs lm-evaluation-harness: pip install lm-eval") from None
    return lm_eval


def evaluate_zero_shot(model: nn.Module, tokenizer, tasks: Sequence[str] = DEFAULT_TASKS, *, batch_size: int = 8,
                       limit: int | None = None) -> dict:
    """Per task, lm-eval's numeric metrics (``acc``, ``acc_norm``, ...) of ``model`` as it is in memory."""
    tasks = list(tasks)
    if not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise RiaInputError(f"tasks must be a non-empty list of lm-eval task names, got {tasks!r}")
    lm_eval = require_lm_eval()
    from lm_eval.models.huggingface import HFLM
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        out = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit)
    except Exception as exc:  # task download needs network
        raise RiaInputError(f"zero-shot evaluation failed ({type(exc).__name__}: {exc}); "
                            "its task data is downloaded from the hub, which needs network access") from None
    return {task: {k: v for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for task, res in out["results"].items()}
