"""Batched forward auction (maximise) on the GPU: many bidding iterations per Triton launch.

``auction_batched(gains[B, n, n])`` solves B independent square assignment problems (the
communities of one permutation round, or the problems of a layer) in one launch per
eps-scaling phase. Why: ``ria_kernels.lsa.auction`` is vectorised torch, one kernel launch
per op per bidding iteration; the permutation gains need tens of thousands of iterations
whose tail has a single bidder, so on a GPU it is bound by launch latency, not work.

Kernel (``_auction_kernel``): one persistent program per problem (grid ``(B,)``). Prices,
``row_col`` and ``col_row`` live in global memory; the program loops bidding iterations
internally until every row is assigned for the current eps, or ``max_iters`` iterations
(the host then re-launches; the state is in memory, so a re-launch just continues). Each
iteration:

1. the first ``BLOCK_R`` unassigned rows (a scan of ``row_col`` with ``tl.cumsum``, written
   to a per-problem scratch list) bid at once ("block Jacobi"): each row's best net value
   ``v1 = max_j gain - price`` (column ``j1``, lowest index among ties) and second best
   ``v2`` (``v2 == v1`` on a tie), streamed over ``BLOCK_C`` column chunks, and bids
   ``price[j1] + (v1 - v2) + eps``;
2. among the block's bidders, per column the highest bid wins, ties to the lowest row
   (a ``[BLOCK_R, BLOCK_R]`` comparison in registers);
3. winners take their column (price := bid), the previous owner becomes unassigned.

Barriers (``tl.debug_barrier``) separate the reads of one step from the writes of the
next: the state is shared by all threads of the one program (a CTA), and ``__syncthreads``
makes global writes visible within it; mutable state is loaded with ``.cg`` (L2, not L1).

Host (``_auction_triton``): eps-scaling as ``lsa.auction`` (first phase
``eps = scale / 20``, divided by 4 down to ``eps_final``; at the start of phase k > 0 the
kernel drops the pairs that violate eps-complementary slackness for the new eps,
``drop=1``), so a solve is ``phases`` launches (~13 at the default eps) plus one more per
``max_iters`` iterations of a phase, with a 16-byte status read (one sync) per launch.

Optimality (as ``lsa.auction``): every row ends within ``eps_final`` of its best net value,
so each problem's total is within ``bound = n * eps_final`` of its optimum. Default
``eps_final = 1e-6 * scale / n`` (``scale = max - min`` of that problem); if every entry of a
problem is an integer it is capped at ``1 / (n + 1)``: the gap is an integer below 1, so the
result is exactly optimal. ``gap`` additionally reports the measured duality gap
``sum_i max_j (gain_ij - price_j) + sum_j price_j - total`` (a certificate: the optimum lies in
``[total, total + gap]``).

Arithmetic: float64 throughout (gains are read as stored, float32 or float64, and widened
exactly); no products, so no FMA contraction: the kernel and ``auction_batched_reference``
(the same algorithm, bidder blocks and tie rules in torch) perform the same IEEE operations
and return the same assignment and prices, bit for bit.

Dispatch: ``auction_batched(..., backend=None)`` -> ``resolve_backend`` (Triton for CUDA
tensors, the torch reference otherwise; Triton on CPU tensors under ``TRITON_INTERPRET=1``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch

from .. import _device
from .. import _backend
from .._backend import resolve_backend
from .._errors import RiaInputError
from ._grid import MAX_GRID_X, next_power_of_2

_REL_EPS = 1e-6     # default final eps: total within 1e-6 * (max - min) of the optimum (as lsa.auction)
_EPS_START = 0.05   # first phase eps = scale / 20
_EPS_FACTOR = 4.0   # eps divided by this between phases
MAX_ITERS_PER_LAUNCH = 1 << 16  # the host re-launches after this many iterations of a phase
_MAX_ITERS = 10_000_000         # guard only (per problem): the auction terminates on a complete graph
_INT32_MAX = 2**31 - 1


@dataclass
class BatchedAuctionResult:
    cols: torch.Tensor        # LongTensor [B, n]: row i of problem b -> column cols[b, i]
    prices: torch.Tensor      # float64 [B, n]: final column prices (the dual variables)
    iterations: torch.Tensor  # LongTensor [B]: bidding iterations over all phases
    phases: int               # eps-scaling phases (launch rounds) of the batch
    launches: int             # kernel launches (Triton) / phase rounds (reference)
    eps_final: torch.Tensor   # float64 [B]
    bound: torch.Tensor       # float64 [B]: n * eps_final, a priori bound on optimum - total
    gap: torch.Tensor         # float64 [B]: measured duality gap (optimum - total <= gap)


# --------------------------------------------------------------------------- pure helpers
def eps_schedule(scale: float, n: int, integer: bool, eps: Optional[float] = None,
                 eps_start: Optional[float] = None) -> list[float]:
    """The eps of each phase of one problem (empty when nothing is to choose: n <= 1 or
    scale == 0). Same rule as ``lsa.auction``: final ``eps`` if given, else
    ``1e-6 * scale / n``, capped at ``1 / (n + 1)`` for integer gains; phases from
    ``max(scale / 20, eps_final)`` (or from ``eps_start`` where that is smaller: a warm start
    from prices that are already nearly optimal) divided by 4 down to ``eps_final``."""
    if n <= 1 or scale == 0.0:
        return []
    if eps is None:
        eps_final = _REL_EPS * max(scale, 1e-300) / n
        if integer:
            eps_final = min(eps_final, 1.0 / (n + 1))
    else:
        eps_final = float(eps)
    first = scale * _EPS_START if eps_start is None else min(scale * _EPS_START, float(eps_start))
    out = [max(first, eps_final)]
    while out[-1] > eps_final:
        out.append(max(out[-1] / _EPS_FACTOR, eps_final))
    return out


def auction_launch_config(n: int, batch: int) -> tuple[int, int, int, int, tuple[int]]:
    """(BLOCK_R, BLOCK_C, num_warps, maxnreg, grid) of ``_auction_kernel`` for ``batch`` problems of size n.

    One program per problem (grid ``(batch,)``). BLOCK_R = 16 bidders per iteration (fewer
    for n < 16): the bidders' conflict check is a BLOCK_R x BLOCK_R compare, and in the long
    single-bidder tails a larger block only adds idle lanes. BLOCK_C = 128 columns per chunk
    (less for small n, never wider than n rounded up to a power of two, so no chunk is
    wholly masked); 8 warps from BLOCK_C = 64: a [16, 128] float64 tile is 8 doubles per thread.
    maxnreg = 255: without it ptxas capped the kernel at 64 registers and spilled a value across
    the bidding loop (sm_80/sm_90a, Triton 3.6/3.9); with it: 72-180 registers, no spill. One
    program per problem, so occupancy does not need the registers."""
    if n < 1 or batch < 1:
        raise RiaInputError(f"auction launch config needs n >= 1 and batch >= 1, got n={n}, batch={batch}")
    p = next_power_of_2(n)
    block_c = min(128, p)
    return min(16, p), block_c, 8 if block_c >= 64 else 4, 255, (batch,)


# --------------------------------------------------------------------------- checks
def _check_gains(gains: torch.Tensor) -> None:
    if not isinstance(gains, torch.Tensor):
        raise RiaInputError(f"gains must be a torch.Tensor, got {type(gains).__name__}")
    if gains.dim() != 3 or gains.shape[1] != gains.shape[2]:
        raise RiaInputError(f"gains must be a batch of square matrices [B, n, n], got shape {tuple(gains.shape)}")
    if gains.dtype == torch.bool or gains.is_complex():
        raise RiaInputError(f"gains dtype {gains.dtype} unsupported; expected a real float or integer tensor")
    if gains.numel() and not bool(torch.isfinite(gains).all()):
        raise RiaInputError("gains must contain only finite values (no inf/nan)")
    if gains.shape[1] > _INT32_MAX // 2 or gains.shape[0] > MAX_GRID_X:
        raise RiaInputError(f"gains shape {tuple(gains.shape)} too large (n < 2^30, B < 2^31)")


def _check_args(eps: Optional[float], max_iters: int, eps_start: Optional[float] = None) -> None:
    import math
    for name, v in (("eps", eps), ("eps_start", eps_start)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                              or v <= 0):
            raise RiaInputError(f"{name} must be a finite number > 0, got {v!r}")
    if isinstance(max_iters, bool) or not isinstance(max_iters, int) or not 1 <= max_iters <= _INT32_MAX:
        raise RiaInputError(f"max_iters must be an integer in [1, 2^31), got {max_iters!r}")


def _kernel_dtype(gains: torch.Tensor) -> torch.Tensor:
    """float32 / float64 as stored (read and widened exactly in the kernel); other floats to
    float32 (exact), integers to float64 (exact below 2^53)."""
    if gains.dtype in (torch.float32, torch.float64):
        return gains.detach().contiguous()
    if gains.dtype in (torch.float16, torch.bfloat16):
        return gains.detach().float().contiguous()
    return gains.detach().double().contiguous()


def _check_prices(prices: Optional[torch.Tensor], gains: torch.Tensor) -> Optional[torch.Tensor]:
    """Initial prices (warm start): float64 [B, n] on the gains' device, finite."""
    if prices is None:
        return None
    b, n, _ = gains.shape
    if not isinstance(prices, torch.Tensor) or tuple(prices.shape) != (b, n):
        raise RiaInputError(f"prices must be a tensor of shape [{b}, {n}] (one per column of each problem), got "
                            f"{tuple(prices.shape) if isinstance(prices, torch.Tensor) else type(prices).__name__}")
    if not prices.is_floating_point() or prices.device != gains.device:
        raise RiaInputError(f"prices must be a float tensor on {gains.device}, got {prices.dtype} on {prices.device}")
    if prices.numel() and not bool(torch.isfinite(prices).all()):
        raise RiaInputError("prices must contain only finite values (no inf/nan)")
    return prices.detach().double().clone()


