"""The embedded default model: a small LLaMA-architecture (GQA) causal LM trained by
``scripts/train_embedded.py`` on the Python standard library's documentation and
shipped with the package, with held-out calibration and evaluation text built the
same way. It lets ``ria-prune`` show dense vs pruned perplexity offline."""
from __future__ import annotations

from pathlib import Path

import torch

from ._errors import RiaInputError

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
EMBEDDED_DIR = ASSETS_DIR / "embedded"
SPLITS = ("calib", "eval")


def embedded_text_path(split: str) -> Path:
    """Held-out text shipped with the embedded model: ``"calib"`` or ``"eval"``."""
    if split not in SPLITS:
        raise RiaInputError(f"split must be one of {SPLITS}, got {split!r}")
    path = ASSETS_DIR / f"{split}.txt"
    if not path.is_file():
        raise RiaInputError(f"embedded {split} text missing at {path}; reinstall ria-kernels")
    return path


def load_embedded(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """``(model, tokenizer)`` of the embedded default model, loaded offline."""
    from transformers import AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerFast
    if not (EMBEDDED_DIR / "config.json").is_file():
        raise RiaInputError(f"embedded model missing at {EMBEDDED_DIR}; reinstall ria-kernels")
    model = LlamaForCausalLM.from_pretrained(EMBEDDED_DIR, dtype=dtype).to(device).eval()
    try:
        tok = PreTrainedTokenizerFast.from_pretrained(EMBEDDED_DIR)
    except Exception:
        tok = AutoTokenizer.from_pretrained(EMBEDDED_DIR)
    return model, tok
