"""N:M and unstructured selection on a score matrix.

Convention (the seeds'): **N of every M consecutive input-channel weights are
pruned**, so a group keeps M-N. ``True`` in a mask means *kept*.

Ties (documented contract, identical in the reference and the kernels): both
selections follow a *stable* sort of the scores. N:M (stable descending) keeps,
among equal scores, the **lower column index first**. Unstructured pruning
(stable ascending, the ``k`` lowest removed) prunes, among equal scores, the
**lower index first** (row-major flat index for the per-layer threshold).
NaN scores are unsupported (their order is undefined).

Dispatch: ``nm_topk_blocks`` goes through the custom op
``ria_kernels::nm_topk_blocks`` (fake impl registered, traceable by
``torch.compile``); inside it ``_dispatch_topk`` calls ``resolve_backend`` — the
one place that picks Triton or the torch reference. ``nm_mask`` and
``unstructured_mask`` are offline (pruning-time) entry points and dispatch eagerly.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._backend import resolve_backend
from .._errors import RiaInputError
from .._validation import check_divisible, check_matrix, check_nm, check_ratio


# --------------------------------------------------------------------------- reference
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


def nm_topk_blocks_reference(score: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep-mask and, per group of ``m`` columns, the sum of the kept scores (float32)."""
    mask = nm_mask_reference(score, n, m)
    r, c = score.shape
    kept = torch.where(mask, score.detach().float(), torch.zeros((), dtype=torch.float32, device=score.device))
    return mask, kept.reshape(r, c // m, m).sum(-1)


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


# --------------------------------------------------------------------------- checks
def _check_nm_inputs(score: torch.Tensor, n: int, m: int) -> None:
    check_nm(n, m)
    check_matrix(score, "score")
    check_divisible(score.shape[1], m, "score.shape[1]")


def _check_triton_layout(t: torch.Tensor, name: str) -> None:
    if t.shape[1] > 1 and t.stride(1) != 1:
        raise RiaInputError(f"{name} must be contiguous along columns (stride(1) == 1) for the Triton backend, "
                            f"got strides {tuple(t.stride())}")


# --------------------------------------------------------------------------- public API
def nm_mask(score: torch.Tensor, n: int, m: int, *, backend: Optional[str] = None) -> torch.Tensor:
    """Keep-mask with exactly ``m - n`` kept per group of ``m`` consecutive input channels."""
    _check_nm_inputs(score, n, m)
    if resolve_backend("nm_mask", score, backend) == "triton":
        return _nm_topk_triton(score, n, m, with_sums=False)[0]
    return nm_mask_reference(score, n, m)


def nm_topk_blocks(score: torch.Tensor, n: int, m: int, *, backend: Optional[str] = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over ``score``: the N:M keep-mask and the retained score per group ``[rows, cols // m]``."""
    _check_nm_inputs(score, n, m)
    if backend is not None and backend.lower() not in ("triton", "torch"):
        raise RiaInputError(f"backend must be one of ('triton', 'torch'), got {backend!r}")
    return torch.ops.ria_kernels.nm_topk_blocks(score, n, m, backend)


def _dispatch_topk(score, n, m, backend):
    if resolve_backend("nm_topk_blocks", score, backend) == "triton":
        return _nm_topk_triton(score, n, m)
    mask, sums = nm_topk_blocks_reference(score, n, m)
    return mask, sums


@torch.library.custom_op("ria_kernels::nm_topk_blocks", mutates_args=())
def _nm_topk_blocks_op(score: torch.Tensor, n: int, m: int, backend: Optional[str]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    return _dispatch_topk(score, n, m, backend)


@_nm_topk_blocks_op.register_fake
def _(score, n, m, backend):
    r, c = score.shape
    return (score.new_empty((r, c), dtype=torch.bool), score.new_empty((r, c // m), dtype=torch.float32))


def unstructured_mask(score: torch.Tensor, sparsity: float, per_output: bool = False, *,
                      backend: Optional[str] = None) -> torch.Tensor:
    """Keep-mask pruning the lowest ``sparsity`` fraction per layer (default) or per row."""
    sparsity = check_ratio(sparsity)
    check_matrix(score, "score")
    if resolve_backend("unstructured_mask", score, backend) == "triton":
        return _unstructured_mask_triton(score, sparsity, per_output)
    return unstructured_mask_reference(score, sparsity, per_output)


# --------------------------------------------------------------------------- Triton
try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is a hard dependency
    triton = None


if triton is not None:
    @triton.jit
    def group_rank(s, MP: tl.constexpr):
        """``s``: [BLOCK_N, MP] scores of BLOCK_N groups (padding lanes = -inf).
        Rank of each lane in its group = how many lanes beat it: a higher score, or an
        equal score at a lower column index (stable descending order). One broadcast
        compare in registers: every element is loaded once."""
        lane = tl.arange(0, MP)
        cand = s[:, :, None]                               # [N, MP(k), 1]
        other = s[:, None, :]                              # [N, 1, MP(j)]
        lower = lane[None, None, :] < lane[None, :, None]  # j < k
        beats = (other > cand) | ((other == cand) & lower)
        return tl.sum(beats.to(tl.int32), axis=2)

    @triton.jit
    def group_tile(R, G, M: tl.constexpr, MP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr):
        """Indices of this program's tile: BLOCK_R rows x BLOCK_G groups flattened to BLOCK_R*BLOCK_G
        (row-major, so consecutive entries are consecutive groups of one row: contiguous loads),
        MP lanes per group. Returns rows, groups, ok [n], valid [n, MP], col [n, MP], rows64 [n, 1]."""
        n = tl.arange(0, BLOCK_R * BLOCK_G)
        rows = tl.program_id(0) * BLOCK_R + n // BLOCK_G
        groups = tl.program_id(1) * BLOCK_G + n % BLOCK_G
        lane = tl.arange(0, MP)
        ok = (rows < R) & (groups < G)
        valid = ok[:, None] & (lane[None, :] < M)
        col = groups[:, None] * M + lane[None, :]
        return rows, groups, ok, valid, col, rows.to(tl.int64)[:, None]

    @triton.jit
    def _nm_topk_kernel(score_ptr, mask_ptr, sum_ptr, R, G, stride_r,
                        KEEP: tl.constexpr, M: tl.constexpr, MP: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr, WRITE_SUM: tl.constexpr):
        rows, groups, ok, valid, col, rows64 = group_tile(R, G, M, MP, BLOCK_R, BLOCK_G)
        s = tl.load(score_ptr + rows64 * stride_r + col, mask=valid, other=float("-inf")).to(tl.float32)
        keep = (group_rank(s, MP) < KEEP) & valid
        tl.store(mask_ptr + rows64 * (G * M) + col, keep.to(tl.int8), mask=valid)
        if WRITE_SUM:
            total = tl.sum(tl.where(keep, s, 0.0), axis=1)
            tl.store(sum_ptr + rows.to(tl.int64) * G + groups, total, mask=ok)


def nm_tile(r: int, g: int, m: int) -> tuple[int, int, int, int]:
    """(MP, BLOCK_R, BLOCK_G, num_warps) for the N:M kernels.

    MP = M rounded up to a power of two (padding lanes are masked). BLOCK_N groups per
    program keep the loaded tile near 1K elements and the [BLOCK_N, MP, MP] rank compare
    at <= 8K elements (registers; the compare is the only O(M^2) work). Prediction, to be
    measured: memory-bound for M <= 8 at ~80-90% of copy bandwidth; M = 16 may turn
    ALU-bound (256 compares per group)."""
    mp = triton.next_power_of_2(m)
    block_n = max(1, min(1024 // mp, 8192 // (mp * mp)))
    block_g = min(block_n, triton.next_power_of_2(max(g, 1)))
    block_r = block_n // block_g
    return mp, block_r, block_g, 4


def _nm_topk_triton(score: torch.Tensor, n: int, m: int, *, with_sums: bool = True,
                    mask_out: Optional[torch.Tensor] = None, sums_out: Optional[torch.Tensor] = None):
    """Launcher. ``mask_out`` (bool [r, c]) / ``sums_out`` (float32 [r, c // m]) let
    callers (and the tests, which poison them) provide the output buffers."""
    _check_triton_layout(score, "score")
    r, c = score.shape
    g = c // m
    mask = torch.empty((r, c), dtype=torch.bool, device=score.device) if mask_out is None else mask_out
    sums = None
    if with_sums:
        sums = torch.empty((r, g), dtype=torch.float32, device=score.device) if sums_out is None else sums_out
    if r == 0 or c == 0:
        return mask, (sums if with_sums else None)
    mp, block_r, block_g, warps = nm_tile(r, g, m)
    grid = (triton.cdiv(r, block_r), triton.cdiv(g, block_g))
    _nm_topk_kernel[grid](score, mask.view(torch.int8), sums if with_sums else mask, r, g, score.stride(0),
                          KEEP=m - n, M=m, MP=mp, BLOCK_R=block_r, BLOCK_G=block_g, WRITE_SUM=with_sums,
                          num_warps=warps)
    return mask, sums


# --------------------------------------------------------------------------- unstructured selection
def _order_keys(s: torch.Tensor) -> torch.Tensor:
    """int32 keys whose signed order equals the float32 order of ``s`` (-0.0 folded into +0.0)."""
    bits = (s + 0.0).contiguous().view(torch.int32)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def kth_smallest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest (1-based) of a 1-D float32 tensor, by a 3-pass radix select
    (11 + 11 + 10 bits) over order-preserving int32 keys.

    Why not ``torch.kthvalue``: on CUDA it runs one thread block per slice, so a single
    whole-layer slice (e.g. 8192 x 28672 scores) would use one SM. Here the first pass
    is a full-width ``bincount`` of the top 11 bits (2048 bins fit in shared memory);
    later passes only touch the elements of the selected bucket. 3 host syncs."""
    key = _order_keys(flat)
    cand = key
    for shift, width, top in ((21, 11, True), (10, 11, False), (0, 10, False)):
        digit = (cand >> shift) + 1024 if top else (cand >> shift) & ((1 << width) - 1)
        cum = torch.bincount(digit, minlength=1 << width).cumsum(0)
        bucket = int((cum < k).sum())  # first bucket whose cumulative count reaches k
        if bucket > 0:
            k -= int(cum[bucket - 1])
        cand = cand[digit == bucket]
    kth_key = cand[:1]
    bits = torch.where(kth_key < 0, kth_key ^ 0x7FFFFFFF, kth_key)
    return bits.view(torch.float32).reshape(())


def threshold_mask(s: torch.Tensor, k: int, dim: Optional[int]) -> torch.Tensor:
    """Keep-mask pruning exactly the ``k`` lowest of ``s`` (along ``dim`` = 1, or all of it),
    ties broken towards the lower index like the stable sort of the reference, via an
    on-device k-th value selection instead of a full sort."""
    if k == 0:
        return torch.ones_like(s, dtype=torch.bool)
    if dim is None:
        flat = s.reshape(1, -1)
        kth = kth_smallest(flat.reshape(-1), k).reshape(1, 1)
    else:
        flat = s
        # one slice per row: torch.kthvalue parallelises over rows
        kth = torch.kthvalue(flat, k, dim=1, keepdim=True).values
    below = flat < kth
    ties = flat == kth
    need = k - below.sum(1, keepdim=True)          # how many ties still to prune
    tie_rank = torch.cumsum(ties.to(torch.int32), dim=1)  # 1-based rank among ties, by index
    pruned = below | (ties & (tie_rank <= need))
    return (~pruned).reshape(s.shape)


def _unstructured_mask_triton(score, sparsity, per_output):
    # Selection needs a global (or per-row) order statistic: done on device with a
    # radix select (per layer) / kthvalue (per row) + a tie fix-up, no sort; the scores
    # themselves come from the Triton score kernel in ops/ria_score.py.
    s = score.detach().float()
    k = int(s.shape[1] * sparsity) if per_output else int(s.numel() * sparsity)
    return threshold_mask(s, k, 1 if per_output else None)