def _schedules(a: torch.Tensor, eps: Optional[float],
               eps_start: Optional[float] = None) -> tuple[list[list[float]], torch.Tensor]:
    """Per problem: eps of each phase, and eps_final (0 for problems with nothing to choose)."""
    b, n, _ = a.shape
    flat = a.reshape(b, -1).double()
    scale = (flat.amax(1) - flat.amin(1)).tolist() if n else [0.0] * b
    integer = (flat == flat.round()).all(1).tolist() if n else [True] * b
    sched = [eps_schedule(s, n, i, eps, eps_start) for s, i in zip(scale, integer)]
    final = torch.tensor([s[-1] if s else 0.0 for s in sched], dtype=torch.float64)
    return sched, final


def _phase_eps(sched: list[list[float]], k: int, device) -> torch.Tensor:
    return torch.tensor([s[k] if k < len(s) else 0.0 for s in sched], dtype=torch.float64, device=device)


def duality_gap(gains: torch.Tensor, cols: torch.Tensor, prices: torch.Tensor) -> torch.Tensor:
    """``sum_i max_j (gain_ij - p_j) + sum_j p_j - sum_i gain[i, cols_i]`` per problem (float64):
    weak duality makes it an upper bound on optimum - total, for any prices."""
    a = gains.double()
    if a.shape[1] == 0:
        return a.new_zeros(a.shape[0])
    profit = (a - prices[:, None, :]).amax(2).sum(1)
    total = a.gather(2, cols[:, :, None]).squeeze(2).sum(1)
    return (profit + prices.sum(1) - total).clamp(min=0.0)


