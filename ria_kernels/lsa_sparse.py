"""Exact linear sum assignment on sparse candidate lists, with a dense dual optimality proof.

``sparse_lap(gain)`` maximises ``gain[i, cols[i]].sum()`` over a square float64 matrix with a
native C++ solver (built with the system C++ compiler into ``$RIA_KERNELS_CACHE_DIR``,
``ria_kernels._native``; ctypes releases the GIL while it runs). It is exact, not approximate:

* **Shortest augmenting paths** (Jonker-Volgenant / Hungarian, Dijkstra on the slacks
  ``U_i + V_j - gain_ij >= 0``), but each row's Dijkstra step reads only its candidate list:
  the row's top-``k`` columns by net value ``gain_ij - V_j`` (``V`` = column prices).
* **The dense matrix is never left out**: ``theta_i``, the largest net value among row ``i``'s
  NON-candidates at its last selection, stays an upper bound on them because prices only rise
  during the solve. Every scanned row puts a bound entry ``dist_i + U_i - theta_i`` (a lower
  bound on any path through its non-candidate edges) into the Dijkstra heap; when that entry is
  the smallest, the row re-selects twice as many candidates by the current prices and the search
  goes on. So ``U_i >= theta_i`` holds throughout: the duals are feasible for the DENSE matrix
  at every step, and each augmenting path is a shortest path of the dense problem.
* **Proof at the end**, over every entry: ``best_i = max_j (gain_ij - V_j)`` (dense) and the
  matched column's ``own_i = gain_{i,cols[i]} - V_{cols[i]}``. With ``U_i = best_i`` the duals
  are feasible everywhere, so no assignment beats ``sum(U) + sum(V)``, and the matching's total is
  that minus ``gap = sum_i (best_i - own_i)``: the certified distance to the optimum. A row with
  ``best_i - own_i > tol`` (float rounding; not seen on any test or benchmark matrix) is widened,
  re-priced to ``best_i`` and re-augmented, warm from the current duals and matching, until none
  is left. ``tol = 1e-12 * max|gain|``, so the total is within ``n * tol`` of the optimum; on
  integer matrices (zero or column start) every dual stays an integer and the result is exactly
  optimal.

Starting prices (speed only, every start gives the optimum): zero, or column reduction
(``V_j = max_i gain_ij``, Jonker-Volgenant's first step). Column reduction won on the
permutation search's first rounds, whose gains carry a large positive offset per candidate
(near-additive: ``min >= 0.1 * mean``); zero prices won on the later rounds (small gains, many
exact zeros). ``start="auto"`` picks by that test. Measured on the 4 rounds' 2048x2048 gains of
the 8192x8192 2:4 search (``benchmarks/bench_sparse_lap.py``, 2-core CPU shared with other jobs
at load 5.8-6.6, 2026-12-03: ``benchmarks/results/sparse_lap_rounds_8192.json``), seconds per
round 0 / 1 / 2 / 3: scipy 19.3 / 29.6 / 6.2 / 1.4; auto 4.1 / 9.0 / 3.2 / 2.8; zero prices
20.6 / 31.7 / 4.2 / 2.9; column reduction 4.2 / 8.8 / 22.5 / 15.3; the same optimum every time.
A warm start from the previous round's final prices (``start="prices"``) was slower than
``auto`` on every round (14.5 / 13.4 / 21.0 s for rounds 1-3; a new block position is a new
problem), so the search does not pass prices between rounds. Also tried and not kept (no clear
gain in same-load comparisons on these matrices): Jonker-Volgenant's augmenting row reduction
before the paths, lists sorted by net value with lazily relaxed edges, an indexed heap.
"""
from __future__ import annotations

import ctypes
import math
import threading
from dataclasses import dataclass, field

import torch

from ._errors import BackendUnavailableError, RiaInputError
from ._native import build_shared, load_once

START = ("auto", "zero", "column", "prices")
DEFAULT_K = 32          # candidates per row at the start (16 and 64 measured no better)
_REL_TOL = 1e-12        # proof tolerance, relative to max |gain|
_MAX_OUTER = 64         # proof rounds before giving up (each widens the violating rows)
STAT_NAMES = ("outer", "edges", "augments", "pops", "relaxations", "violations", "greedy_matched", "gap",
              "init_s", "augment_s", "proof_s", "total_s", "refreshes")

