"""Fused score + select + prune.

N:M: two passes over W — the |W| row/column sums (one read, ``abs_sums_triton``),
then one kernel that recomputes each group's scores in registers, ranks them and
writes the pruned weight and the keep-mask; the score matrix never reaches memory.
Bytes moved: 2 reads of W + 1 write of W + 1 byte of mask per element.
Unstructured: the score matrix (float32) is written by the score kernel and the
k-th score is selected on device (``threshold_mask``), then W is masked.

Torch reference: ``fused_prune_reference`` = ``pruning_score_reference`` + the mask
references of ``ops/nm_mask.py``.
"""
from __future__ import annotations

import torch

from .._backend import resolve_backend
from .._validation import check_divisible, parse_sparsity
from .nm_mask import nm_mask_reference, threshold_mask, unstructured_mask_reference
from .ria_score import _check_inputs, _pruning_score_triton, pruning_score_reference, triton_factors

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None


def fused_prune_reference(weight, act_norm=None, method="ria", a=0.5, sparsity=0.5, per_output=False):
    spec = parse_sparsity(sparsity)
    score = pruning_score_reference(weight, act_norm, method, a)
    if spec.is_nm:
        mask = nm_mask_reference(score, spec.n, spec.m)
    else:
        mask = unstructured_mask_reference(score, spec.ratio, per_output)
    return weight * mask.to(weight.dtype), mask


def fused_prune(weight: torch.Tensor, act_norm: torch.Tensor | None = None, method: str = "ria", a: float = 0.5,
                sparsity: float | str = 0.5, per_output: bool = False, *, backend: str | None = None,
                out: torch.Tensor | None = None, mask_out: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Score ``weight`` with ``method`` and prune it: returns ``(pruned_weight, keep_mask)``."""
    spec = parse_sparsity(sparsity)
    _check_inputs(weight, act_norm, method)
    if spec.is_nm:
        check_divisible(weight.shape[1], spec.m, "weight.shape[1]")
    if resolve_backend("fused_prune", weight, backend) == "torch":
        return fused_prune_reference(weight, act_norm, method, a, spec, per_output)
    if not spec.is_nm:
        score = _pruning_score_triton(weight, act_norm, method, a)
        k = int(score.shape[1] * spec.ratio) if per_output else int(score.numel() * spec.ratio)
        mask = threshold_mask(score, k, 1 if per_output else None)
        pruned = torch.mul(weight, mask.to(weight.dtype), out=out)
        if mask_out is not None:
            mask_out.copy_(mask)
            mask = mask_out
        return pruned, mask
    return _fused_nm_triton(weight, act_norm, method, a, spec.n, spec.m, out, mask_out)


if triton is not None:
    @triton.jit
    def _group_score(w_ptr, row_off, g_cols, j: tl.constexpr, rows, R, C, row_inv, col_inv_ptr, col_scale_ptr,
                     valid, USE_RI: tl.constexpr, USE_SCALE: tl.constexpr):
        cols = g_cols + j
        w = tl.load(w_ptr + row_off + cols[None, :], mask=valid, other=0.0)
        s = tl.abs(w.to(tl.float32))
        if USE_RI:
            ci = tl.load(col_inv_ptr + cols, mask=cols < C, other=0.0)
            s = s * (row_inv[:, None] + ci[None, :])
        if USE_SCALE:
            cs = tl.load(col_scale_ptr + cols, mask=cols < C, other=0.0)
            s = s * cs[None, :]
        return w, s

    @triton.jit
    def _fused_nm_kernel(w_ptr, out_ptr, mask_ptr, row_inv_ptr, col_inv_ptr, col_scale_ptr,
                         R, C, G, stride_r, KEEP: tl.constexpr, M: tl.constexpr,
                         USE_RI: tl.constexpr, USE_SCALE: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr):
        pid_r = tl.program_id(0)
        pid_g = tl.program_id(1)
        rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
        groups = pid_g * BLOCK_G + tl.arange(0, BLOCK_G)
        valid = (rows[:, None] < R) & (groups[None, :] < G)
        row_off = rows[:, None].to(tl.int64) * stride_r
        out_off = rows[:, None].to(tl.int64) * C
        g_cols = groups * M
        row_inv = tl.load(row_inv_ptr + rows, mask=rows < R, other=0.0)
        for k in tl.static_range(M):
            w_k, s_k = _group_score(w_ptr, row_off, g_cols, k, rows, R, C, row_inv, col_inv_ptr, col_scale_ptr,
                                    valid, USE_RI, USE_SCALE)
            rank = tl.zeros((BLOCK_R, BLOCK_G), dtype=tl.int32)
            for j in tl.static_range(M):
                if j != k:
                    _, s_j = _group_score(w_ptr, row_off, g_cols, j, rows, R, C, row_inv, col_inv_ptr,
                                          col_scale_ptr, valid, USE_RI, USE_SCALE)
                    if j < k:  # ties: the lower column index wins
                        rank += (s_j >= s_k).to(tl.int32)
                    else:
                        rank += (s_j > s_k).to(tl.int32)
            keep = rank < KEEP
            cols = g_cols + k
            tl.store(out_ptr + out_off + cols[None, :], tl.where(keep, w_k, tl.zeros_like(w_k)), mask=valid)
            tl.store(mask_ptr + out_off + cols[None, :], keep.to(tl.int8), mask=valid)


def _fused_nm_triton(weight, act_norm, method, a, n, m, out, mask_out):
    r, c = weight.shape
    g = c // m
    row_inv, col_inv, col_scale = triton_factors(weight, act_norm, method, a)
    if out is None:
        out = torch.empty_like(weight, memory_format=torch.contiguous_format)
    mask8 = torch.empty((r, c), dtype=torch.int8, device=weight.device) if mask_out is None else mask_out.view(torch.int8)
    block_r, block_g = 16, max(16, 256 // m)
    grid = (triton.cdiv(r, block_r), triton.cdiv(g, block_g))
    _fused_nm_kernel[grid](weight, out, mask8, row_inv, col_inv, col_scale, r, c, g, weight.stride(0),
                           KEEP=m - n, M=m, USE_RI=method in ("ri", "ria"), USE_SCALE=method in ("wanda", "ria"),
                           BLOCK_R=block_r, BLOCK_G=block_g)
    return out, mask8.view(torch.bool)
