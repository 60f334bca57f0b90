"""Linear sum assignment (maximise the total gain) for the channel-permutation search.

``linear_sum_assignment(gain)`` returns ``(rows, cols)``: row ``rows[k]`` is assigned to
column ``cols[k]`` (``rows`` ascending, like scipy). Solvers:

* ``"scipy"``: exact (Hungarian / Jonker-Volgenant) ``scipy.optimize.linear_sum_assignment``
  on the CPU; a CUDA tensor is copied to the host and the result back.
* ``"auction"``: Bertsekas' forward auction with epsilon-scaling, vectorised in torch on
  the tensor's own device (float64). Jacobi bidding: every unassigned row bids at once
  for its best column ``j1`` with ``price[j1] + (v1 - v2) + eps`` (``v1``/``v2`` its best and
  second-best net values ``gain - price``); per column the highest bid wins
  (``scatter_reduce`` amax), ties to the lowest row index (amin), and the evicted owner
  becomes unassigned. The only Python loop is over bidding iterations; the host syncs
  only every ``check_every`` iterations (CUDA: 8) to test "all assigned" and to compact
  the list of bidders (the number of unassigned rows never grows within a phase, so a
  fixed-size compaction done on the device stays valid until the next check).

  Optimality: at the end every row is within ``eps_final`` of its best net value
  (eps-complementary slackness), so the total is within ``n * eps_final`` of the optimum
  (``n`` = the larger side). Default ``eps_final = 1e-6 * scale / n`` with
  ``scale = max(gain) - min(gain)``, i.e. the total is within ``1e-6 * scale`` of the
  optimum; if every entry is an integer it is additionally capped at ``1 / (n + 1)``,
  which makes the result exactly optimal (the gap is an integer below 1). ``eps=``
  overrides ``eps_final``. Phases start at ``eps = scale / 20`` and divide by 4 (prices are
  kept across phases, and so are the pairs that still satisfy eps-complementary slackness
  for the new eps), the classic scaling schedule.

* ``"lapjv"``: exact Jonker-Volgenant (``lap.lapjvs`` of the optional ``lapx`` package,
  ``pip install ria-kernels[fast]``) on the CPU, in float64 so it finds the same optimum
  as scipy; a CUDA tensor is copied to the host and the result back. Measured on one
  round's gain of the permutation search (heavy-tailed 8192x8192 score, 2:4 -> 2048x2048
  gain, loaded 2-core CPU, 2026-11-30): lapjv 4.6 s, scipy 25.3 s, same assignment; at
  1024x1024: 0.65 s vs 2.0 s. Over whole searches on a quiet machine it was slower than scipy
  (later rounds are harder for it), so it is opt-in. (lapx's float32 mode is faster still but
  picked assignments 1e-10 to 1.6e-7 (relative) below the optimum, so it is not used.)

* ``"auction_triton"``: the same auction as one persistent Triton program per problem
  (``ria_kernels.ops.auction``): bidding iterations loop inside the kernel, one launch per
  eps-scaling phase, so it is not bound by launch latency; same optimality guarantee (exact for
  integer gains). CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1`` (tests). Opt-in;
  :func:`linear_sum_assignment_batched` solves the B problems of ``gains[B, r, c]`` in one
  launch per phase.

* ``"sparse"``: exact, native (C++ built with the system compiler, :mod:`ria_kernels.lsa_sparse`):
  shortest augmenting paths on each row's top-k candidate columns, widened lazily whenever a
  bound on the row's other columns could matter, and a dense dual proof at the end
  (``max_j (gain_ij - v_j)`` is attained by every row's column to ``1e-12 * max|gain|``; the
  certified gap to the optimum is returned by ``sparse_lap``). CPU; a CUDA tensor is copied to
  the host and the result back. Measured on the 2-core CPU shared with other jobs (load 3.8-4.7,
  2026-12-03, ``OMP_NUM_THREADS=2``): the 8192x8192 2:4 search's LSA stage 10.8 s vs scipy's
  26.5 s in the same run (rounds 3.0 / 4.1 / 1.7 / 2.1 s vs 11.5 / 12.0 / 2.0 / 1.1 s), the
  LLaMA-2-7B down_proj problem 4096x11008 17.4 s vs 54.6 s, the same retained score
  (``benchmarks/results/permutation_cpu_sparse_lap_8192.json``, ``..._down7b.json``). On
  problems below a few hundred rows it is slower than scipy by about a millisecond.

* ``None`` / ``"auto"``: ``sparse`` where it builds, else ``scipy`` with a logged warning (see
  :func:`resolve_solver`). The auction is opt-in: on a contended 2-core CPU (2048x2048 gain of one search
  round on a 128x8192 RIA-like score) scipy took 8.9 s, the auction 58 s (55,512 bidding
  iterations, 15 phases, gap 1.5e-11); random 2048x2048: scipy 0.37 s, auction 32 s
  (7,367 iterations). Its GPU time is not measured yet: the structured gains need many
  iterations whose tail has one bidder, so the GPU time is bound by per-iteration launch
  latency. Env override: ``RIA_KERNELS_LSA_SOLVER=sparse|lapjv|scipy|auction|auto``; an explicit
  ``solver=`` wins. The choice is logged once per (solver, device type).

Rectangular problems: ``rows <= cols`` is solved as a square problem padded with
constant (zero) rows, which does not change which real assignment is optimal;
``rows > cols`` is solved on the transpose.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from ._errors import BackendUnavailableError, RiaInputError
from ._logging import log_once

SOLVERS = ("sparse", "lapjv", "scipy", "auction", "auction_triton")
_ENV = "RIA_KERNELS_LSA_SOLVER"
_REL_EPS = 1e-6     # default final eps: total within 1e-6 * (max - min) of the optimum
_EPS_START = 0.05   # first phase eps = scale / 20
_EPS_FACTOR = 4.0   # eps divided by this between phases
_MAX_ITERS = 10_000_000  # guard only: the auction always terminates on a complete bipartite graph


@dataclass
class AuctionResult:
    cols: torch.Tensor    # LongTensor [n]: row i -> column cols[i] (square problem)
    iterations: int       # bidding iterations over all phases
    phases: int
    eps_final: float
    bound: float          # total gain is within this of the optimum (n * eps_final)


def lapjv_available() -> bool:
    """Whether the optional ``lapx`` package (module ``lap`` with ``lapjvs``) is importable."""
    try:
        import lap
    except ImportError:
        return False
    return hasattr(lap, "lapjvs")


def resolve_solver(gain: torch.Tensor, solver: str | None = None) -> str:
    """The one dispatch point: explicit ``solver``, then ``RIA_KERNELS_LSA_SOLVER``, then the
    automatic choice: ``sparse`` (exact, native; :mod:`ria_kernels.lsa_sparse`) where it builds,
    else ``scipy`` with a logged warning. Measured on the 2-core CPU, 2026-12-03 (load 2-3.5,
    shared): the whole 8192x8192 2:4 search's LSA stage and the LLaMA-2-7B down_proj problem
    4096x11008 (see the module doc for the numbers and result files). ``lapjv`` (exact too) and
    the auction are opt-in.

    The auction stays opt-in: on the permutation search's gain matrices it needed ~55k
    bidding iterations for one 2048x2048 round and ran 7-90x slower than scipy on a CPU
    (2026-11-22); it has not been timed on a GPU."""
    forced = solver if solver is not None else (os.environ.get(_ENV) or None)
    source = "argument" if solver is not None else _ENV
    if forced is not None:
        if not isinstance(forced, str) or forced.lower() not in SOLVERS + ("auto",):
            raise RiaInputError(f"solver ({source}) must be one of {SOLVERS + ('auto',)} or None, got {forced!r}")
        forced = forced.lower()
    if forced in (None, "auto"):
        from . import lsa_sparse
        lib, why = lsa_sparse.native_lib()
        if lib is not None:
            choice = "sparse"
        else:
            choice = "scipy"
            log_once(("lsa", "sparse-fallback"), "linear_sum_assignment: native sparse solver unavailable (%s); "
                     "solver=scipy", why, level=30)
    else:
        choice = forced
    if choice == "lapjv" and not lapjv_available():
        raise BackendUnavailableError("linear_sum_assignment: solver 'lapjv' needs the lapx package "
                                      "(pip install lapx, or ria-kernels[fast])")
    if choice == "sparse":
        from . import lsa_sparse
        lib, why = lsa_sparse.native_lib()
        if lib is None:
            raise BackendUnavailableError(f"linear_sum_assignment: solver 'sparse' unavailable: {why}")
    if choice == "scipy":
        try:
            import scipy.optimize  # noqa: F401
        except ImportError as e:  # pragma: no cover - scipy is a dependency
            raise BackendUnavailableError("linear_sum_assignment: solver 'scipy' needs scipy installed") from e
    if choice == "auction_triton":
        from ._backend import _AOT_RECORDING, interpret_mode
        if gain.device.type != "cuda" and not (interpret_mode() or _AOT_RECORDING):
            raise BackendUnavailableError(f"linear_sum_assignment: solver 'auction_triton' needs a CUDA tensor "
                                          f"(got {gain.device.type}; set TRITON_INTERPRET=1 to run it on the CPU)")
    log_once(("lsa", choice, gain.device.type), "linear_sum_assignment: solver=%s (device=%s)",
             choice, gain.device.type)
    return choice


def _check_gain(gain: torch.Tensor, name: str = "gain") -> None:
    if not isinstance(gain, torch.Tensor):
        raise RiaInputError(f"{name} must be a torch.Tensor, got {type(gain).__name__}")
    if gain.dim() != 2:
        raise RiaInputError(f"{name} must be 2-D [rows, cols], got shape {tuple(gain.shape)}")
    if gain.dtype == torch.bool or gain.is_complex():
        raise RiaInputError(f"{name} dtype {gain.dtype} unsupported; expected a real float or integer tensor")
    if gain.numel() and not bool(torch.isfinite(gain).all()):
        raise RiaInputError(f"{name} must contain only finite values (no inf/nan)")


def _check_eps(eps: float | None) -> None:
    if eps is None:
        return
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise RiaInputError(f"eps must be a finite number > 0, got {eps!r}")


def linear_sum_assignment(gain: torch.Tensor, *, solver: str | None = None,
                          eps: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Assignment maximising ``gain[rows, cols].sum()``; LongTensors on ``gain``'s device.

    ``eps`` is the auction's final epsilon (ignored by sparse, lapjv and scipy, which are exact)."""
    _check_gain(gain)
    _check_eps(eps)
    choice = resolve_solver(gain, solver)
    r, c = gain.shape
    dev = gain.device
    if r == 0 or c == 0:
        empty = torch.empty(0, dtype=torch.long, device=dev)
        return empty, empty.clone()
    if choice == "lapjv":
        return _lapjv(gain)
    if choice == "sparse":
        return _sparse(gain)
    if choice == "scipy":
        from scipy.optimize import linear_sum_assignment as _scipy_lsa
        rows, cols = _scipy_lsa(gain.detach().double().cpu().numpy(), maximize=True)
        return torch.as_tensor(rows, device=dev), torch.as_tensor(cols, device=dev)
    if choice == "auction_triton":
        rows, cols = _auction_triton_batched(gain[None], eps)
        return rows[0], cols[0]
    if r > c:  # each column picks a row: solve the transpose, then sort by row
        cols_t, rows_t = linear_sum_assignment(gain.t(), solver="auction", eps=eps)
        order = torch.argsort(rows_t)
        return rows_t[order], cols_t[order]
    a = gain.detach().double()
    if r < c:  # constant dummy rows leave the optimal choice for the real rows unchanged
        a = torch.cat([a, a.new_zeros(c - r, c)], dim=0)
    res = auction(a, eps=eps)
    return torch.arange(r, device=dev), res.cols[:r]


