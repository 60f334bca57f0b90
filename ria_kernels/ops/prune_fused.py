"""Fused score + select + prune.

N:M: two passes over W — the |W| row/column sums (one read, ``abs_sums_triton``; RI/RIA
only), then ``_fused_nm_kernel``, which loads each [rows x groups x M] tile of W once,
recomputes the scores in registers, ranks every group with one broadcast compare and
writes the pruned weight and the keep-mask; the score matrix never reaches memory.
Bytes moved: 2 reads of W + 1 write of W + 1 byte of mask per element.
Magnitude, Wanda, RI and RIA are the same kernel with terms switched off (constexprs).
Unstructured: the score matrix (float32) is written by the score kernel, the k-th
score is found on device (radix select per layer, ``kthvalue`` per row; no sort),
then W is masked. Ties: see ``ops/nm_mask.py`` (stable-sort order, lower index first).

Dispatch: N:M calls without ``out``/``mask_out`` go through the custom op
``ria_kernels::fused_prune_nm`` (fake impl registered); its implementation and the
eager ``out=`` path both call ``_dispatch``, whose ``resolve_backend`` is the one choice.

Torch reference: ``fused_prune_reference`` = ``pruning_score_reference`` + the mask
references of ``ops/nm_mask.py``.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._backend import resolve_backend
from .. import _device
from .._errors import RiaInputError
from .._validation import check_act_norm, check_divisible, parse_sparsity
from .nm_mask import (join_lanes, nm_keep_tile, nm_launch_config, nm_mask_reference, split_lanes, nm_tile_offsets, rank_key,
                      rank_scores, threshold_mask, unstructured_mask_reference)
from .ria_score import _check_inputs, _pruning_score_triton, pruning_score_reference, triton_factors

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None


def fused_prune_reference(weight: torch.Tensor, act_norm: Optional[torch.Tensor] = None, method: str = "ria",
                          a: float = 0.5, sparsity=0.5, per_output: bool = False
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-torch score (float32) + selection reference, then ``W * mask``."""
    spec = parse_sparsity(sparsity)
    score = pruning_score_reference(weight, act_norm, method, a)
    if spec.is_nm:
        mask = nm_mask_reference(score, spec.n, spec.m)
    else:
        mask = unstructured_mask_reference(score, spec.ratio, per_output)
    # where, not weight * mask: a pruned NaN/inf weight must become exactly 0 (NaN * 0 is NaN)
    return torch.where(mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device)), mask


def _check_out(weight: torch.Tensor, out: Optional[torch.Tensor], mask_out: Optional[torch.Tensor]) -> None:
    if out is not None and (out.shape != weight.shape or out.dtype != weight.dtype or out.device != weight.device
                            or not out.is_contiguous()):
        raise RiaInputError(f"out must be a contiguous {weight.dtype} tensor of shape {tuple(weight.shape)} on "
                            f"{weight.device}, got {out.dtype} {tuple(out.shape)} on {out.device}")
    if mask_out is not None and (mask_out.shape != weight.shape or mask_out.dtype != torch.bool
                                 or mask_out.device != weight.device or not mask_out.is_contiguous()):
        raise RiaInputError(f"mask_out must be a contiguous torch.bool tensor of shape {tuple(weight.shape)} on "
                            f"{weight.device}, got {mask_out.dtype} {tuple(mask_out.shape)}")


