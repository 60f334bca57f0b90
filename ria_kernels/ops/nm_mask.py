"""N:M and unstructured selection on a score matrix.

Convention (the seeds'): **N of every M consecutive input-channel weights are
pruned**, so a group keeps M-N. ``True`` in a mask means *kept*.
Ties: the lower column index wins (stable sort), in the reference and kernels alike.
"""
from __future__ import annotations

import torch

from .._backend import resolve_backend
from .._errors import RiaInputError
from .._validation import check_divisible, check_matrix, check_nm, check_ratio


def nm_mask_reference(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool keep-mask: in each group of ``m`` consecutive columns the ``m - n`` highest scores."""
    check_nm(n, m)
    check_matrix(score, "score")
    r, c = score.shape
    check_divisible(c, m, "score.shape[1]")
    groups = score.detach().float().reshape(r, c // m, m)
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, order[..., : m - n], True)
    return mask.reshape(r, c)


def nm_mask(score: torch.Tensor, n: int, m: int, *, backend: str | None = None) -> torch.Tensor:
    """Keep-mask with exactly ``m - n`` kept per group of ``m`` consecutive input channels."""
    check_nm(n, m)
    check_matrix(score, "score")
    check_divisible(score.shape[1], m, "score.shape[1]")
    if resolve_backend("nm_mask", score, backend) == "triton":
        return _nm_mask_triton(score, n, m)
    return nm_mask_reference(score, n, m)


def _nm_mask_triton(score, n, m):  # TODO(issue 3): Triton kernel lives here
    raise NotImplementedError("Triton nm_mask not written yet")


def unstructured_mask_reference(score: torch.Tensor, sparsity: float, per_output: bool = False) -> torch.Tensor:
    """Prune exactly ``floor(sparsity * count)`` lowest scores, per layer or per output row."""
    sparsity = check_ratio(sparsity)
    check_matrix(score, "score")
    s = score.detach().float()
    if per_output:
        k = int(s.shape[1] * sparsity)
        order = torch.sort(s, dim=1, stable=True).indices
        mask = torch.ones_like(s, dtype=torch.bool)
        mask.scatter_(1, order[:, :k], False)
        return mask
    flat = s.reshape(-1)
    k = int(flat.numel() * sparsity)
    order = torch.sort(flat, stable=True).indices
    mask = torch.ones_like(flat, dtype=torch.bool)
    mask[order[:k]] = False
    return mask.reshape(s.shape)


def unstructured_mask(score: torch.Tensor, sparsity: float, per_output: bool = False, *,
                      backend: str | None = None) -> torch.Tensor:
    """Keep-mask pruning the lowest ``sparsity`` fraction per layer (default) or per row."""
    sparsity = check_ratio(sparsity)
    check_matrix(score, "score")
    if resolve_backend("unstructured_mask", score, backend) == "triton":
        return _unstructured_mask_triton(score, sparsity, per_output)
    return unstructured_mask_reference(score, sparsity, per_output)


def _unstructured_mask_triton(score, sparsity, per_output):  # TODO(issue 3)
    raise NotImplementedError("Triton unstructured_mask not written yet")