# --------------------------------------------------------------------------- torch reference
def auction_batched_reference(gains: torch.Tensor, *, eps: Optional[float] = None,
                              prices: Optional[torch.Tensor] = None, eps_start: Optional[float] = None,
                              block_r: Optional[int] = None) -> BatchedAuctionResult:
    """The kernel's algorithm in torch, one problem at a time (slow; the specification the
    Triton kernel must match bit for bit, see the module doc). ``block_r``: bidders per
    iteration (default: the launch config's)."""
    _check_gains(gains)
    _check_args(eps, 1, eps_start)
    init = _check_prices(prices, gains)
    a_all = _kernel_dtype(gains)
    b, n, _ = a_all.shape
    dev = a_all.device
    if block_r is None:
        block_r = auction_launch_config(max(n, 1), max(b, 1))[0]
    sched, final = _schedules(a_all, eps, eps_start)
    cols = torch.arange(n, device=dev).repeat(b, 1)
    prices = torch.zeros(b, n, dtype=torch.float64, device=dev) if init is None else init
    iters = torch.zeros(b, dtype=torch.long)
    for p_i in range(b):
        if not sched[p_i]:
            continue
        a = a_all[p_i].double()
        p = prices[p_i]
        rc = torch.full((n,), -1, dtype=torch.long, device=dev)
        cr = torch.full((n,), -1, dtype=torch.long, device=dev)
        ar = torch.arange(n, device=dev)
        for k, e in enumerate(sched[p_i]):
            if k > 0:  # drop pairs violating e-complementary slackness
                best = (a - p).amax(1)
                cl = rc.clamp(min=0)
                own = a[ar, cl] - p[cl]
                unhappy = (rc >= 0) & (own < best - e)
                cr[rc[unhappy]] = -1
                rc[unhappy] = -1
            while True:
                free = (rc < 0).nonzero().squeeze(1)
                if free.numel() == 0:
                    break
                rows = free[:block_r]
                v = a[rows] - p
                v1, j1 = v.max(1)              # first maximum: lowest column among ties
                v2 = v.scatter(1, j1[:, None], float("-inf")).amax(1)
                bid = p[j1] + (v1 - v2) + e
                same = j1[None, :] == j1[:, None]
                beats = same & ((bid[None, :] > bid[:, None]) | ((bid[None, :] == bid[:, None])
                                                                 & (rows[None, :] < rows[:, None])))
                win = ~beats.any(1)
                w_rows, w_cols, w_bid = rows[win], j1[win], bid[win]
                old = cr[w_cols]
                rc[old[old >= 0]] = -1
                cr[w_cols] = w_rows
                p[w_cols] = w_bid
                rc[w_rows] = w_cols
                iters[p_i] += 1
                if int(iters[p_i]) > _MAX_ITERS:  # pragma: no cover - defensive
                    raise RuntimeError("auction did not terminate; please report the gain matrix")
        cols[p_i] = rc
    phases = max((len(s) for s in sched), default=0)
    return BatchedAuctionResult(cols, prices, iters, phases, phases, final, final * n,
                                duality_gap(a_all, cols, prices).cpu())


