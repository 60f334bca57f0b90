"""Pruning metrics: magnitude, Wanda, RI (RIA Eq. 2) and RIA (Eq. 3).

RIA: ``S_ij = (|W_ij| / sum_i |W_ij| + |W_ij| / sum_j |W_ij|) * ||X_j||_2 ** a``.
``act_norm[j]`` is the l2 norm of input channel j over the calibration tokens.
Zero row/column sums contribute 0 (never NaN/inf).

The torch reference (``*_reference``) computes in float32 and is what the Triton
kernel in this module must match.
"""
from __future__ import annotations

import torch

from .._backend import resolve_backend
from .._errors import RiaInputError
from .._validation import check_matrix

METHODS = ("magnitude", "wanda", "ri", "ria")


def _check_inputs(weight: torch.Tensor, act_norm: torch.Tensor | None, method: str) -> None:
    if method not in METHODS:
        raise RiaInputError(f"method must be one of {METHODS}, got {method!r}")
    check_matrix(weight, "weight")
    if method in ("wanda", "ria"):
        if act_norm is None:
            raise RiaInputError(f"method {method!r} needs act_norm (l2 norm per input channel)")
        if act_norm.dim() != 1 or act_norm.shape[0] != weight.shape[1]:
            raise RiaInputError(
                f"act_norm must have shape [in_features={weight.shape[1]}], got {tuple(act_norm.shape)}")
        if act_norm.device != weight.device:
            raise RiaInputError(f"act_norm is on {act_norm.device}, weight on {weight.device}")


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


def pruning_score_reference(weight: torch.Tensor, act_norm: torch.Tensor | None = None,
                            method: str = "ria", a: float = 0.5) -> torch.Tensor:
    """Plain-torch float32 score for ``method``; higher means more important."""
    _check_inputs(weight, act_norm, method)
    w = weight.detach().abs().float()
    if method == "magnitude":
        return w
    if method == "wanda":
        return w * act_norm.float().reshape(1, -1)
    col_sum = w.sum(dim=0, keepdim=True)  # sum over rows i, one per input channel j
    row_sum = w.sum(dim=1, keepdim=True)  # sum over columns j, one per output row i
    ri = _safe_div(w, col_sum) + _safe_div(w, row_sum)
    if method == "ri":
        return ri
    return ri * act_norm.float().reshape(1, -1).pow(a)


def pruning_score(weight: torch.Tensor, act_norm: torch.Tensor | None = None, method: str = "ria",
                  a: float = 0.5, *, backend: str | None = None) -> torch.Tensor:
    """Score matrix (float32, same shape as ``weight``) for ``method``."""
    _check_inputs(weight, act_norm, method)
    choice = resolve_backend("pruning_score", weight, backend)
    if choice == "triton":
        return _pruning_score_triton(weight, act_norm, method, a)
    return pruning_score_reference(weight, act_norm, method, a)


def _pruning_score_triton(weight, act_norm, method, a):  # TODO(issue 3): Triton kernel lives here
    raise NotImplementedError("Triton pruning_score not written yet")


def ria_score(weight: torch.Tensor, act_norm: torch.Tensor, a: float = 0.5, *,
              backend: str | None = None) -> torch.Tensor:
    """RIA score (Eq. 3) of ``weight [out, in]`` given ``act_norm [in]``; float32."""
    return pruning_score(weight, act_norm, "ria", a, backend=backend)
