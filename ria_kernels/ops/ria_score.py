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
from .. import _device
from .._errors import RiaInputError
from .._validation import check_act_norm, check_matrix
from ._grid import cdiv, next_power_of_2

METHODS = ("magnitude", "wanda", "ri", "ria")


def _check_inputs(weight: torch.Tensor, act_norm: torch.Tensor | None, method: str, values: bool = True) -> None:
    """Argument checks; ``values=False`` skips the act_norm value check (finite, >= 0: a device
    sync) for callers that run it later outside ``torch.compile`` tracing (custom-op bodies)."""
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
        if values:
            check_act_norm(act_norm)


def safe_reciprocal(den: torch.Tensor) -> torch.Tensor:
    """1/den where den > 0, else 0 (an all-zero row or column scores 0, never NaN/inf)."""
    return torch.where(den > 0, 1.0 / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))


def score_factors(weight: torch.Tensor, act_norm: torch.Tensor | None, method: str, a: float,
                  row_sum: torch.Tensor | None = None, col_sum: torch.Tensor | None = None):
    """Per-row and per-column factors such that
    ``score = |W| * (row_inv[:, None] + col_inv[None, :]) * col_scale[None, :]`` (RI/RIA),
    ``|W| * col_scale`` (Wanda) or ``|W|`` (magnitude). Shared by the reference and the kernels."""
    dev = weight.device
    r, c = weight.shape
    if method in ("ri", "ria"):
        if row_sum is None:
            w = weight.detach().abs().float()
            row_sum, col_sum = w.sum(dim=1), w.sum(dim=0)
        row_inv, col_inv = safe_reciprocal(row_sum), safe_reciprocal(col_sum)
    else:
        row_inv = torch.zeros(r, dtype=torch.float32, device=dev)
        col_inv = torch.zeros(c, dtype=torch.float32, device=dev)
    if method == "ria":
        col_scale = act_norm.float().pow(a)
    elif method == "wanda":
        col_scale = act_norm.float()
    else:
        col_scale = torch.ones(c, dtype=torch.float32, device=dev)
    return row_inv, col_inv, col_scale


def pruning_score_reference(weight: torch.Tensor, act_norm: torch.Tensor | None = None,
                            method: str = "ria", a: float = 0.5) -> torch.Tensor:
    """Plain-torch float32 score for ``method``; higher means more important."""
    _check_inputs(weight, act_norm, method)
    w = weight.detach().abs().float()
    row_inv, col_inv, col_scale = score_factors(weight, act_norm, method, a)
    if method == "magnitude":
        return w
    if method == "wanda":
        return w * col_scale[None, :]
    # |W_ij| / sum_i |W_ij| + |W_ij| / sum_j |W_ij|, times ||X_j||^a for RIA
    return w * (row_inv[:, None] + col_inv[None, :]) * col_scale[None, :]


def pruning_score(weight: torch.Tensor, act_norm: torch.Tensor | None = None, method: str = "ria",
                  a: float = 0.5, *, backend: str | None = None) -> torch.Tensor:
    """Score matrix (float32, same shape as ``weight``) for ``method``."""
    _check_inputs(weight, act_norm, method)
    choice = resolve_backend("pruning_score", weight, backend)
    if choice == "triton":
        return _pruning_score_triton(weight, act_norm, method, a)
    return pruning_score_reference(weight, act_norm, method, a)


try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is a hard dependency
    triton = None

_METHOD_ID = {"magnitude": 0, "wanda": 1, "ri": 2, "ria": 3}