# --------------------------------------------------------------------------- Triton
try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is a hard dependency
    triton = None


if triton is not None:
    @triton.jit
    def _free_rows(row_col, scratch, n, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        """Number of unassigned rows; the first BLOCK_R of them (ascending) written to scratch."""
        cs = tl.arange(0, BLOCK_C)
        count = n * 0
        for c0 in range(0, n, BLOCK_C):
            idx = c0 + cs
            ok = idx < n
            rc = tl.load(row_col + idx, mask=ok, other=0, cache_modifier=".cg")
            free = ((rc < 0) & ok).to(tl.int32)
            pos = tl.cumsum(free, 0) - 1 + count
            tl.store(scratch + pos, idx, mask=(free != 0) & (pos < BLOCK_R))
            count += tl.sum(free, 0)
        tl.debug_barrier()  # the list is read by other threads
        return count

    @triton.jit
    def _row_top2(gain, price, rows, row_ok, n, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        """Per row of ``rows``: best net value v1 = max_j gain - price, its column j1 (lowest
        among ties) and the second best v2 (== v1 on a tie), streamed over column chunks. Rows
        not ``row_ok`` (unused bidder slots) load nothing: in the single-bidder tails that saves
        BLOCK_R - 1 rows of gain traffic per iteration; their results are garbage, never used."""
        cs = tl.arange(0, BLOCK_C)
        r1 = tl.full([BLOCK_R], float("-inf"), tl.float64)
        r2 = tl.full([BLOCK_R], float("-inf"), tl.float64)
        ri = tl.zeros([BLOCK_R], tl.int32)
        roff = rows.to(tl.int64) * n
        for c0 in range(0, n, BLOCK_C):
            cols = c0 + cs
            cv = cols < n
            a = tl.load(gain + roff[:, None] + cols[None, :], mask=row_ok[:, None] & cv[None, :],
                        other=0.0).to(tl.float64)
            p = tl.load(price + cols, mask=cv, other=0.0, cache_modifier=".cg")
            v = tl.where(cv[None, :], a - p[None, :], float("-inf"))
            m1 = tl.max(v, 1)
            idx = tl.min(tl.where(v == m1[:, None], cols[None, :], 2147483647), 1)
            s = tl.max(tl.where(cols[None, :] == idx[:, None], float("-inf"), v), 1)
            gt = m1 > r1   # this chunk holds the new best (earlier chunks keep ties: lower index)
            r2 = tl.where(gt, tl.maximum(r1, s), tl.where(m1 == r1, r1, tl.maximum(r2, m1)))
            ri = tl.where(gt, idx, ri)
            r1 = tl.where(gt, m1, r1)
        return r1, ri, r2

    @triton.jit
    def _auction_kernel(gain_ptr, price_ptr, row_col_ptr, col_row_ptr, eps_ptr, scratch_ptr, status_ptr,
                        n, max_iters, DROP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        e = tl.load(eps_ptr + b)
        if e > 0:  # eps 0: this problem has no phase left (or nothing to choose)
            gain = gain_ptr + b * n * n
            price = price_ptr + b * n
            row_col = row_col_ptr + b * n
            col_row = col_row_ptr + b * n
            scratch = scratch_ptr + b * BLOCK_R
            ks = tl.arange(0, BLOCK_R)
            if DROP:
                # new phase: keep only the pairs within e of their row's best net value
                for r0 in range(0, n, BLOCK_R):
                    rows = r0 + ks
                    rv = rows < n
                    rr = tl.where(rv, rows, 0)
                    v1, j1, v2 = _row_top2(gain, price, rr, rv, n, BLOCK_R, BLOCK_C)
                    own_c = tl.load(row_col + rr, mask=rv, other=-1, cache_modifier=".cg")
                    oc = tl.maximum(own_c, 0)
                    own = (tl.load(gain + rr.to(tl.int64) * n + oc).to(tl.float64)
                           - tl.load(price + oc, cache_modifier=".cg"))
                    unhappy = rv & (own_c >= 0) & (own < v1 - e)
                    tl.debug_barrier()  # every thread has read row_col before any writes it
                    tl.store(col_row + oc, -1, mask=unhappy)
                    tl.store(row_col + rr, -1, mask=unhappy)
                tl.debug_barrier()
            count = _free_rows(row_col, scratch, n, BLOCK_R, BLOCK_C)
            it = n * 0
            while (count > 0) & (it < max_iters):
                valid = ks < count
                rows = tl.where(valid, tl.load(scratch + ks, cache_modifier=".cg"), 0)
                v1, j1, v2 = _row_top2(gain, price, rows, valid, n, BLOCK_R, BLOCK_C)
                bid = tl.load(price + j1, cache_modifier=".cg") + (v1 - v2) + e
                # per column the highest bid of the block wins, ties to the lowest row
                beats = (valid[None, :] & (j1[None, :] == j1[:, None])
                         & ((bid[None, :] > bid[:, None])
                            | ((bid[None, :] == bid[:, None]) & (rows[None, :] < rows[:, None]))))
                win = valid & (tl.sum(beats.to(tl.int32), 1) == 0)
                old = tl.load(col_row + j1, mask=win, other=-1, cache_modifier=".cg")
                tl.debug_barrier()  # all reads of prices / the bidder list done before the writes
                tl.store(row_col + old, -1, mask=win & (old >= 0))  # evicted owner (never a bidder)
                tl.store(col_row + j1, rows, mask=win)
                tl.store(price + j1, bid, mask=win)
                tl.store(row_col + rows, j1, mask=win)
                tl.debug_barrier()
                count = _free_rows(row_col, scratch, n, BLOCK_R, BLOCK_C)
                it += 1
            tl.store(status_ptr + 2 * b, it)
            tl.store(status_ptr + 2 * b + 1, count)


@_device.guarded  # the inputs' device and stream (issue 20)
def _auction_triton(gains: torch.Tensor, eps: Optional[float], max_iters: int,
                    prices: Optional[torch.Tensor] = None, eps_start: Optional[float] = None) -> BatchedAuctionResult:
    a = _kernel_dtype(gains)
    b, n, _ = a.shape
    dev = a.device
    sched, final = _schedules(a, eps, eps_start)
    block_r, block_c, warps, maxnreg, grid = auction_launch_config(n, b)
    prices = torch.zeros(b, n, dtype=torch.float64, device=dev) if prices is None else prices.contiguous()
    row_col = torch.full((b, n), -1, dtype=torch.int32, device=dev)
    col_row = torch.full((b, n), -1, dtype=torch.int32, device=dev)
    scratch = torch.zeros(b, block_r, dtype=torch.int32, device=dev)
    status = torch.zeros(b, 2, dtype=torch.int32, device=dev)
    iters = torch.zeros(b, dtype=torch.long)
    phases = max((len(s) for s in sched), default=0)
    launches = 0
    for k in range(phases):
        eps_k = _phase_eps(sched, k, dev)
        drop = k > 0
        while True:
            status.zero_()
            _auction_kernel[grid](a, prices, row_col, col_row, eps_k, scratch, status, n, max_iters,
                                  DROP=drop, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=warps, maxnreg=maxnreg)
            launches += 1
            if _backend._AOT_RECORDING:  # the AOT gate's recorder: nothing ran, one launch per variant
                break
            st = status.cpu()  # the one sync per launch
            iters += st[:, 0].long()
            if int(iters.max()) > _MAX_ITERS:  # pragma: no cover - defensive
                raise RuntimeError("auction did not terminate; please report the gain matrix")
            if not bool((st[:, 1] > 0).any()):
                break
            drop = False  # continue the phase where it stopped
    trivial = torch.tensor([not s or _backend._AOT_RECORDING for s in sched], device=dev)
    cols = torch.where(trivial[:, None], torch.arange(n, device=dev), row_col.long())
    return BatchedAuctionResult(cols, prices, iters, phases, launches, final, final * n,
                                duality_gap(a, cols, prices).cpu())


# --------------------------------------------------------------------------- public API
def auction_batched(gains: torch.Tensor, *, eps: Optional[float] = None, backend: Optional[str] = None,
                    max_iters: int = MAX_ITERS_PER_LAUNCH, prices: Optional[torch.Tensor] = None,
                    eps_start: Optional[float] = None) -> BatchedAuctionResult:
    """Solve ``B`` square assignment problems ``gains[B, n, n]`` (maximise each total); see the
    module doc. ``eps``: final epsilon (default: relative 1e-6, exact for integer gains);
    ``max_iters``: bidding iterations per launch before the host re-launches (Triton).

    Warm start: ``prices`` (float [B, n], e.g. ``result.prices`` of the previous, similar
    problems) are the initial prices, and ``eps_start`` caps the first phase's eps. The forward
    auction terminates from any prices with the same eps-complementary slackness, so the
    optimality bound is unchanged; near-optimal prices with a small ``eps_start`` skip the
    early phases."""
    _check_gains(gains)
    _check_args(eps, max_iters, eps_start)
    init = _check_prices(prices, gains)
    b, n, _ = gains.shape
    if b == 0 or n == 0:
        z = torch.zeros(b, dtype=torch.float64)
        return BatchedAuctionResult(torch.empty(b, n, dtype=torch.long, device=gains.device),
                                    torch.empty(b, n, dtype=torch.float64, device=gains.device),
                                    torch.zeros(b, dtype=torch.long), 0, 0, z, z.clone(), z.clone())
    if resolve_backend("auction_batched", gains, backend) == "triton":
        return _auction_triton(gains, eps, max_iters, init, eps_start)
    return auction_batched_reference(gains, eps=eps, prices=init, eps_start=eps_start)


# --------------------------------------------------------------------------- AOT gate cases
def aot_cases() -> Iterable[tuple[str, Callable[[], object]]]:
    """Launch configurations for ``scripts/check_triton_aot.py`` (recorded, never run). ``n`` is a
    runtime argument: what changes the compiled kernel is the config (BLOCK_R, BLOCK_C, warps:
    constant from n = 128 up), whether n is a multiple of 16 (Triton's divisibility
    specialisation), the gain dtype (float32 / float64) and DROP (phase 0 / later phases). So:
    2048 (one 8192-wide 2:4 round; 7168 = down_proj compiles to the same kernel), 1000 (not a
    multiple of 16), and 48, 61, 31, 13, 5, 3, 2 (every smaller config)."""
    _dt = {"fp32": torch.float32, "fp64": torch.float64}
    cases = []
    for n, b in ((2048, 1), (1000, 2), (48, 2), (61, 1), (31, 1), (13, 2), (5, 3), (3, 2), (2, 1)):
        for dt in ("fp32", "fp64"):
            def run(n=n, b=b, dt=dt):
                g = torch.zeros(b, n, n, dtype=_dt[dt])
                g[:, 0, 0] = 1.0  # non-constant: one phase is launched
                return auction_batched(g, backend="triton")
            cases.append((f"auction {dt} B={b} n={n}", run))
    return cases