_SRC = r"""
// Exact LAP (maximise) by shortest augmenting paths on lazily grown candidate lists, with a
// dense dual optimality proof at the end.
#include <stdint.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <utility>
#include <vector>

namespace {

typedef std::pair<double, int32_t> HeapItem;
const double INF = std::numeric_limits<double>::infinity();

struct Solver {
    int64_t n, kmin;
    const double *g;                          // dense gain [n][n], row-major
    std::vector<std::vector<int32_t>> adj;    // candidate columns per row
    std::vector<std::vector<double>> adjg;    // their gains (copied: Dijkstra reads them sequentially)
    std::vector<double> theta;                // max net value g_ij - V_j over row i's NON-candidates when
                                              // last selected (-inf: all columns are candidates); prices
                                              // only rise, so it stays an upper bound on them
    std::vector<double> U, V;                 // duals: U_i + V_j >= g_ij for ALL i, j (U_i >= theta_i)
    std::vector<int32_t> rowsol, colsol;
    // Dijkstra scratch
    std::vector<double> d, rowmu, pkey;
    std::vector<int32_t> pred, touched, sc, scanned, idx;
    std::vector<char> fin, mark;
    std::vector<double> net;
    std::vector<HeapItem> heap;
    int64_t augments = 0, pops = 0, relax = 0, expansions = 0;

    Solver(const double *g_, int64_t n_, int64_t k_) : n(n_), kmin(k_), g(g_), adj(n_), adjg(n_), theta(n_, -INF),
        U(n_), V(n_), rowsol(n_, -1), colsol(n_, -1), d(n_, INF), rowmu(n_, 0.0), pkey(n_, INF), pred(n_, -1),
        fin(n_, 0), mark(n_, 0), net(n_) { idx.reserve(n_); }

    // Append row i's best `m` non-candidate columns by current net value; update theta_i.
    void select(int64_t i, int64_t m) {
        const double *gi = g + i * n;
        std::vector<int32_t> &a = adj[i];
        for (int32_t j : a) mark[j] = 1;
        idx.clear();
        for (int64_t j = 0; j < n; ++j)
            if (!mark[j]) { idx.push_back((int32_t)j); net[j] = gi[j] - V[j]; }
        for (int32_t j : a) mark[j] = 0;
        const auto by_net = [&](int32_t x, int32_t y) { return net[x] > net[y] || (net[x] == net[y] && x < y); };
        if ((int64_t)idx.size() > m) {
            std::nth_element(idx.begin(), idx.begin() + m, idx.end(), by_net);
            double th = -INF;
            for (size_t q = (size_t)m; q < idx.size(); ++q) th = std::max(th, net[idx[q]]);
            theta[i] = th;
            idx.resize((size_t)m);
        } else {
            theta[i] = -INF;
        }
        for (int32_t j : idx) { a.push_back(j); adjg[i].push_back(gi[j]); }
        ++expansions;
    }

    // Row r's bound entry popped: re-select twice as many candidates by the CURRENT net values
    // (prices only rose since the last selection, so the old theta is loose) and relax them from
    // the row's distance. (Re-selecting only kmin measured slower: rows refresh over and over.)
    void refresh(int32_t r) {
        const int64_t m = std::max<int64_t>(kmin, (int64_t)adj[r].size() * 2);
        adj[r].clear();
        adjg[r].clear();
        select(r, std::min<int64_t>(m, n));
        relax_row(r, rowmu[r], 0);
        push_bound(r);
    }

    void relax_row(int32_t i, double mu, size_t e0) {
        const int32_t *cols = adj[i].data();
        const double *gs = adjg[i].data();
        const size_t deg = adj[i].size();
        const double base = mu + U[i];
        relax += (int64_t)(deg - e0);
        for (size_t e = e0; e < deg; ++e) {
            const int32_t j = cols[e];
            if (fin[j]) continue;
            double nd = base + V[j] - gs[e];
            if (nd < mu) nd = mu;  // rounding only: every slack is >= 0
            if (nd < d[j]) {
                if (d[j] == INF) touched.push_back(j);
                d[j] = nd;
                pred[j] = i;
                heap.push_back(HeapItem(nd, j));
                std::push_heap(heap.begin(), heap.end(), std::greater<HeapItem>());
            }
        }
    }

    // A lower bound on the path length through row i's non-candidate columns, as a heap entry:
    // when it is the smallest entry, the row's candidate list is widened.
    void push_bound(int32_t i) {
        if (theta[i] == -INF) return;
        const double key = rowmu[i] + std::max(0.0, U[i] - theta[i]);
        pkey[i] = key;
        heap.push_back(HeapItem(key, (int32_t)(n + i)));
        std::push_heap(heap.begin(), heap.end(), std::greater<HeapItem>());
    }

    void scan(int32_t i, double mu) {
        rowmu[i] = mu;
        scanned.push_back(i);
        relax_row(i, mu, 0);
        push_bound(i);
    }

    // Shortest augmenting path from free row i0 over the dense matrix, reading only candidate
    // edges plus one bound entry per scanned row. Returns false if no free column is reachable.
    bool augment(int32_t i0) {
        heap.clear();
        touched.clear();
        sc.clear();
        scanned.clear();
        double mu = 0.0;
        int32_t sink = -1;
        scan(i0, 0.0);
        for (;;) {
            int32_t j = -1;
            while (!heap.empty()) {
                std::pop_heap(heap.begin(), heap.end(), std::greater<HeapItem>());
                const HeapItem top = heap.back();
                heap.pop_back();
                ++pops;
                if (top.second >= n) {  // a row's bound: widen its candidates and relax the new ones
                    const int32_t r = top.second - (int32_t)n;
                    if (pkey[r] != top.first) continue;
                    pkey[r] = INF;
                    refresh(r);
                    continue;
                }
                if (!fin[top.second] && top.first <= d[top.second]) { j = top.second; break; }
            }
            if (j < 0) break;
            fin[j] = 1;
            sc.push_back(j);
            mu = d[j];
            if (colsol[j] < 0) { sink = j; break; }
            scan(colsol[j], mu);
        }
        const bool ok = sink >= 0;
        if (ok) {
            const double minval = mu;
            U[i0] -= minval;
            for (int32_t j : sc) {
                if (j == sink) continue;
                const double delta = minval - d[j];
                U[colsol[j]] -= delta;
                V[j] += delta;
            }
            int32_t j = sink;
            for (;;) {
                const int32_t r = pred[j];
                colsol[j] = r;
                const int32_t next = rowsol[r];
                rowsol[r] = j;
                if (r == i0) break;
                j = next;
            }
            ++augments;
        }
        for (int32_t j : touched) { d[j] = INF; fin[j] = 0; pred[j] = -1; }
        for (int32_t i : scanned) pkey[i] = INF;
        return ok;
    }
};

}  // namespace

/* gain [n][n] float64, maximise. prices_io [n]: column duals V; start (warm): 0 = zero prices,
   1 = read from prices_io, 2 = column reduction (V_j = max_i g_ij); the final prices are written back. rowsol_out [n]: column of row i. u_out [n]: row duals
   U_i = max_j (g_ij - V_j) over the DENSE matrix. stats [16]: see the Python wrapper.
   Returns 0; -1: an augmentation found no path (a bug); -2: the proof failed max_outer times. */
extern "C" int64_t sparse_lap_solve(const double *gain, int64_t n, int64_t k, double tol, int32_t warm,
                                    double *prices_io, int64_t *rowsol_out, double *u_out, double *stats,
                                    int64_t max_outer) {
    typedef std::chrono::steady_clock clk;
    const auto t_start = clk::now();
    k = std::min<int64_t>(std::max<int64_t>(k, 1), n);
    Solver s(gain, n, k);
    for (int64_t j = 0; j < n; ++j) s.V[j] = warm == 1 ? prices_io[j] : (warm == 2 ? -INF : 0.0);
    if (warm == 2)  // column reduction: each column priced at its best row's gain
        for (int64_t i = 0; i < n; ++i)
            for (int64_t j = 0; j < n; ++j) s.V[j] = std::max(s.V[j], gain[i * n + j]);
    for (int64_t i = 0; i < n; ++i) {
        s.select(i, k);
        double best = -INF;
        int32_t arg = -1;
        for (size_t e = 0; e < s.adj[i].size(); ++e) {
            const int32_t j = s.adj[i][e];
            const double v = s.adjg[i][e] - s.V[j];
            if (v > best || (v == best && j < arg)) { best = v; arg = j; }
        }
        s.U[i] = best;  // >= theta_i: dual feasible on the whole row
        if (s.colsol[arg] < 0) { s.colsol[arg] = (int32_t)i; s.rowsol[i] = arg; }
    }
    int64_t greedy_matched = 0;
    for (int64_t i = 0; i < n; ++i) greedy_matched += s.rowsol[i] >= 0;
    const int64_t init_expansions = s.expansions;
    const double t_init = std::chrono::duration<double>(clk::now() - t_start).count();
    double t_aug = 0, t_check = 0, gap = 0.0;
    int64_t outer = 0, violated_total = 0, rc = 0;
    std::vector<double> best(n), own(n);
    std::vector<int32_t> bad;
    for (;;) {
        ++outer;
        const auto t0 = clk::now();
        for (int64_t i = 0; i < n && !rc; ++i)
            if (s.rowsol[i] < 0 && !s.augment((int32_t)i)) rc = -1;
        const auto t1 = clk::now();
        t_aug += std::chrono::duration<double>(t1 - t0).count();
        if (rc) break;
        // the proof: every row's column is its best net value g_ij - V_j over the dense row, to tol
        bad.clear();
        gap = 0.0;
        for (int64_t i = 0; i < n; ++i) {
            const double *gi = gain + i * n;
            const double *Vp = s.V.data();
            double b = -INF;
            for (int64_t j = 0; j < n; ++j) { const double v = gi[j] - Vp[j]; b = v > b ? v : b; }
            const int32_t c = s.rowsol[i];
            best[i] = b;
            own[i] = gi[c] - Vp[c];
            if (b - own[i] > tol) bad.push_back((int32_t)i);
            gap += b - own[i];
        }
        t_check += std::chrono::duration<double>(clk::now() - t1).count();
        violated_total += (int64_t)bad.size();
        if (bad.empty()) break;
        if (outer >= max_outer) { rc = -2; break; }
        for (int32_t i : bad) {  // rounding drift only: widen, re-price and re-augment these rows
            s.select(i, std::max<int64_t>(k, (int64_t)s.adj[i].size()));
            s.U[i] = best[i];
            s.colsol[s.rowsol[i]] = -1;
            s.rowsol[i] = -1;
        }
    }
    int64_t edges = 0;
    for (int64_t i = 0; i < n; ++i) edges += (int64_t)s.adj[i].size();
    for (int64_t j = 0; j < n; ++j) prices_io[j] = s.V[j];
    for (int64_t i = 0; i < n; ++i) { rowsol_out[i] = s.rowsol[i]; u_out[i] = best[i]; }
    const double t_total = std::chrono::duration<double>(clk::now() - t_start).count();
    const double st[16] = {(double)outer, (double)edges, (double)s.augments, (double)s.pops, (double)s.relax,
                           (double)violated_total, (double)greedy_matched, gap, t_init, t_aug, t_check, t_total,
                           (double)(s.expansions - init_expansions), 0, 0, 0};
    for (int q = 0; q < 16; ++q) stats[q] = st[q];
    return rc;
}
"""