def fused_prune(weight: torch.Tensor, act_norm: Optional[torch.Tensor] = None, method: str = "ria",
                a: float = 0.5, sparsity: float | str = 0.5, per_output: bool = False, *,
                backend: Optional[str] = None, out: Optional[torch.Tensor] = None,
                mask_out: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Score ``weight`` with ``method`` and prune it: returns ``(pruned_weight, keep_mask)``.

    N:M without ``out``/``mask_out`` runs as the custom op ``ria_kernels::fused_prune_nm``
    (traceable by ``torch.compile``); ``out``/``mask_out`` (eager only) receive the results."""
    spec = parse_sparsity(sparsity)
    _check_inputs(weight, act_norm, method, values=False)  # act_norm values: in _dispatch (traceable)
    if spec.is_nm:
        check_divisible(weight.shape[1], spec.m, "weight.shape[1]")
    _check_out(weight, out, mask_out)
    if spec.is_nm and out is None and mask_out is None:
        return torch.ops.ria_kernels.fused_prune_nm(weight, act_norm, method, float(a), spec.n, spec.m, backend)
    return _dispatch(weight, act_norm, method, a, spec, per_output, backend, out, mask_out)


def _dispatch(weight, act_norm, method, a, spec, per_output, backend, out=None, mask_out=None):
    """The one backend decision for fused_prune (called eagerly or from the custom op)."""
    if method in ("wanda", "ria"):
        check_act_norm(act_norm)
    if resolve_backend("fused_prune", weight, backend) == "torch":
        pruned, mask = fused_prune_reference(weight, act_norm, method, a, spec, per_output)
    elif spec.is_nm:
        return _fused_nm_triton(weight, act_norm, method, a, spec.n, spec.m, out, mask_out)
    else:
        score = _pruning_score_triton(weight, act_norm, method, a)
        k = int(score.shape[1] * spec.ratio) if per_output else int(score.numel() * spec.ratio)
        mask = threshold_mask(rank_scores(score), k, 1 if per_output else None)
        pruned = torch.where(mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
    if out is not None:
        pruned = out.copy_(pruned)
    if mask_out is not None:
        mask = mask_out.copy_(mask)
    return pruned, mask


@torch.library.custom_op("ria_kernels::fused_prune_nm", mutates_args=())
def _fused_prune_nm_op(weight: torch.Tensor, act_norm: Optional[torch.Tensor], method: str, a: float, n: int,
                       m: int, backend: Optional[str]) -> tuple[torch.Tensor, torch.Tensor]:
    pruned, mask = _dispatch(weight, act_norm, method, a, parse_sparsity(f"{n}:{m}"), False, backend)
    if pruned.data_ptr() == weight.data_ptr():  # custom-op outputs may not alias inputs
        pruned = pruned.clone()
    return pruned, mask


@_fused_prune_nm_op.register_fake
def _(weight, act_norm, method, a, n, m, backend):
    return (torch.empty(weight.shape, dtype=weight.dtype, device=weight.device),
            torch.empty(weight.shape, dtype=torch.bool, device=weight.device))


if triton is not None:
    @triton.jit
    def _fused_nm_kernel(w_ptr, out_ptr, mask_ptr, row_inv_ptr, col_inv_ptr, col_scale_ptr,
                         R, C, stride_r, KEEP: tl.constexpr, M: tl.constexpr, MP: tl.constexpr,
                         USE_RI: tl.constexpr, USE_SCALE: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr):
        """Pass 2 of the fused N:M prune. A program loads a BLOCK_R x BLOCK_W tile of W once
        (contiguous 16-byte loads per row), the column factors once for its BLOCK_R rows,
        recomputes the scores in registers in the reference's operation order
        (|w| * (row_inv + col_inv) * col_scale: bit-equal scores), ranks each group in
        registers (``nm_keep_tile``: no shared memory, shuffles or barriers) and writes the
        pruned tile and the mask tile. The score matrix never reaches memory."""
        rows, cols, valid = nm_tile_offsets(R, C, M, MP, BLOCK_R, BLOCK_W)
        rows64 = rows.to(tl.int64)[:, None]
        w = tl.load(w_ptr + rows64 * stride_r + cols[None, :], mask=valid, other=0.0)
        s = tl.abs(w.to(tl.float32))
        # column factors are loaded as [BLOCK_R, BLOCK_W] tiles (each row's copy from L1): a 1-D
        # load would get its own layout and a shared-memory conversion to broadcast over rows
        cols2d = tl.broadcast_to(cols[None, :], (BLOCK_R, BLOCK_W))
        if USE_RI:
            ri = tl.load(row_inv_ptr + rows, mask=rows < R, other=0.0)
            ci = tl.load(col_inv_ptr + cols2d, mask=valid, other=0.0)
            s = s * (ri[:, None] + ci)
        if USE_SCALE:
            cs = tl.load(col_scale_ptr + cols2d, mask=valid, other=0.0)
            s = s * cs
        s = tl.where(valid, rank_key(s), float("-inf"))  # padding never beats a real column
        keep, _, flags = nm_keep_tile(s, MP, KEEP)
        # the pruned tile is built from W's lanes and joined like the flags, so both stores
        # share one layout (combining the load layout with the joined one would cost a
        # shared-memory layout conversion)
        w_lanes = split_lanes(tl.reshape(w, (BLOCK_R * BLOCK_W // MP, MP)), MP)
        pruned = ()
        for k in tl.static_range(MP):
            pruned = pruned + (tl.where(flags[k] != 0, w_lanes[k], tl.zeros_like(w_lanes[k])),)
        out_off = rows64 * C + cols[None, :]
        tl.store(out_ptr + out_off, tl.reshape(join_lanes(pruned, MP), (BLOCK_R, BLOCK_W)), mask=valid)
        tl.store(mask_ptr + out_off, keep, mask=valid)


def fused_nm_launch_config(r: int, c: int, m: int, elem_size: int) -> tuple[int, int, int, int, tuple[int, int]]:
    """(MP, BLOCK_R, BLOCK_W, num_warps, grid) of ``_fused_nm_kernel``: the N:M tile and grid of
    ``ops/nm_mask.py`` (same tile offsets, ``nm_tile_offsets``), sized by W's element size."""
    return nm_launch_config(r, c, m, elem_size)


@_device.guarded  # the inputs' device and stream (issue 20)
def _fused_nm_triton(weight, act_norm, method, a, n, m, out=None, mask_out=None):
    """Pass 1 (RI/RIA only): |W| row/column sums from one read of W and one finishing launch
    (``abs_sum_inverses_triton``). Pass 2: ``_fused_nm_kernel``. Bytes: 2 reads of W + 1 write
    + 1 mask byte per element (1 read for magnitude/Wanda)."""
    r, c = weight.shape
    row_inv, col_inv, col_scale = triton_factors(weight, act_norm, method, a)
    if out is None:
        out = torch.empty((r, c), dtype=weight.dtype, device=weight.device)
    mask = torch.empty((r, c), dtype=torch.bool, device=weight.device) if mask_out is None else mask_out
    if r == 0 or c == 0:
        return out, mask
    mp, block_r, block_w, warps, grid = fused_nm_launch_config(r, c, m, weight.element_size())
    unused = weight  # pointer for a factor the method does not read
    _fused_nm_kernel[grid](weight, out, mask.view(torch.int8), unused if row_inv is None else row_inv,
                           unused if col_inv is None else col_inv, unused if col_scale is None else col_scale,
                           r, c, weight.stride(0), KEEP=m - n, M=m, MP=mp, USE_RI=row_inv is not None,
                           USE_SCALE=col_scale is not None, BLOCK_R=block_r, BLOCK_W=block_w, num_warps=warps)
    return out, mask


# --------------------------------------------------------------------------- AOT gate cases
AOT_SHAPES = ((8192, 28672), (28672, 8192), (4096, 4096), (4096, 11008), (7, 48), (1, 16))


def aot_cases():
    """Launch configurations for ``scripts/check_triton_aot.py`` (recorded, never run): the public
    ``fused_prune`` on the LLaMA2 linear shapes and odd ones, fp16/bf16/fp32, M = 4/8/16, every method."""
    _dt = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

    def case(shape, dtype, method, sparsity):
        def run():
            w = torch.empty(shape, dtype=_dt[dtype])
            act = torch.ones(shape[1], dtype=torch.float32)
            return fused_prune(w, act, method, 0.5, sparsity, backend="triton")
        return f"fused_prune {method} {sparsity} {dtype} {shape[0]}x{shape[1]}", run

    for shape in AOT_SHAPES:
        for sparsity in ("2:4", "4:8", "8:16"):
            if shape[1] % int(sparsity.split(":")[1]) == 0:
                yield case(shape, "fp16", "ria", sparsity)
    for dtype in ("bf16", "fp32"):
        for shape in ((8192, 28672), (7, 48)):
            yield case(shape, dtype, "ria", "2:4")
    for method in ("magnitude", "wanda", "ri"):
        yield case((8192, 28672), "fp16", method, "2:4")
