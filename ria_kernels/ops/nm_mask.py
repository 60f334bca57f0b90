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


def nm_topk_blocks_reference(score: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep-mask and, per group of ``m`` columns, the sum of the kept scores (float32)."""
    mask = nm_mask_reference(score, n, m)
    r, c = score.shape
    kept = torch.where(mask, score.detach().float(), torch.zeros((), dtype=torch.float32, device=score.device))
    return mask, kept.reshape(r, c // m, m).sum(-1)


def nm_topk_blocks(score: torch.Tensor, n: int, m: int, *, backend: str | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over ``score``: the N:M keep-mask and the retained score per group ``[rows, cols // m]``."""
    check_nm(n, m)
    check_matrix(score, "score")
    check_divisible(score.shape[1], m, "score.shape[1]")
    if resolve_backend("nm_topk_blocks", score, backend) == "triton":
        return _nm_topk_triton(score, n, m)
    return nm_topk_blocks_reference(score, n, m)


try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is a hard dependency
    triton = None


if triton is not None:
    @triton.jit
    def _group_rank(base, k: tl.constexpr, M: tl.constexpr, valid):
        """Rank of column ``k`` within each group: how many group members beat it
        (higher score, or equal score at a lower column index)."""
        s_k = tl.load(base + k, mask=valid, other=0.0).to(tl.float32)
        rank = tl.zeros(s_k.shape, dtype=tl.int32)
        for j in tl.static_range(M):
            if j != k:
                s_j = tl.load(base + j, mask=valid, other=0.0).to(tl.float32)
                if j < k:
                    rank += (s_j >= s_k).to(tl.int32)
                else:
                    rank += (s_j > s_k).to(tl.int32)
        return s_k, rank

    @triton.jit
    def _nm_topk_kernel(score_ptr, mask_ptr, sum_ptr, R, G, stride_r,
                        KEEP: tl.constexpr, M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr):
        pid_r = tl.program_id(0)
        pid_g = tl.program_id(1)
        rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
        groups = pid_g * BLOCK_G + tl.arange(0, BLOCK_G)
        valid = (rows[:, None] < R) & (groups[None, :] < G)
        base = score_ptr + rows[:, None].to(tl.int64) * stride_r + groups[None, :] * M
        out_base = rows[:, None].to(tl.int64) * (G * M) + groups[None, :] * M
        total = tl.zeros((BLOCK_R, BLOCK_G), dtype=tl.float32)
        for k in tl.static_range(M):
            s_k, rank = _group_rank(base, k, M, valid)
            keep = rank < KEEP
            total += tl.where(keep, s_k, 0.0)
            tl.store(mask_ptr + out_base + k, keep.to(tl.int8), mask=valid)
        tl.store(sum_ptr + rows[:, None].to(tl.int64) * G + groups[None, :], total, mask=valid)


def _nm_grid(r, g):
    block_r, block_g = 16, 32
    return (triton.cdiv(r, block_r), triton.cdiv(g, block_g)), block_r, block_g


def _nm_topk_triton(score: torch.Tensor, n: int, m: int):
    if score.stride(1) != 1:
        raise RiaInputError("score must be contiguous along columns (stride(1) == 1) for the Triton backend")
    r, c = score.shape
    g = c // m
    mask = torch.empty((r, c), dtype=torch.int8, device=score.device)
    sums = torch.empty((r, g), dtype=torch.float32, device=score.device)
    grid, block_r, block_g = _nm_grid(r, g)
    _nm_topk_kernel[grid](score, mask, sums, r, g, score.stride(0), KEEP=m - n, M=m,
                          BLOCK_R=block_r, BLOCK_G=block_g)
    return mask.view(torch.bool), sums


def _nm_mask_triton(score, n, m):
    return _nm_topk_triton(score, n, m)[0]


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


def threshold_mask(s: torch.Tensor, k: int, dim: int | None) -> torch.Tensor:
    """Keep-mask pruning exactly the ``k`` lowest of ``s`` (along ``dim``, or all of it),
    ties broken towards the lower index like the stable sort of the reference, via an
    on-device k-th value selection instead of a full sort."""
    flat = s.reshape(1, -1) if dim is None else s
    if k == 0:
        return torch.ones_like(s, dtype=torch.bool)
    kth = torch.kthvalue(flat, k, dim=1, keepdim=True).values
    below = flat < kth
    ties = flat == kth
    need = k - below.sum(1, keepdim=True)          # how many ties still to prune
    tie_rank = torch.cumsum(ties.to(torch.int32), dim=1)  # 1-based rank among ties, by index
    pruned = below | (ties & (tie_rank <= need))
    return (~pruned).reshape(s.shape)


def _unstructured_mask_triton(score, sparsity, per_output):
    # Selection needs a global (or per-row) order statistic: done on device with
    # kthvalue + a tie fix-up (no host sort); the scores themselves come from the
    # Triton score kernel in ops/ria_score.py.
    s = score.detach().float()
    k = int(s.shape[1] * sparsity) if per_output else int(s.numel() * sparsity)
    return threshold_mask(s, k, 1 if per_output else None)