_lock = threading.Lock()
_state: dict = {}


@dataclass
class SparseLapResult:
    cols: torch.Tensor      # LongTensor [n]: row i -> column cols[i]
    u: torch.Tensor         # float64 [n] row duals, u_i = max_j (gain_ij - v_j) over the dense row
    v: torch.Tensor         # float64 [n] column duals (prices)
    gap: float              # certified: optimum - total <= gap (sum(u) + sum(v) - total, >= 0)
    tol: float              # per-row proof tolerance used
    stats: dict[str, float] = field(default_factory=dict)


class _Lib:
    def __init__(self, path: str):
        lib = ctypes.CDLL(path)
        self.solve = lib.sparse_lap_solve
        self.solve.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_double, ctypes.c_int32,
                               ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        self.solve.restype = ctypes.c_int64
        self.path = path


def _build() -> _Lib:
    return _Lib(build_shared("sparse_lap", _SRC))


def native_lib() -> tuple[_Lib | None, str]:
    """The compiled solver (built once per machine), or ``(None, why)``."""
    return load_once(_state, _lock, _build)


def available() -> bool:
    return native_lib()[0] is not None


def auto_start(a: torch.Tensor) -> str:
    """``"column"`` (column reduction) when every entry is at least 10% of the mean entry (a large
    positive offset per candidate: the permutation search's first rounds), else ``"zero"``."""
    mean = float(a.mean())
    return "column" if mean > 0 and float(a.min()) >= 0.1 * mean else "zero"


