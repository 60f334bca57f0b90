"""Calibration data and activation statistics.

Token windows come from a local text file (tokenise, ``nsamples`` random windows
of ``seqlen`` tokens drawn with ``seed``) or, online, from c4 / wikitext2 / ptb
through ``datasets`` (imported lazily), as in the Wanda and RIA repositories.

Statistics are float32 running sums accumulated by forward hooks: the sum of
squares per input channel (``act_norm = sqrt(sum_sq)``) and, when asked, the sum
``X^T X`` (the Hessian SparseGPT needs). Inputs are never stored. Linears that
read the same tensor (q/k/v, gate/up) share one ``LinearStats``.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from ._errors import RiaInputError

DATASETS = ("wikitext2", "c4", "ptb")
_C4_FILES = {"train": "en/c4-train.00000-of-01024.json.gz",
             "validation": "en/c4-validation.00000-of-00008.json.gz"}


# --------------------------------------------------------------------- text ---
def read_text(path: str | Path, encoding: str = "utf-8", *, flag: str | None = None) -> str:
    """The text of ``path``, decoded strictly: bytes invalid in ``encoding`` are a RiaInputError
    naming the file and the byte offset (see :mod:`ria_kernels._text`), never replaced."""
    from ._text import read_text as _read_text
    return _read_text(path, encoding, flag)


def tokenize_text(tokenizer, text: str, *, add_special_tokens: bool = False) -> torch.Tensor:
    """1-D LongTensor of token ids for ``text``."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=add_special_tokens).input_ids[0]
    if ids.numel() == 0:
        raise RiaInputError("the text is empty after tokenisation")
    return ids.long()


def model_max_positions(model) -> int | None:
    """The longest sequence ``model`` was built for (``config.max_position_embeddings``), or None."""
    value = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def tokenizer_max_length(tokenizer) -> int | None:
    """``tokenizer.model_max_length`` when it is a real limit (HF uses ~1e30 for "none")."""
    value = getattr(tokenizer, "model_max_length", None)
    return int(value) if isinstance(value, int) and 0 < value <= 10_000_000 else None


def check_seqlen(seqlen: int, max_positions: int | None, name: str = "seqlen") -> None:
    """RiaInputError when windows of ``seqlen`` tokens do not fit the model's positions (the
    same check and message in the CLI, calibration and perplexity)."""
    if max_positions is not None and isinstance(seqlen, int) and seqlen > max_positions:
        raise RiaInputError(f"{name}={seqlen} exceeds the model's max_position_embeddings={max_positions}")


def _max_positions(tokenizer, model, max_positions) -> int | None:
    if max_positions is not None:
        if isinstance(max_positions, bool) or not isinstance(max_positions, int) or max_positions < 2:
            raise RiaInputError(f"max_positions must be an integer >= 2 or None, got {max_positions!r}")
        return max_positions
    if model is not None:
        return model_max_positions(model)
    return tokenizer_max_length(tokenizer)


def _check_window_args(nsamples, seqlen) -> None:
    if isinstance(nsamples, bool) or not isinstance(nsamples, int) or nsamples < 1:
        raise RiaInputError(f"nsamples must be an integer >= 1, got {nsamples!r}")
    if isinstance(seqlen, bool) or not isinstance(seqlen, int) or seqlen < 2:
        raise RiaInputError(f"seqlen must be an integer >= 2, got {seqlen!r}")


