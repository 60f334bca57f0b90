"""N:M and unstructured selection on a score matrix.

Convention (the seeds'): **N of every M consecutive input-channel weights are
pruned**, so a group keeps M-N. ``True`` in a mask means *kept*.

Ties (documented contract, identical in the reference and the kernels): both
selections follow a *stable* sort of the scores. N:M (stable descending) keeps,
among equal scores, the **lower column index first**. Unstructured pruning
(stable ascending, the ``k`` lowest removed) prunes, among equal scores, the
**lower index first** (row-major flat index for the per-layer threshold).
NaN (documented contract, kernel and reference alike): **a NaN score ranks as -inf**
(``rank_scores``), in N:M and unstructured selection and in the retained-score sums,
so every N:M group keeps exactly M - N and unstructured pruning removes exactly k,
whatever the scores. Among NaN/-inf the tie rule above applies. -0.0 equals +0.0.

Kernels: ``split_lanes`` turns a tile's groups into M register tensors
(``tl.reshape`` + ``tl.split``), ``keep_lanes`` ranks them with M*(M-1)/2 compares
(each pair once) and ``join_lanes`` puts the keep flags back: no shared memory,
shuffles or barriers in the select (checked by ``scripts/check_triton_aot.py``).

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
from .. import _device
from .._errors import RiaInputError
from .._validation import check_divisible, check_matrix, check_nm, check_ratio
from ._grid import cdiv, next_power_of_2


# --------------------------------------------------------------------------- reference
def rank_scores(score: torch.Tensor) -> torch.Tensor:
    """float32 scores as ranked: NaN -> -inf (the one meaning of NaN, see the module doc)."""
    s = score.detach().float()
    return torch.where(torch.isnan(s), torch.full_like(s, float("-inf")), s)


def nm_mask_reference(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool keep-mask: in each group of ``m`` consecutive columns the ``m - n`` highest scores."""
    check_nm(n, m)
    check_matrix(score, "score")
    r, c = score.shape
    check_divisible(c, m, "score.shape[1]")
    groups = rank_scores(score).reshape(r, c // m, m)
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, order[..., : m - n], True)
    return mask.reshape(r, c)


