"""Perplexity with the standard protocol of the Wanda/RIA/SparseGPT repositories:
the test text is tokenised as one sequence, split into non-overlapping windows of
``seqlen`` tokens (a trailing partial window is dropped), and
``ppl = exp(total NLL over all predicted tokens / number of predicted tokens)``.

Text comes from token ids, a string (with a tokenizer), a local file, or online
wikitext2 / c4 / ptb through ``datasets`` (imported lazily).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ._errors import RiaInputError
from .calibration import DATASETS, check_seqlen, load_dataset_text, model_max_positions, read_text, tokenize_text
from .models.base import module_device


def eval_tokens(tokenizer, *, text: str | None = None, path: str | Path | None = None,
                dataset: str | None = None, seqlen: int | None = None, encoding: str = "utf-8") -> torch.Tensor:
    """1-D LongTensor of evaluation token ids from exactly one of ``text``, ``path``
    (local file) or ``dataset`` (wikitext2 | c4 | ptb, test split; c4 uses its
    validation documents and is truncated to 256 windows as in the seeds). A file is decoded
    strictly with ``encoding`` (undecodable bytes are an error naming the byte offset)."""
    given = [x is not None for x in (text, path, dataset)]
    if sum(given) != 1:
        raise RiaInputError("pass exactly one of text=, path= or dataset= for evaluation")
    if dataset is not None:
        if dataset not in DATASETS:
            raise RiaInputError(f"dataset must be one of {DATASETS}, got {dataset!r}")
        text = load_dataset_text(dataset, "test")
    elif path is not None:
        text = read_text(path, encoding)
    ids = tokenize_text(tokenizer, text, add_special_tokens=True)
    if dataset == "c4" and seqlen:
        ids = ids[: 256 * seqlen]
    return ids


@dataclass(frozen=True)
class PerplexityResult:
    """A perplexity and exactly what it was computed on: ``windows`` windows of ``seqlen``
    tokens (``tokens = windows * seqlen``; ``predicted_tokens = windows * (seqlen - 1)``)
    out of ``available_tokens``; ``max_windows`` is the cap that was applied (or None)."""

    ppl: float
    windows: int
    seqlen: int
    tokens: int
    predicted_tokens: int
    available_tokens: int
    max_windows: int | None


def perplexity(model: nn.Module, token_ids_or_text: torch.Tensor | str, seqlen: int, *,
               tokenizer=None, batch_size: int = 1, max_windows: int | None = None,
               progress: bool = False) -> float:
    """Perplexity of ``model`` on 1-D (or [1, N]) token ids, or on a string with
    ``tokenizer``, in non-overlapping windows of ``seqlen`` tokens (at most
    ``max_windows``). :func:`evaluate_perplexity` also says how many tokens were used."""
    return evaluate_perplexity(model, token_ids_or_text, seqlen, tokenizer=tokenizer, batch_size=batch_size,
                               max_windows=max_windows, progress=progress).ppl


@torch.no_grad()
def evaluate_perplexity(model: nn.Module, token_ids_or_text: torch.Tensor | str, seqlen: int, *,
                        tokenizer=None, batch_size: int = 1, max_windows: int | None = None,
                        progress: bool = False, desc: str = "perplexity") -> PerplexityResult:
    """:func:`perplexity` with the token counts it actually used."""
    if isinstance(token_ids_or_text, str):
        if tokenizer is None:
            raise RiaInputError("perplexity on a string needs tokenizer=")
        ids = tokenize_text(tokenizer, token_ids_or_text, add_special_tokens=True)
    elif isinstance(token_ids_or_text, torch.Tensor) and not token_ids_or_text.is_floating_point() \
            and not token_ids_or_text.is_complex() and token_ids_or_text.dtype != torch.bool:
        ids = token_ids_or_text.reshape(-1).long()
    else:
        raise RiaInputError(f"perplexity needs an integer tensor of token ids or a string, "
                            f"got {type(token_ids_or_text).__name__}")
    if isinstance(seqlen, bool) or not isinstance(seqlen, int) or seqlen < 2:
        raise RiaInputError(f"seqlen must be an integer >= 2, got {seqlen!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RiaInputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    check_seqlen(seqlen, model_max_positions(model))
    if max_windows is not None and (isinstance(max_windows, bool) or not isinstance(max_windows, int)
                                    or max_windows < 1):
        raise RiaInputError(f"max_windows must be an integer >= 1 or None, got {max_windows!r}")
    nwin = ids.numel() // seqlen
    if max_windows is not None:
        nwin = min(nwin, max_windows)
    if nwin < 1:
        raise RiaInputError(f"evaluation text has {ids.numel()} tokens, fewer than one window of {seqlen}")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise RiaInputError(f"token ids must be in [0, vocab_size={vocab}), got [{int(ids.min())}, {int(ids.max())}]")
    device = module_device(model.get_input_embeddings())
    windows = ids[: nwin * seqlen].reshape(nwin, seqlen)
    was_training = model.training
    model.eval()
    nll_sum, count = 0.0, 0
    rng = range(0, nwin, batch_size)
    if progress:
        from tqdm.auto import tqdm
        rng = tqdm(rng, desc=desc, unit="batch")
    try:
        for s in rng:
            batch = windows[s:s + batch_size].to(device)
            logits = model(input_ids=batch, use_cache=False).logits
            target = batch[:, 1:].to(logits.device)
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                                   reduction="sum")
            nll_sum += float(loss)
            count += target.numel()
    finally:
        model.train(was_training)
    mean_nll = nll_sum / count
    ppl = math.exp(mean_nll) if mean_nll < 709.0 else math.inf  # exp overflows float64 past ~709.78
    return PerplexityResult(ppl=ppl, windows=nwin, seqlen=seqlen, tokens=nwin * seqlen,
                            predicted_tokens=count, available_tokens=int(ids.numel()), max_windows=max_windows)