if triton is not None:
    @triton.jit
    def _abs_sums_kernel(w_ptr, rowp_ptr, colp_ptr, R, C, stride_r,
                         ROWS_PER_PROG: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        """Pass 1: row and column sums of |W| from one read. A program owns a
        ROWS_PER_PROG x BLOCK_C strip. Each BLOCK_R x BLOCK_C step writes its partial row
        sums (a reduction inside each warp: a warp spans the BLOCK_C columns) and adds |W|
        into a register tile; the column sums are reduced across warps once, at the end.
        Partials are written, not atomically added: deterministic. rowp[pid_c, r], colp[pid_r, c].
        Left per step: the row-sum store of a warp-replicated vector goes through one small
        shared-memory conversion (2 barriers); the pass stays DRAM-bound (see triton_aot.md)."""
        pid_r = tl.program_id(0)
        pid_c = tl.program_id(1)
        cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        col_ok = cols < C
        acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
        for i in tl.static_range(0, ROWS_PER_PROG, BLOCK_R):
            rows = pid_r * ROWS_PER_PROG + i + tl.arange(0, BLOCK_R)
            valid = (rows[:, None] < R) & col_ok[None, :]
            w = tl.load(w_ptr + rows[:, None].to(tl.int64) * stride_r + cols[None, :], mask=valid, other=0.0)
            w = tl.abs(w.to(tl.float32))
            tl.store(rowp_ptr + pid_c.to(tl.int64) * R + rows, tl.sum(w, axis=1), mask=rows < R)
            acc += w
        tl.store(colp_ptr + pid_r.to(tl.int64) * C + cols, tl.sum(acc, axis=0), mask=col_ok)

    @triton.jit
    def _sum_partials_inv(part_ptr, out_ptr, N, NPART, offs):
        """out[i] = 1 / sum_p part[p, i] (0 where the sum is 0): the reference's safe_reciprocal,
        partials added in a fixed order."""
        ok = offs < N
        total = tl.zeros(offs.shape, dtype=tl.float32)
        # a while loop, not range(NPART): Triton 3.6's interpreter cannot take a runtime bound
        # under numpy >= 2.4 ("only 0-dimensional arrays can be converted to Python scalars")
        p = 0
        while p < NPART:
            total += tl.load(part_ptr + p * N + offs, mask=ok, other=0.0)  # partial buffers < 2^31 elements
            p += 1
        pos = total > 0
        inv = tl.where(pos, tl.math.div_rn(tl.full(offs.shape, 1.0, tl.float32), tl.where(pos, total, 1.0)), 0.0)
        tl.store(out_ptr + offs, inv, mask=ok)

    @triton.jit
    def _abs_sums_finish_kernel(rowp_ptr, colp_ptr, row_inv_ptr, col_inv_ptr, R, C, GC, GR,
                                BLOCK: tl.constexpr):
        """One launch after pass 1: the first cdiv(R, BLOCK) programs turn the row partials into
        row_inv, the rest the column partials into col_inv (no trailing torch launches)."""
        pid = tl.program_id(0)
        row_progs = tl.cdiv(R, BLOCK)
        if pid < row_progs:
            _sum_partials_inv(rowp_ptr, row_inv_ptr, R, GC, pid * BLOCK + tl.arange(0, BLOCK))
        else:
            _sum_partials_inv(colp_ptr, col_inv_ptr, C, GR, (pid - row_progs) * BLOCK + tl.arange(0, BLOCK))

    @triton.jit
    def _score_kernel(w_ptr, out_ptr, row_inv_ptr, col_inv_ptr, col_scale_ptr, R, C, stride_r,
                      USE_RI: tl.constexpr, USE_SCALE: tl.constexpr,
                      BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        pid_r = tl.program_id(0)
        pid_c = tl.program_id(1)
        rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        valid = (rows[:, None] < R) & (cols[None, :] < C)
        w = tl.abs(tl.load(w_ptr + rows[:, None].to(tl.int64) * stride_r + cols[None, :], mask=valid,
                           other=0.0).to(tl.float32))
        s = score_tile(w, rows, cols, R, C, row_inv_ptr, col_inv_ptr, col_scale_ptr, USE_RI, USE_SCALE)
        tl.store(out_ptr + rows[:, None].to(tl.int64) * C + cols[None, :], s, mask=valid)

    @triton.jit
    def score_tile(w_abs, rows, cols, R, C, row_inv_ptr, col_inv_ptr, col_scale_ptr,
                   USE_RI: tl.constexpr, USE_SCALE: tl.constexpr):
        """Score of a tile of |W| given the per-row/column factors (see score_factors)."""
        s = w_abs
        if USE_RI:
            ri = tl.load(row_inv_ptr + rows, mask=rows < R, other=0.0)
            ci = tl.load(col_inv_ptr + cols, mask=cols < C, other=0.0)
            s = s * (ri[:, None] + ci[None, :])
        if USE_SCALE:
            cs = tl.load(col_scale_ptr + cols, mask=cols < C, other=0.0)
            s = s * cs[None, :]
        return s


_SUM_BLOCK_R, _SUM_BLOCK_C, _SUM_MAX_ROWS = 16, 256, 256
# Pass-1 grid target: >= 8 blocks of 4 warps per SM on a 132-SM H100/H200 (one full wave at
# 32 warps/SM); the SM count of the actual device is used when there is one.
_MIN_BLOCKS_PER_SM = 8


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132


def abs_sums_config(r: int, c: int, sms: int = 132) -> tuple[int, int, int]:
    """(rows_per_prog, grid_rows, grid_cols) of pass 1: the most rows per program (fewest
    partials) that still gives >= _MIN_BLOCKS_PER_SM * sms blocks.

    rows_per_prog is _SUM_BLOCK_R times a power of two (16 .. 256): the kernel walks its strip
    in BLOCK_R steps, so a strip that is not a multiple of BLOCK_R would overlap the next one
    and count rows twice (issue 20: 33x128 gave 24-row strips); powers of two also keep the
    set of compiled variants small (5)."""
    gc = cdiv(c, _SUM_BLOCK_C)
    rows = min(_SUM_MAX_ROWS, next_power_of_2(cdiv(max(r, 1), _SUM_BLOCK_R)) * _SUM_BLOCK_R)
    while rows > _SUM_BLOCK_R and cdiv(r, rows) * gc < _MIN_BLOCKS_PER_SM * sms:
        rows //= 2
    return rows, cdiv(r, rows), gc


_FINISH_BLOCK = 1024


def abs_sums_finish_config(r: int, c: int) -> tuple[int, int]:
    """(BLOCK, grid) of the finishing launch: cdiv(r, BLOCK) programs for the rows, then
    cdiv(c, BLOCK) for the columns (the kernel splits on the same count)."""
    return _FINISH_BLOCK, cdiv(r, _FINISH_BLOCK) + cdiv(c, _FINISH_BLOCK)


_SCORE_BLOCK_R, _SCORE_BLOCK_C = 32, 128


def score_launch_config(r: int, c: int) -> tuple[int, int, tuple[int, int]]:
    """(BLOCK_R, BLOCK_C, grid) of the score kernel: one [32 x 128] tile per program."""
    return _SCORE_BLOCK_R, _SCORE_BLOCK_C, (cdiv(r, _SCORE_BLOCK_R), cdiv(c, _SCORE_BLOCK_C))


@_device.guarded  # the inputs' device and stream (issue 20)
def abs_sum_inverses_triton(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(safe_reciprocal(row sums of |W|), safe_reciprocal(column sums))`` in float32 from one
    read of W (pass 1) and one small finishing launch."""
    r, c = weight.shape
    if r == 0 or c == 0:
        return (torch.zeros(r, dtype=torch.float32, device=weight.device),
                torch.zeros(c, dtype=torch.float32, device=weight.device))
    rows_per_prog, gr, gc = abs_sums_config(r, c, _sm_count(weight.device))
    rowp = torch.empty((gc, r), dtype=torch.float32, device=weight.device)
    colp = torch.empty((gr, c), dtype=torch.float32, device=weight.device)
    _abs_sums_kernel[(gr, gc)](weight, rowp, colp, r, c, weight.stride(0), ROWS_PER_PROG=rows_per_prog,
                               BLOCK_R=_SUM_BLOCK_R, BLOCK_C=_SUM_BLOCK_C, num_warps=4)
    row_inv = torch.empty(r, dtype=torch.float32, device=weight.device)
    col_inv = torch.empty(c, dtype=torch.float32, device=weight.device)
    block, grid = abs_sums_finish_config(r, c)
    _abs_sums_finish_kernel[(grid,)](rowp, colp, row_inv, col_inv, r, c, gc, gr, BLOCK=block, num_warps=4)
    return row_inv, col_inv


@_device.guarded  # the inputs' device and stream (issue 20)
def abs_sums_triton(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column sums of |W| in float32 from one read of W (pass 1 partials, summed in torch)."""
    r, c = weight.shape
    rows_per_prog, gr, gc = abs_sums_config(r, c, _sm_count(weight.device))
    rowp = torch.empty((gc, r), dtype=torch.float32, device=weight.device)
    colp = torch.empty((gr, c), dtype=torch.float32, device=weight.device)
    _abs_sums_kernel[(gr, gc)](weight, rowp, colp, r, c, weight.stride(0), ROWS_PER_PROG=rows_per_prog,
                               BLOCK_R=_SUM_BLOCK_R, BLOCK_C=_SUM_BLOCK_C, num_warps=4)
    return rowp.sum(0), colp.sum(0)


def triton_factors(weight, act_norm, method, a):
    """(row_inv, col_inv, col_scale) for the kernels; a factor the method does not use is None.
    row_inv/col_inv come from the Triton pass 1 + finishing launch; col_scale = act_norm^a
    (torch pow, bit-identical to the reference) or act_norm itself for Wanda."""
    if weight.shape[1] > 1 and weight.stride(1) != 1:
        raise RiaInputError("weight must be contiguous along columns (stride(1) == 1) for the Triton backend, "
                            f"got strides {tuple(weight.stride())}")
    row_inv = col_inv = col_scale = None
    if method in ("ri", "ria"):
        row_inv, col_inv = abs_sum_inverses_triton(weight)
    if method == "ria":
        col_scale = act_norm.float().pow(a)
    elif method == "wanda":
        col_scale = act_norm.float()
    return row_inv, col_inv, col_scale


@_device.guarded  # the inputs' device and stream (issue 20)
def _pruning_score_triton(weight, act_norm, method, a, out=None):
    r, c = weight.shape
    row_inv, col_inv, col_scale = triton_factors(weight, act_norm, method, a)
    if out is None:
        out = torch.empty((r, c), dtype=torch.float32, device=weight.device)
    if r == 0 or c == 0:
        return out
    block_r, block_c, grid = score_launch_config(r, c)
    unused = out  # pointer for a factor the method does not read
    _score_kernel[grid](weight, out, unused if row_inv is None else row_inv, unused if col_inv is None else col_inv,
                        unused if col_scale is None else col_scale, r, c, weight.stride(0),
                        USE_RI=row_inv is not None, USE_SCALE=col_scale is not None,
                        BLOCK_R=block_r, BLOCK_C=block_c)
    return out


def ria_score(weight: torch.Tensor, act_norm: torch.Tensor, a: float = 0.5, *,
              backend: str | None = None) -> torch.Tensor:
    """RIA score (Eq. 3) of ``weight [out, in]`` given ``act_norm [in]``; float32."""
    return pruning_score(weight, act_norm, "ria", a, backend=backend)


# --------------------------------------------------------------------------- AOT gate cases
def aot_cases():
    """Launch configurations for ``scripts/check_triton_aot.py`` (recorded, never run): the public
    ``pruning_score`` for every method on benchmark and odd shapes, fp16/bf16/fp32."""
    _dt = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

    def case(shape, dtype, method):
        def run():
            w = torch.empty(shape, dtype=_dt[dtype])
            return pruning_score(w, torch.ones(shape[1]), method, 0.5, backend="triton")
        return f"score {method} {dtype} {shape[0]}x{shape[1]}", run

    # pass 1 at 132 SMs: 16-row strips (small shapes), 32 (4096^2), 64 (8192x4096), 128 (8192^2),
    # 256 (8192x28672): every ROWS_PER_PROG abs_sums_config can return
    for shape in ((8192, 28672), (28672, 8192), (4096, 4096), (8192, 4096), (8192, 8192), (7, 36), (1, 5)):
        yield case(shape, "fp16", "ria")
    for dtype in ("bf16", "fp32"):
        yield case((4096, 4096), dtype, "ria")
    for method in ("magnitude", "wanda", "ri"):
        yield case((4096, 4096), "fp16", method)