def sparse_lap(gain: torch.Tensor, *, k: int = DEFAULT_K, start: str = "auto",
               prices: torch.Tensor | None = None) -> SparseLapResult:
    """Exact maximum-gain assignment of a square ``gain`` (see the module doc).

    ``k``: candidates per row at the start; ``start``: ``auto`` / ``zero`` / ``column`` /
    ``prices`` (then ``prices``, float ``[n]``, are the starting column prices: a warm start)."""
    if not isinstance(gain, torch.Tensor) or gain.dim() != 2 or gain.shape[0] != gain.shape[1]:
        raise RiaInputError(f"sparse_lap needs a square 2-D gain tensor, got "
                            f"{tuple(gain.shape) if isinstance(gain, torch.Tensor) else type(gain).__name__}")
    if gain.dtype == torch.bool or gain.is_complex():
        raise RiaInputError(f"gain dtype {gain.dtype} unsupported; expected a real float or integer tensor")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise RiaInputError(f"k must be an integer >= 1, got {k!r}")
    if start not in START:
        raise RiaInputError(f"start must be one of {START}, got {start!r}")
    if (start == "prices") != (prices is not None):
        raise RiaInputError("prices= goes with start='prices' (and start='prices' needs prices=)")
    n = gain.shape[0]
    a = gain.detach().to("cpu", torch.float64).contiguous()
    if n and not bool(torch.isfinite(a).all()):
        raise RiaInputError("gain must contain only finite values (no inf/nan)")
    dev = gain.device
    if n == 0:
        e = torch.empty(0, dtype=torch.float64)
        return SparseLapResult(torch.empty(0, dtype=torch.long, device=dev), e, e.clone(), 0.0, 0.0)
    v = torch.zeros(n, dtype=torch.float64)
    if prices is not None:
        if not isinstance(prices, torch.Tensor) or prices.shape != (n,):
            raise RiaInputError(f"prices must be a tensor of shape ({n},), got "
                                f"{tuple(prices.shape) if isinstance(prices, torch.Tensor) else type(prices).__name__}")
        v = prices.detach().to("cpu", torch.float64).clone().contiguous()
        if not bool(torch.isfinite(v).all()):
            raise RiaInputError("prices must be finite")
    lib, why = native_lib()
    if lib is None:
        raise BackendUnavailableError(f"linear_sum_assignment: solver 'sparse' unavailable: {why}")
    if start == "auto":
        start = auto_start(a)
    mode = {"zero": 0, "prices": 1, "column": 2}[start]
    tol = _REL_TOL * float(a.abs().max())
    rowsol = torch.empty(n, dtype=torch.int64)
    u = torch.empty(n, dtype=torch.float64)
    st = torch.zeros(16, dtype=torch.float64)
    rc = lib.solve(a.data_ptr(), n, min(k, n), tol, mode, v.data_ptr(), rowsol.data_ptr(), u.data_ptr(),
                   st.data_ptr(), _MAX_OUTER)
    if rc != 0:  # pragma: no cover - never seen; the caller can fall back to scipy
        raise RuntimeError(f"sparse_lap: native solver failed (code {rc}) on a {n}x{n} matrix; please report it")
    stats = dict(zip(STAT_NAMES, st.tolist()))
    gap = max(0.0, stats["gap"])
    if not math.isfinite(gap) or gap > n * tol:  # pragma: no cover - the proof loop guarantees it
        raise RuntimeError(f"sparse_lap: optimality proof failed (gap {gap} > {n * tol})")
    return SparseLapResult(rowsol.to(dev), u, v, gap, tol, stats)