def nm_topk_blocks_reference(score: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep-mask and, per group of ``m`` columns, the sum of the kept scores (float32)."""
    mask = nm_mask_reference(score, n, m)
    r, c = score.shape
    kept = torch.where(mask, rank_scores(score), torch.zeros((), dtype=torch.float32, device=score.device))
    return mask, kept.reshape(r, c // m, m).sum(-1)


def unstructured_mask_reference(score: torch.Tensor, sparsity: float, per_output: bool = False) -> torch.Tensor:
    """Prune exactly ``floor(sparsity * count)`` lowest scores, per layer or per output row."""
    sparsity = check_ratio(sparsity)
    check_matrix(score, "score")
    s = rank_scores(score)
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
    def split_lanes(x, MP: tl.constexpr):
        """``x`` [N, MP] (MP a power of two) -> tuple of MP tensors [N], lane order.
        ``tl.reshape`` + ``tl.split`` halve the last axis; each thread owns whole groups,
        so this is a renaming of registers: no shared memory, shuffles or barriers."""
        N: tl.constexpr = x.shape[0]
        if MP == 2:
            a, b = tl.split(x)
            return (a, b)
        else:
            even, odd = tl.split(tl.reshape(x, (N, MP // 2, 2)))  # lanes 0,2,4.. and 1,3,5..
            e = split_lanes(even, MP // 2)
            o = split_lanes(odd, MP // 2)
            lanes = ()
            for i in tl.static_range(MP // 2):
                lanes = lanes + (e[i], o[i])
            return lanes

    @triton.jit
    def join_lanes(lanes, MP: tl.constexpr):
        """Inverse of ``split_lanes``: tuple of MP tensors [N] -> [N, MP]."""
        if MP == 2:
            return tl.join(lanes[0], lanes[1])
        else:
            even = ()
            odd = ()
            for i in tl.static_range(MP // 2):
                even = even + (lanes[2 * i],)
                odd = odd + (lanes[2 * i + 1],)
            e = join_lanes(even, MP // 2)
            o = join_lanes(odd, MP // 2)
            return tl.reshape(tl.join(e, o), (e.shape[0], MP))

    @triton.jit
    def keep_lanes(lanes, MP: tl.constexpr, KEEP: tl.constexpr):
        """Keep flags (int8) of one group held as MP register tensors: lane k is kept when
        fewer than KEEP lanes beat it. j beats k: s_j > s_k, or s_j == s_k and j < k (the
        stable descending order). Each pair is compared once (``lanes[b] > lanes[a]`` for
        a < b, shared by both ranks): MP*(MP-1)/2 compares, all in registers. Inputs must
        be NaN-free (see ``rank_key``), so "not (b > a)" means "a >= b"."""
        keep = ()
        for k in tl.static_range(MP):
            beaten = tl.zeros(lanes[k].shape, dtype=tl.int32)
            for j in tl.static_range(MP):
                if j < k:
                    beaten += 1 - (lanes[k] > lanes[j]).to(tl.int32)
                elif j > k:
                    beaten += (lanes[j] > lanes[k]).to(tl.int32)
            keep = keep + ((beaten < KEEP).to(tl.int8),)
        return keep

    @triton.jit
    def rank_key(s):
        """The one meaning of NaN in a ranking: NaN ranks as -inf (ties with -inf go to the
        lower column index), so every group keeps exactly M - N whatever the scores."""
        return tl.where(s != s, float("-inf"), s)

    @triton.jit
    def nm_keep_tile(s, MP: tl.constexpr, KEEP: tl.constexpr):
        """``s`` [BR, BW] NaN-free float32 scores, BW a multiple of MP, every MP consecutive
        columns one group -> (keep int8 [BR, BW], tuple of MP lanes of s, tuple of MP keep flags)."""
        BR: tl.constexpr = s.shape[0]
        BW: tl.constexpr = s.shape[1]
        lanes = split_lanes(tl.reshape(s, (BR * BW // MP, MP)), MP)
        keep = keep_lanes(lanes, MP, KEEP)
        return tl.reshape(join_lanes(keep, MP), (BR, BW)), lanes, keep

    @triton.jit
    def nm_tile_offsets(R, C, M: tl.constexpr, MP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr):
        """This program's [BLOCK_R, BLOCK_W] tile: BLOCK_W // MP groups of MP lanes per row.
        M == MP: the tile is BLOCK_W contiguous columns (vector loads). M < MP (M not a
        power of two): group g's lane l is column g*M + l; lanes >= M are padding (masked).
        Returns rows [BLOCK_R], cols [BLOCK_W], valid [BLOCK_R, BLOCK_W]."""
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        n = tl.arange(0, BLOCK_W)
        if M == MP:
            cols = tl.program_id(1) * BLOCK_W + n
            col_ok = cols < C
        else:
            cols = (tl.program_id(1) * (BLOCK_W // MP) + n // MP) * M + n % MP
            col_ok = (cols < C) & (n % MP < M)
        valid = (rows[:, None] < R) & col_ok[None, :]
        return rows, cols, valid

    @triton.jit
    def _nm_topk_kernel(score_ptr, mask_ptr, sum_ptr, R, C, G, stride_r,
                        KEEP: tl.constexpr, M: tl.constexpr, MP: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr, WRITE_SUM: tl.constexpr):
        rows, cols, valid = nm_tile_offsets(R, C, M, MP, BLOCK_R, BLOCK_W)
        rows64 = rows.to(tl.int64)[:, None]
        s = tl.load(score_ptr + rows64 * stride_r + cols[None, :], mask=valid, other=float("-inf"))
        s = rank_key(s.to(tl.float32))  # padding lanes are -inf at a higher lane: never beat a real one
        keep, lanes, flags = nm_keep_tile(s, MP, KEEP)
        tl.store(mask_ptr + rows64 * C + cols[None, :], keep, mask=valid)
        if WRITE_SUM:
            total = tl.where(flags[0] != 0, lanes[0], 0.0)
            for k in tl.static_range(1, MP):
                total += tl.where(flags[k] != 0, lanes[k], 0.0)
            total = tl.reshape(total, (BLOCK_R, BLOCK_W // MP))
            groups = tl.program_id(1) * (BLOCK_W // MP) + tl.arange(0, BLOCK_W // MP)
            ok = (rows[:, None] < R) & (groups[None, :] < G)
            tl.store(sum_ptr + rows64 * G + groups[None, :], total, mask=ok)


def nm_tile(r: int, c: int, m: int, elem_size: int = 4) -> tuple[int, int, int, int]:
    """(MP, BLOCK_R, BLOCK_W, num_warps) for the N:M kernels.

    MP = M rounded up to a power of two. A program owns BLOCK_R rows x BLOCK_W columns
    (BLOCK_W // MP groups per row, 256 columns when the matrix is that wide), 4 warps. Each
    thread holds max(MP, one 16-byte vector) elements: it must own whole groups for the
    register ranking, and with exactly one vector per thread the compiler gives the loads
    and every store (input dtype, int8 mask) the same layout, so no shared-memory layout
    conversion is needed. Ranking costs M*(M-1)/2 compares per group."""
    mp = next_power_of_2(m)
    width = min(256, next_power_of_2(max(c // m, 1)) * mp)
    elems = 128 * max(mp, 16 // elem_size)
    block_r = max(1, min(elems // width, next_power_of_2(max(r, 1))))
    return mp, block_r, width, 4


def nm_launch_config(r: int, c: int, m: int, elem_size: int = 4) -> tuple[int, int, int, int, tuple[int, int]]:
    """(MP, BLOCK_R, BLOCK_W, num_warps, grid) of the N:M kernels (``_nm_topk_kernel`` and the
    fused prune): ``nm_tile`` plus one program per BLOCK_R rows x BLOCK_W // MP groups. The
    grid counts groups, not columns: with M < MP a program covers only BLOCK_W // MP * M columns."""
    mp, block_r, block_w, warps = nm_tile(r, c, m, elem_size)
    return mp, block_r, block_w, warps, (cdiv(r, block_r), cdiv(c // m, block_w // mp))


@_device.guarded  # the inputs' device and stream (issue 20)
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
    mp, block_r, block_w, warps, grid = nm_launch_config(r, c, m, score.element_size())
    _nm_topk_kernel[grid](score, mask.view(torch.int8), sums if with_sums else mask, r, c, g, score.stride(0),
                          KEEP=m - n, M=m, MP=mp, BLOCK_R=block_r, BLOCK_W=block_w, WRITE_SUM=with_sums,
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
    s = rank_scores(score)
    k = int(s.shape[1] * sparsity) if per_output else int(s.numel() * sparsity)
    return threshold_mask(s, k, 1 if per_output else None)


# --------------------------------------------------------------------------- AOT gate cases
def aot_cases():
    """Launch configurations for ``scripts/check_triton_aot.py`` (recorded, never run): the public
    ``nm_topk_blocks`` / ``nm_mask`` on benchmark and odd shapes, M = 4/8/16, score dtypes."""
    _dt = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

    def case(shape, dtype, n, m, sums=True):
        def run():
            s = torch.empty(shape, dtype=_dt[dtype])
            return nm_topk_blocks(s, n, m, backend="triton") if sums else nm_mask(s, n, m, backend="triton")
        return f"nm_{'topk' if sums else 'mask'} {n}:{m} {dtype} {shape[0]}x{shape[1]}", run

    for shape in ((8192, 28672), (28672, 8192), (4096, 4096), (7, 48), (1, 16)):
        for n, m in ((2, 4), (4, 8), (8, 16)):
            if shape[1] % m == 0:
                yield case(shape, "fp32", n, m)
    yield case((8192, 28672), "fp16", 2, 4)
    yield case((8192, 28672), "bf16", 2, 4)
    yield case((8192, 28672), "fp32", 2, 4, sums=False)
    yield case((7, 48), "fp32", 1, 4, sums=False)
