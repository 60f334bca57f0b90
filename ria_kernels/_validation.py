"""Shared input checks and the sparsity-spec parser."""
from __future__ import annotations

import re
from dataclasses import dataclass

from typing import TYPE_CHECKING

from ._errors import RiaInputError

if TYPE_CHECKING:
    import torch


def __getattr__(name: str):
    # torch is imported on first use: the CLI parses --sparsity-type before torch is loaded
    if name == "FLOAT_DTYPES":
        import torch
        return (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class SparsitySpec:
    """Either unstructured with ``ratio`` in [0, 1), or N:M (``n`` of every ``m`` pruned)."""

    ratio: float
    n: int = 0
    m: int = 0

    @property
    def is_nm(self) -> bool:
        return self.m > 0

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else f"{self.ratio:g}"


def check_nm(n: int, m: int) -> None:
    if not isinstance(n, int) or not isinstance(m, int):
        raise RiaInputError(f"N:M needs integers, got n={n!r}, m={m!r}")
    if m < 2 or m > 64:
        raise RiaInputError(f"M must be in [2, 64], got m={m}")
    if n < 1 or n >= m:
        raise RiaInputError(f"N:M needs 1 <= N < M (N of every M weights are pruned), got {n}:{m}")


def check_ratio(ratio: float, name: str = "sparsity") -> float:
    try:
        ratio = float(ratio)
    except (TypeError, ValueError):
        raise RiaInputError(f"{name} must be a number in [0, 1), got {ratio!r}") from None
    if not (0.0 <= ratio < 1.0):
        raise RiaInputError(f"{name} must be in [0, 1), got {ratio}")
    return ratio


_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_sparsity(sparsity: float | str | SparsitySpec) -> SparsitySpec:
    """``0.5`` -> unstructured 50%; ``"2:4"`` -> N:M with 2 of every 4 pruned."""
    if isinstance(sparsity, SparsitySpec):
        return sparsity
    if isinstance(sparsity, str):
        mt = _NM_RE.match(sparsity)
        if mt:
            n, m = int(mt.group(1)), int(mt.group(2))
            check_nm(n, m)
            return SparsitySpec(ratio=n / m, n=n, m=m)
        try:
            sparsity = float(sparsity)
        except ValueError:
            raise RiaInputError(f"sparsity must be a ratio like 0.5 or a pattern like '2:4', got {sparsity!r}") from None
    return SparsitySpec(ratio=check_ratio(sparsity))


def check_matrix(t: torch.Tensor, name: str, dtypes=None) -> None:
    import torch
    if dtypes is None:
        dtypes = __getattr__("FLOAT_DTYPES")
    if not isinstance(t, torch.Tensor):
        raise RiaInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise RiaInputError(f"{name} must be 2-D [out_features, in_features], got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise RiaInputError(f"{name} dtype {t.dtype} unsupported; expected one of {[str(d) for d in dtypes]}")


def check_divisible(cols: int, m: int, name: str = "in_features") -> None:
    if cols % m != 0:
        raise RiaInputError(f"{name}={cols} is not divisible by M={m}")


def check_act_norm(act_norm: torch.Tensor, name: str = "act_norm") -> None:
    """An activation l2 norm must be a finite, non-negative float tensor (one device sync).
    A negative entry would make ``act_norm ** a`` NaN and a NaN/inf would poison every score
    of its column, so both are rejected at the entry point instead of pruning garbage."""
    import torch
    if not isinstance(act_norm, torch.Tensor) or not act_norm.dtype.is_floating_point:
        raise RiaInputError(f"{name} must be a floating-point tensor, got "
                            f"{getattr(act_norm, 'dtype', type(act_norm).__name__)}")
    if act_norm.numel() == 0:
        return
    a = act_norm.detach()
    bad_finite, bad_sign = (int(v) for v in torch.stack([(~torch.isfinite(a)).sum(), (a < 0).sum()]).tolist())
    if bad_finite:
        raise RiaInputError(f"{name} must be finite (an l2 norm per input channel), got {bad_finite} NaN/inf entries")
    if bad_sign:
        raise RiaInputError(f"{name} must be >= 0 (an l2 norm per input channel), got {bad_sign} negative entries")