def _sparse(gain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The native sparse-candidate solver on a square float64 problem: ``rows < cols`` padded with
    zero rows (constant rows leave the real rows' optimal choice unchanged), ``rows > cols`` transposed."""
    from .lsa_sparse import sparse_lap
    r, c = gain.shape
    dev = gain.device
    if r > c:
        cols_t, rows_t = _sparse(gain.t())
        order = torch.argsort(rows_t)
        return rows_t[order], cols_t[order]
    a = gain.detach().to("cpu", torch.float64)
    if r < c:
        a = torch.cat([a, a.new_zeros(c - r, c)], dim=0)
    cols = sparse_lap(a).cols[:r]
    return torch.arange(r, device=dev), cols.to(dev)


def linear_sum_assignment_batched(gains: torch.Tensor, *, solver: str | None = None,
                                  eps: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``B`` independent problems ``gains[B, r, c]`` (e.g. the communities of one permutation
    round): ``(rows, cols)``, LongTensors ``[B, min(r, c)]`` on ``gains``' device, problem b's
    assignment ``rows[b] -> cols[b]`` as :func:`linear_sum_assignment` would return it.
    ``auction_triton`` solves all B in one launch per eps phase; every other solver one
    problem at a time."""
    if not isinstance(gains, torch.Tensor):
        raise RiaInputError(f"gains must be a torch.Tensor, got {type(gains).__name__}")
    if gains.dim() != 3:
        raise RiaInputError(f"gains must be 3-D [B, rows, cols], got shape {tuple(gains.shape)}")
    _check_gain(gains.reshape(gains.shape[0], -1) if gains.shape[0] else gains.reshape(0, 0), "gains")
    _check_eps(eps)
    choice = resolve_solver(gains, solver)
    b, r, c = gains.shape
    k = min(r, c)
    dev = gains.device
    if b == 0 or k == 0:
        empty = torch.empty(b, 0, dtype=torch.long, device=dev)
        return empty, empty.clone()
    if choice == "auction_triton":
        return _auction_triton_batched(gains, eps)
    out = [linear_sum_assignment(gains[i], solver=choice, eps=eps) for i in range(b)]
    return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])


def _auction_triton_batched(gains: torch.Tensor, eps: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``gains[B, r, c]`` on the Triton auction: ``r > c`` on the transposes, ``r < c`` padded
    with constant (zero) rows, as the torch auction."""
    from .ops.auction import auction_batched
    b, r, c = gains.shape
    dev = gains.device
    if r > c:  # each column picks a row, then sort by row
        cols_t, rows_t = _auction_triton_batched(gains.transpose(1, 2), eps)
        order = torch.argsort(rows_t, dim=1)
        return rows_t.gather(1, order), cols_t.gather(1, order)
    a = gains.detach()
    if r < c:
        a = torch.cat([a, a.new_zeros(b, c - r, c)], dim=1)
    res = auction_batched(a, eps=eps, backend="triton")
    return torch.arange(r, device=dev).repeat(b, 1), res.cols[:, :r]


def _lapjv(gain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """lapx's Jonker-Volgenant on ``-gain`` (it minimises), float64, rows ascending like scipy."""
    import lap
    import numpy as np
    r, c = gain.shape
    cost = -gain.detach().to("cpu", torch.float64).numpy()
    if r > c:  # lapjvs pads to square; keep the padded side on the columns
        rows_t, cols_t = _lapjv(gain.t())
        order = torch.argsort(cols_t)
        return cols_t[order], rows_t[order]
    rows, cols = lap.lapjvs(np.ascontiguousarray(cost), extend_cost=r != c, return_cost=False, jvx_like=True,
                            prefer_float32=False)
    rows = torch.as_tensor(np.asarray(rows, dtype=np.int64))
    cols = torch.as_tensor(np.asarray(cols, dtype=np.int64))
    keep = (rows < r) & (cols < c)   # drop the pairs of padding rows
    rows, cols = rows[keep], cols[keep]
    order = torch.argsort(rows)
    return rows[order].to(gain.device), cols[order].to(gain.device)


def auction(gain: torch.Tensor, *, eps: float | None = None, check_every: int | None = None) -> AuctionResult:
    """Forward auction with eps-scaling on a square ``gain`` (maximise); see the module doc."""
    _check_gain(gain)
    _check_eps(eps)
    n, c = gain.shape
    if n != c:
        raise RiaInputError(f"auction needs a square gain matrix, got shape {tuple(gain.shape)}; "
                            "use linear_sum_assignment for rectangular problems")
    if check_every is not None and (not isinstance(check_every, int) or check_every < 1):
        raise RiaInputError(f"check_every must be an integer >= 1, got {check_every!r}")
    dev = gain.device
    a = gain.detach().double().contiguous()
    if n == 0:
        return AuctionResult(torch.empty(0, dtype=torch.long, device=dev), 0, 0, 0.0, 0.0)
    if check_every is None:
        # a host sync is free on the CPU, so compact the bidders every iteration there
        check_every = 8 if dev.type == "cuda" else 1
    lo, hi = a.min(), a.max()
    scale = float(hi - lo)
    if eps is None:
        eps_final = _REL_EPS * max(scale, 1e-300) / n
        if bool((a == a.round()).all()):
            eps_final = min(eps_final, 1.0 / (n + 1))
    else:
        eps_final = float(eps)
    if n == 1 or scale == 0.0:  # every assignment has the same total
        return AuctionResult(torch.arange(n, device=dev), 0, 0, eps_final, 0.0)

    prices = torch.zeros(n + 1, dtype=torch.float64, device=dev)  # slot n: dummy column
    ar = torch.arange(n, device=dev)
    big = torch.tensor(n, device=dev)
    iters = phases = 0
    e = max(scale * _EPS_START, eps_final)
    row_col = torch.full((n + 1,), -1, dtype=torch.long, device=dev)  # slot n: dummy row
    col_row = torch.full((n + 1,), -1, dtype=torch.long, device=dev)  # slot n: dummy column
    while True:
        phases += 1
        if phases > 1:
            _drop_unhappy(a, prices, row_col, col_row, e, n)
        bidders = ar
        while True:
            if iters % check_every == 0:
                free = row_col[:n] < 0
                count = int(free.sum())
                if count == 0:
                    break
                bidders = _compact(free, count, n, sync_free=check_every > 1)
            _bid(a, prices, row_col, col_row, bidders, e, n, big)
            iters += 1
            if iters > _MAX_ITERS:  # pragma: no cover - defensive
                raise RuntimeError("auction did not terminate; please report the gain matrix")
        if e <= eps_final:
            break
        e = max(e / _EPS_FACTOR, eps_final)
    return AuctionResult(row_col[:n].clone(), iters, phases, eps_final, n * eps_final)


def _drop_unhappy(a: torch.Tensor, prices: torch.Tensor, row_col: torch.Tensor, col_row: torch.Tensor,
                  e: float, n: int) -> None:
    """Start of a phase: keep only the pairs that satisfy e-complementary slackness for the
    new, smaller e. Rebuilding the whole assignment instead costs long single-row eviction
    chains in every phase even when the prices are already near-optimal."""
    assigned = row_col[:n]
    best = (a - prices[:n]).amax(dim=1)
    own = a[torch.arange(n, device=a.device), assigned.clamp(min=0)] - prices[assigned.clamp(min=0)]
    unhappy = (assigned >= 0) & (own < best - e)
    col_row.index_put_((torch.where(unhappy, assigned, n),), torch.tensor(-1, device=a.device))
    row_col[:n] = torch.where(unhappy, -1, assigned)


def _compact(free: torch.Tensor, count: int, n: int, sync_free: bool) -> torch.Tensor:
    """Indices of the ``count`` True entries of ``free``; ``sync_free``: without a host sync
    (cumsum + scatter; nonzero would sync on CUDA), padded with ``n``."""
    if not sync_free:
        return free.nonzero().squeeze(1)
    pos = torch.cumsum(free, 0) - 1
    out = torch.full((count + 1,), n, dtype=torch.long, device=free.device)
    out.scatter_(0, torch.where(free, pos, count), torch.arange(n, device=free.device))
    return out[:count]


def _bid(a: torch.Tensor, prices: torch.Tensor, row_col: torch.Tensor, col_row: torch.Tensor,
         bidders: torch.Tensor, e: float, n: int, big: torch.Tensor) -> None:
    """One Jacobi bidding round, in place. ``bidders`` may hold rows that got assigned since
    the last compaction (they are masked out) and padding index ``n``."""
    rows = bidders.clamp(max=n - 1)
    active = (bidders < n) & (row_col[bidders] < 0)
    v = a[rows] - prices[:n]                       # net values [u, n]
    top2 = torch.topk(v, 2, dim=1).values          # v1, v2 (tie: v1 == v2 -> increment eps)
    j1 = torch.argmax(v, dim=1)                    # first maximum: lowest column index wins ties
    bid = a[rows, j1] - top2[:, 1] + e             # = price[j1] + v1 - v2 + eps
    j1 = torch.where(active, j1, big)              # inactive rows bid on the dummy column
    best = torch.full((n + 1,), -math.inf, dtype=torch.float64, device=a.device)
    best.scatter_reduce_(0, j1, bid, reduce="amax")
    top = active & (bid == best[j1])
    winner = torch.full((n + 1,), n, dtype=torch.long, device=a.device)
    winner.scatter_reduce_(0, j1, torch.where(top, bidders, big), reduce="amin")
    got = winner[:n] < n                           # columns that received a bid
    old = torch.where(got, col_row[:n], -1)
    # evict previous owners (unowned / untouched columns write to the dummy slot n)
    row_col.index_put_((torch.where(old >= 0, old, big),), torch.tensor(-1, device=a.device))
    w = torch.where(got, winner[:n], big)
    row_col.index_put_((w,), torch.where(got, torch.arange(n, device=a.device), -1))
    col_row[:n] = torch.where(got, winner[:n], col_row[:n])
    prices[:n] = torch.where(got, best[:n], prices[:n])
