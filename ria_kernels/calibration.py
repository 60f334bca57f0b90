"""Calibration data and activation statistics.

Statistics are float32 running sums accumulated by forward hooks: the sum of
squares per input channel (for ``act_norm``) and, when asked, the sum ``X^T X``
(the Hessian SparseGPT needs). Inputs are never stored.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ._errors import RiaInputError

DATASETS = ("wikitext2", "c4", "ptb")


def read_text(path: str | Path) -> str:
    p = Path(path)
    if not p.is_file():
        raise RiaInputError(f"text file not found: {p}")
    return p.read_text(encoding="utf-8", errors="replace")


def tokenize_text(tokenizer, text: str) -> torch.Tensor:
    """1-D LongTensor of token ids for ``text``."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    if ids.numel() == 0:
        raise RiaInputError("the text is empty after tokenisation")
    return ids


def sample_windows(token_ids: torch.Tensor, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """``nsamples`` random windows of ``seqlen`` tokens: LongTensor [nsamples, seqlen]."""
    if nsamples < 1:
        raise RiaInputError(f"nsamples must be >= 1, got {nsamples}")
    if seqlen < 2:
        raise RiaInputError(f"seqlen must be >= 2, got {seqlen}")
    n = token_ids.numel()
    if n <= seqlen:
        raise RiaInputError(f"calibration text has {n} tokens, fewer than seqlen+1={seqlen + 1}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, n - seqlen, (nsamples,), generator=gen)
    return torch.stack([token_ids[s:s + seqlen] for s in starts.tolist()])


def load_dataset_text(name: str, split: str) -> str:
    """Text of a standard dataset (needs ``datasets`` and network)."""
    if name not in DATASETS:
        raise RiaInputError(f"dataset must be one of {DATASETS}, got {name!r}")
    try:
        import datasets  # noqa: F401
        from datasets import load_dataset
    except ImportError:
        raise RiaInputError("loading c4/wikitext2/ptb needs the `datasets` package: "
                            "pip install datasets (or pass a local text file)") from None
    try:
        if name == "wikitext2":
            ds = load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
            return "\n\n".join(ds["text"])
        if name == "ptb":
            ds = load_dataset("ptb_text_only", "penn_treebank", split=split)
            return " ".join(ds["sentence"])
        files = {"train": "en/c4-train.00000-of-01024.json.gz",
                 "validation": "en/c4-validation.00000-of-00008.json.gz"}
        split = "validation" if split == "test" else split
        ds = load_dataset("allenai/c4", data_files={split: files[split]}, split=split)
        return "\n\n".join(ds["text"][:3000])
    except Exception as exc:  # network or hub errors
        raise RiaInputError(f"could not load dataset {name!r} ({type(exc).__name__}: {exc}); "
                            "without network pass a local text file instead") from None


def calibration_from_text(tokenizer, text: str, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    return sample_windows(tokenize_text(tokenizer, text), nsamples, seqlen, seed)


def check_calibration(calibration) -> None:
    if not isinstance(calibration, torch.Tensor) or calibration.dtype != torch.long or calibration.dim() != 2:
        desc = f"{type(calibration).__name__}" if not isinstance(calibration, torch.Tensor) else \
            f"{calibration.dtype} tensor of shape {tuple(calibration.shape)}"
        raise RiaInputError(f"calibration must be a LongTensor [nsamples, seqlen] of token ids, got {desc}")
    if calibration.shape[0] < 1 or calibration.shape[1] < 1:
        raise RiaInputError(f"calibration is empty: shape {tuple(calibration.shape)}")


class LinearStats:
    """Running float32 statistics of one linear's inputs."""

    def __init__(self, in_features: int, device: torch.device, need_hessian: bool = False):
        self.sq_sum = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.hessian = (torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
                        if need_hessian else None)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(self.sq_sum.device, torch.float32)
        self.sq_sum += x.pow(2).sum(0)
        if self.hessian is not None:
            self.hessian.addmm_(x.t(), x)
        self.tokens += x.shape[0]

    @property
    def act_norm(self) -> torch.Tensor:
        """l2 norm of each input channel over all calibration tokens."""
        return self.sq_sum.sqrt()


@contextmanager
def collect_stats(linears: dict[str, nn.Linear], need_hessian: bool = False):
    """Attach hooks that fill one ``LinearStats`` per linear while the block runs."""
    stats = {name: LinearStats(lin.in_features, lin.weight.device, need_hessian) for name, lin in linears.items()}
    handles = [lin.register_forward_hook(lambda mod, inp, out, s=stats[name]: s.add(inp[0]))
               for name, lin in linears.items()]
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()
