"""Perplexity with the standard protocol: the test text is concatenated,
split into non-overlapping windows of ``seqlen`` tokens, and
``ppl = exp(sum of window NLL * seqlen / (windows * seqlen))``."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._errors import RiaInputError


@torch.no_grad()
def perplexity(model: nn.Module, token_ids: torch.Tensor, seqlen: int, *, batch_size: int = 1,
               max_windows: int | None = None, progress: bool = False) -> float:
    """Perplexity of ``model`` on 1-D ``token_ids`` (or [1, N]) in windows of ``seqlen``."""
    ids = token_ids.reshape(-1)
    if seqlen < 2:
        raise RiaInputError(f"seqlen must be >= 2, got {seqlen}")
    nwin = ids.numel() // seqlen
    if max_windows is not None:
        nwin = min(nwin, max_windows)
    if nwin < 1:
        raise RiaInputError(f"evaluation text has {ids.numel()} tokens, fewer than one window of {seqlen}")
    device = model.get_input_embeddings().weight.device
    windows = ids[: nwin * seqlen].reshape(nwin, seqlen)
    nll_sum, count = 0.0, 0
    rng = range(0, nwin, batch_size)
    if progress:
        from tqdm.auto import tqdm
        rng = tqdm(rng, desc="perplexity", unit="batch")
    for s in rng:
        batch = windows[s:s + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits.float()
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1).to(logits.device),
                               reduction="sum")
        nll_sum += float(loss)
        count += batch[:, 1:].numel()
    return math.exp(nll_sum / count)