def sample_windows(token_ids: torch.Tensor, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """``nsamples`` random windows of ``seqlen`` consecutive tokens: LongTensor [nsamples, seqlen]."""
    _check_window_args(nsamples, seqlen)
    token_ids = token_ids.reshape(-1)
    n = token_ids.numel()
    if n <= seqlen:
        raise RiaInputError(f"calibration text has {n} tokens, fewer than seqlen+1={seqlen + 1}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, n - seqlen, (nsamples,), generator=gen)
    return torch.stack([token_ids[s:s + seqlen] for s in starts.tolist()]).long()


def calibration_from_text(tokenizer, text: str, nsamples: int, seqlen: int, seed: int = 0, *,
                          model=None, max_positions: int | None = None) -> torch.Tensor:
    """Random windows from ``text``; see :func:`calibration_from_file`."""
    _check_window_args(nsamples, seqlen)
    check_seqlen(seqlen, _max_positions(tokenizer, model, max_positions))
    return sample_windows(tokenize_text(tokenizer, text), nsamples, seqlen, seed)


def calibration_from_file(tokenizer, path: str | Path, nsamples: int, seqlen: int, seed: int = 0, *,
                          model=None, max_positions: int | None = None, encoding: str = "utf-8") -> torch.Tensor:
    """``nsamples`` random windows of ``seqlen`` tokens from a local text file (the offline
    calibration source): LongTensor [nsamples, seqlen]. ``seqlen`` must fit the model's
    positions: ``max_positions``, else ``model.config.max_position_embeddings``, else the
    tokenizer's ``model_max_length`` (the same check as ``ria-prune --seqlen``). The file is
    decoded strictly with ``encoding``."""
    _check_window_args(nsamples, seqlen)
    limit = _max_positions(tokenizer, model, max_positions)
    check_seqlen(seqlen, limit)
    return calibration_from_text(tokenizer, read_text(path, encoding), nsamples, seqlen, seed, max_positions=limit)


# ----------------------------------------------------------------- datasets ---
def _datasets():
    try:
        from datasets import load_dataset
    except ImportError:
        raise RiaInputError("loading c4/wikitext2/ptb needs the `datasets` package: pip install datasets "
                            "(or pass a local text file)") from None
    return load_dataset


def _load(name: str, split: str):
    if name not in DATASETS:
        raise RiaInputError(f"dataset must be one of {DATASETS}, got {name!r}")
    load_dataset = _datasets()
    try:
        if name == "wikitext2":
            try:
                return load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
            except Exception:
                return load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split=split)
        if name == "ptb":
            return load_dataset("ptb_text_only", "penn_treebank", split=split)
        split = "validation" if split == "test" else split
        return load_dataset("allenai/c4", data_files={split: _C4_FILES[split]}, split=split)
    except Exception as exc:  # network or hub errors
        raise RiaInputError(f"could not load dataset {name!r} ({type(exc).__name__}: {exc}); "
                            "without network pass a local text file instead") from None


def load_dataset_text(name: str, split: str) -> str:
    """Text of a standard dataset split joined as in the seeds' evaluation
    (wikitext2: ``"\\n\\n"``; ptb: ``" "``; c4 validation: the first 1100 documents)."""
    ds = _load(name, split)
    if name == "wikitext2":
        return "\n\n".join(ds["text"])
    if name == "ptb":
        return " ".join(ds["sentence"])
    return " ".join(ds[:1100]["text"])


def calibration_from_dataset(tokenizer, name: str, nsamples: int, seqlen: int, seed: int = 0, *,
                             model=None, max_positions: int | None = None) -> torch.Tensor:
    """Calibration windows as the Wanda/RIA loaders draw them: c4 picks random
    training documents longer than ``seqlen`` and a random window in each;
    wikitext2/ptb take random windows of the tokenised training split.
    ``seqlen`` is checked as in :func:`calibration_from_file`."""
    _check_window_args(nsamples, seqlen)
    check_seqlen(seqlen, _max_positions(tokenizer, model, max_positions))
    if name != "c4":
        return sample_windows(tokenize_text(tokenizer, load_dataset_text(name, "train")), nsamples, seqlen, seed)
    docs = _load(name, "train")
    gen = torch.Generator().manual_seed(seed)
    out, tries = [], 0
    while len(out) < nsamples:
        tries += 1
        if tries > 100 * nsamples:
            raise RiaInputError(f"c4: too few documents longer than seqlen={seqlen} tokens")
        doc = docs[int(torch.randint(0, len(docs), (1,), generator=gen))]["text"]
        ids = tokenize_text(tokenizer, doc) if doc.strip() else torch.zeros(0, dtype=torch.long)
        if ids.numel() <= seqlen:
            continue
        s = int(torch.randint(0, ids.numel() - seqlen, (1,), generator=gen))
        out.append(ids[s:s + seqlen])
    return torch.stack(out)


def check_calibration(calibration, vocab_size: int | None = None) -> None:
    """RiaInputError unless ``calibration`` is a LongTensor [nsamples, seqlen] of ids in the vocabulary."""
    if not isinstance(calibration, torch.Tensor) or calibration.dtype != torch.long or calibration.dim() != 2:
        desc = f"{type(calibration).__name__}" if not isinstance(calibration, torch.Tensor) else \
            f"{calibration.dtype} tensor of shape {tuple(calibration.shape)}"
        raise RiaInputError(f"calibration must be a LongTensor [nsamples, seqlen] of token ids, got {desc}")
    if calibration.shape[0] < 1 or calibration.shape[1] < 1:
        raise RiaInputError(f"calibration is empty: shape {tuple(calibration.shape)}")
    if vocab_size is not None:
        lo, hi = int(calibration.min()), int(calibration.max())
        if lo < 0 or hi >= vocab_size:
            raise RiaInputError(f"calibration token ids must be in [0, vocab_size={vocab_size}), got [{lo}, {hi}]")


# -------------------------------------------------------------------- stats ---
class LinearStats:
    """Running float32 statistics of one linear's inputs: ``sq_sum[j] = sum_t x_tj^2``,
    ``tokens`` and optionally ``hessian = sum_t x_t^T x_t``. Allocated on the device of
    the first batch when ``device`` is None."""

    def __init__(self, in_features: int, device: torch.device | str | None = None, need_hessian: bool = False):
        self.in_features = in_features
        self.need_hessian = need_hessian
        self.tokens = 0
        self.sq_sum = self.hessian = None
        if device is not None and torch.device(device).type != "meta":
            self._alloc(torch.device(device))

    def _alloc(self, device: torch.device) -> None:
        self.sq_sum = torch.zeros(self.in_features, dtype=torch.float32, device=device)
        if self.need_hessian:
            self.hessian = torch.zeros(self.in_features, self.in_features, dtype=torch.float32, device=device)

    def add(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.in_features:
            raise RiaInputError(f"input width {x.shape[-1]} != in_features {self.in_features}")
        if self.sq_sum is None:
            self._alloc(x.device)
        x = x.detach().reshape(-1, x.shape[-1]).to(self.sq_sum.device, torch.float32)
        self.sq_sum += x.pow(2).sum(0)
        if self.hessian is not None:
            self.hessian.addmm_(x.t(), x)
        self.tokens += x.shape[0]

    @property
    def act_norm(self) -> torch.Tensor:
        """l2 norm of each input channel over all calibration tokens."""
        if self.sq_sum is None:
            raise RuntimeError("LinearStats saw no input")
        return self.sq_sum.sqrt()


@contextmanager
def collect_stats(linears: dict[str, nn.Linear], need_hessian: bool = False,
                  shared: Iterable[Iterable[str]] | None = None):
    """Attach forward hooks that fill one ``LinearStats`` per linear while the block runs.

    ``shared``: groups of names whose linears read the same tensor (e.g. q/k/v); each
    group gets ONE stats object (one hook, one Hessian), mapped under every name."""
    stats: dict[str, LinearStats] = {}
    hooked: list[str] = []
    for group in (shared or ()):
        names = [n for n in group if n in linears]
        if not names:
            continue
        s = LinearStats(linears[names[0]].in_features, None, need_hessian)
        for n in names:
            stats[n] = s
        hooked.append(names[0])
    for name, lin in linears.items():
        if name not in stats:
            stats[name] = LinearStats(lin.in_features, None, need_hessian)
            hooked.append(name)
    handles = [linears[name].register_forward_hook(lambda mod, inp, out, s=stats[name]: s.add(inp[0]))
               for name in hooked]
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()
