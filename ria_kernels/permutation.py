"""Channel permutation for N:M sparsity (RIA paper Sec. 4.2, App. G-I).

Find ``perm`` such that N:M selection on ``score[:, perm]`` retains more total
score than on ``score``:

1. heuristic channel allocation: channels sorted by their column score sum are
   dealt into the ``c / M`` blocks in alternating (snake) direction;
2. linear sum assignment, one round per position ``p`` within a block: the
   channel at position ``p`` of every block is taken out and the channels are
   re-assigned to blocks to maximise the retained score (``ria_kernels.lsa``:
   an exact solver, by default the native sparse-candidate one with a dense optimality proof,
   or the opt-in GPU auction),
   the other ``M - 1`` channels of each block held fixed.
   ``blocks > 1`` is the fast variant: the blocks are split into that many
   communities and each is solved on its own (App. G.2).

The LSA gain matrix is the expensive part. With ``K = M - N`` kept per group,
the retained score of block ``b`` with candidate channel ``j`` is, per row,
``topK(F_b) + max(0, x_j - t_b)`` where ``F_b`` are the block's fixed scores and
``t_b`` their K-th largest. So ``gain[j, b] = sum_r relu(x[r, j] - t[r, b])``: a
GEMM-shaped reduction (``rows * g * g`` terms per round, ``g = c / M``). Backends
(``lsa_gain``, one dispatch point ``resolve_gain_backend``):

* ``triton``: CUDA (and ``TRITON_INTERPRET=1`` on the CPU);
* ``native``: a register-tiled C++ kernel for the CPU (AVX-512 / AVX2 intrinsics,
  4 candidates x 32 blocks per tile, float64 like the reference), compiled once per machine with the system C++ compiler into
  ``$RIA_KERNELS_CACHE_DIR`` (default ``~/.cache/ria_kernels``) and run on
  ``torch.get_num_threads()`` threads (ctypes releases the GIL). It is the automatic
  CPU choice; without a compiler the dispatch logs a warning and uses ``torch``;
* ``torch``: the float64 reference ``lsa_gain_reference`` (chunked, slow).

A round's improvement is read from the gain matrix (``sum gain[assigned] -
trace(gain)``: every candidate starts in its own block), so no round rescores the
matrix, and the retained score after the search is the start's plus the improvements.
"""
from __future__ import annotations

import ctypes
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from ._backend import resolve_backend
from . import _device
from ._errors import BackendUnavailableError, RiaInputError
from ._logging import log_once
from ._native import FLAGS as _NATIVE_FLAGS, build_shared, load_once
from ._validation import check_divisible, check_matrix, check_nm
from .lsa import linear_sum_assignment, resolve_solver
from .ops._grid import cdiv
from .ops.nm_mask import nm_topk_blocks

GAIN_BACKENDS = ("triton", "native", "torch")
STAGES = ("allocation", "prepare", "gain", "lsa", "acceptance")


@dataclass
class PermutationResult:
    perm: torch.Tensor                      # LongTensor [c]: N:M holds on score[:, perm]
    retained: dict[str, float] = field(default_factory=dict)  # identity / allocation / lsa
    time_s: float = 0.0
    solver: str | None = None               # LSA solver used ("sparse" / "lapjv" / "scipy" / "auction"); None without LSA
    gain_backend: str | None = None         # "triton" / "native" / "torch"; None without LSA
    stage_s: dict[str, float] = field(default_factory=dict)  # seconds per stage (STAGES)
    rounds_accepted: int = 0
    lsa_round_s: list[float] = field(default_factory=list)  # LSA seconds per round (all communities)


def retained_score(score: torch.Tensor, n: int, m: int, perm: torch.Tensor | None = None) -> float:
    """Total score kept by N:M selection (N of every M pruned) on ``score[:, perm]``."""
    s = score if perm is None else score.index_select(1, perm)
    if s.device.type == "cuda":
        return float(nm_topk_blocks(s.contiguous(), n, m)[1].double().sum())
    # CPU: only the block sums are needed, not the mask (2.4x less time than nm_topk_blocks)
    r, c = s.shape
    kept = torch.topk(s.reshape(r, c // m, m), m - n, dim=-1, sorted=False).values
    return float(kept.sum(-1, dtype=torch.float32).double().sum())


def _kth_largest(v: torch.Tensor, k: int) -> torch.Tensor:
    """K-th largest along the last dim; closed forms for 3 values (2:4, 1:4, 3:4) are ~3x
    faster than topk on the CPU."""
    if v.shape[-1] == 3:
        a, b, c = v.unbind(-1)
        if k == 1:
            return torch.maximum(torch.maximum(a, b), c)
        if k == 3:
            return torch.minimum(torch.minimum(a, b), c)
        return torch.maximum(torch.minimum(a, b), torch.minimum(torch.maximum(a, b), c))
    return torch.topk(v, k, dim=-1).values[..., k - 1]


def heuristic_allocation(score: torch.Tensor, m: int) -> torch.Tensor:
    """Columns sorted by score sum (descending), dealt into blocks in snake order."""
    c = score.shape[1]
    g = c // m
    order = torch.argsort(score.double().sum(0), descending=True, stable=True)
    i = torch.arange(c, device=score.device)
    rnd, pos = i // g, i % g
    block = torch.where(rnd % 2 == 0, pos, g - 1 - pos)
    perm = torch.empty_like(order)
    perm[block * m + rnd] = order
    return perm


# ---------------------------------------------------------------------------------------------
# LSA gain: gain[j, b] = sum_r relu(x[r, j] - t[r, b])
# ---------------------------------------------------------------------------------------------

def lsa_gain_reference(x: torch.Tensor, t: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """``gain[j, b] = sum_r relu(x[r, j] - t[r, b])`` in float64, chunked over j."""
    x64, t64 = x.double(), t.double()
    out = torch.empty(x.shape[1], t.shape[1], dtype=torch.float64, device=x.device)
    for j0 in range(0, x.shape[1], chunk):
        xs = x64[:, j0:j0 + chunk]
        out[j0:j0 + chunk] = torch.relu(xs[:, :, None] - t64[:, None, :]).sum(0)
    return out


def resolve_gain_backend(x: torch.Tensor, backend: str | None = None) -> str:
    """The one dispatch point of ``lsa_gain``: ``backend=`` > env ``RIA_KERNELS_BACKEND``
    (``triton``/``torch``) > Triton on CUDA, the native kernel on the CPU (``torch`` with a
    logged warning where it cannot be built)."""
    if backend is not None and (not isinstance(backend, str) or backend.lower() not in GAIN_BACKENDS):
        raise RiaInputError(f"lsa_gain backend must be one of {GAIN_BACKENDS} or None, got {backend!r}")
    backend = backend.lower() if backend is not None else None
    auto_cpu = backend is None and not os.environ.get("RIA_KERNELS_BACKEND") and x.device.type == "cpu"
    if backend == "native" or auto_cpu:
        if x.device.type != "cpu":
            raise BackendUnavailableError(f"lsa_gain: backend 'native' is a CPU kernel, got a {x.device.type} tensor")
        lib, why = _native_lib()
        if lib is not None:
            log_once(("lsa_gain", "native", "cpu"), "lsa_gain: backend=native (device=cpu, %s)", lib.isa)
            return "native"
        if backend == "native":
            raise BackendUnavailableError(f"lsa_gain: backend 'native' unavailable: {why}")
        log_once(("lsa_gain", "torch-fallback"), "lsa_gain: native CPU kernel unavailable (%s); backend=torch "
                 "(float64 reference, slow)", why, level=30)
        return "torch"
    return resolve_backend("lsa_gain", x, backend)


def lsa_gain(x: torch.Tensor, t: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """``gain[j, b] = sum_r relu(x[r, j] - t[r, b])`` as float64 ``[J, B]`` on ``x``'s device.

    ``x [R, J]``: candidate scores; ``t [R, B]``: per-row thresholds of the blocks."""
    check_matrix(x, "x")
    check_matrix(t, "t")
    if x.shape[0] != t.shape[0] or x.device != t.device:
        raise RiaInputError(f"x {tuple(x.shape)} and t {tuple(t.shape)} must have the same rows and device")
    choice = resolve_gain_backend(x, backend)
    if choice == "triton":
        return _lsa_gain_triton(x, t)
    if choice == "native":
        return _lsa_gain_native(x, t)
    return lsa_gain_reference(x, t)


# --- native CPU kernel ------------------------------------------------------------------------
# Register tile: JB = 4 candidates x NV vectors of blocks (AVX-512: 4 x 32); per row r: NV loads
# of t, JB broadcasts of x, JB*NV (sub, max, add). Inputs are packed so a tile reads both
# operands sequentially: xp [J/JB][R][JB], tp [B/BB][R][BB] (padding: x = 0, t = +inf ->
# relu(-inf) = 0). Rows go in chunks of RBLOCK (t panel RBLOCK*BB*8 B = 128 KiB stays in L2
# while every candidate tile passes over it). float64 throughout: a float32 variant ran 2x
# faster but its rounding (x - t in float32) changed the chosen permutation on one test
# matrix (retained 8.7e-8 lower); in float64 the gains equal the reference's.
_NATIVE_SRC = r"""
#include <stdint.h>
#if defined(__AVX512F__)
#include <immintrin.h>
typedef __m512d V;
#define VL 8
#define NV 4
#define VLOAD _mm512_loadu_pd
#define VSET1 _mm512_set1_pd
#define VZERO _mm512_setzero_pd
#define VSUB _mm512_sub_pd
#define VMAX _mm512_max_pd
#define VADD _mm512_add_pd
#define VSTORE _mm512_storeu_pd
#define ISA "avx512"
#elif defined(__AVX2__)
#include <immintrin.h>
typedef __m256d V;
#define VL 4
#define NV 2
#define VLOAD _mm256_loadu_pd
#define VSET1 _mm256_set1_pd
#define VZERO _mm256_setzero_pd
#define VSUB _mm256_sub_pd
#define VMAX _mm256_max_pd
#define VADD _mm256_add_pd
#define VSTORE _mm256_storeu_pd
#define ISA "avx2"
#else
#define ISA "scalar"
#endif
#define JB 4
#ifdef VL
#define BB (NV * VL)
#else
#define BB 8
#endif

extern "C" int64_t lsa_gain_tile_rows(void) { return JB; }
extern "C" int64_t lsa_gain_tile_cols(void) { return BB; }
extern "C" const char *lsa_gain_isa(void) { return ISA; }

/* out[j, b] += sum_r relu(x[r, j] - t[r, b]) for candidate tiles [jt0, jt1) x block tiles [bt0, bt1);
   xp [J/JB][R][JB], tp [B/BB][R][BB], out [Jp][Bp]: float64, out zero-initialised by the caller. */
extern "C" void lsa_gain_tiles(const double *xp, const double *tp, double *out, int64_t R, int64_t Bp,
                               int64_t jt0, int64_t jt1, int64_t bt0, int64_t bt1, int64_t rblock) {
    for (int64_t bt = bt0; bt < bt1; ++bt) {
        const double *tb = tp + bt * R * BB;
        for (int64_t r0 = 0; r0 < R; r0 += rblock) {
            const int64_t r1 = r0 + rblock < R ? r0 + rblock : R;
            for (int64_t jt = jt0; jt < jt1; ++jt) {
                const double *xb = xp + jt * R * JB;
                double *o = out + (jt * JB) * Bp + bt * BB;
#ifdef VL
                V acc[JB][NV];
                for (int j = 0; j < JB; ++j)
                    for (int v = 0; v < NV; ++v) acc[j][v] = VLOAD(o + j * Bp + v * VL);
                const V zero = VZERO();
                for (int64_t r = r0; r < r1; ++r) {
                    V tv[NV];
                    for (int v = 0; v < NV; ++v) tv[v] = VLOAD(tb + r * BB + v * VL);
                    for (int j = 0; j < JB; ++j) {
                        const V xv = VSET1(xb[r * JB + j]);
                        for (int v = 0; v < NV; ++v) acc[j][v] = VADD(acc[j][v], VMAX(VSUB(xv, tv[v]), zero));
                    }
                }
                for (int j = 0; j < JB; ++j)
                    for (int v = 0; v < NV; ++v) VSTORE(o + j * Bp + v * VL, acc[j][v]);
#else
                for (int64_t r = r0; r < r1; ++r)
                    for (int j = 0; j < JB; ++j) {
                        const double xs = xb[r * JB + j];
                        for (int b = 0; b < BB; ++b) {
                            const double d = xs - tb[r * BB + b];
                            o[j * Bp + b] += d > 0.0 ? d : 0.0;
                        }
                    }
#endif
            }
        }
    }
}
"""
_NATIVE_RBLOCK = 512
_NATIVE_MIN_PARALLEL = 1 << 22      # terms below which one thread is faster than a hand-off
_native_lock = threading.Lock()
_native_state: dict = {}
_pool: ThreadPoolExecutor | None = None


class _NativeLib:
    def __init__(self, path: str):
        lib = ctypes.CDLL(path)
        self.tiles = lib.lsa_gain_tiles
        self.tiles.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 7
        self.tiles.restype = None
        lib.lsa_gain_tile_rows.restype = lib.lsa_gain_tile_cols.restype = ctypes.c_int64
        lib.lsa_gain_isa.restype = ctypes.c_char_p
        self.rows, self.cols = int(lib.lsa_gain_tile_rows()), int(lib.lsa_gain_tile_cols())
        self.isa = lib.lsa_gain_isa().decode()
        self.path = path


def _native_lib() -> tuple[_NativeLib | None, str]:
    """The compiled CPU gain kernel (built once per machine, then loaded from the cache)."""
    return load_once(_native_state, _native_lock, _build_native)


def _build_native() -> _NativeLib:
    return _NativeLib(build_shared("lsa_gain", _NATIVE_SRC, _NATIVE_FLAGS))


def _threads() -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool._max_workers != torch.get_num_threads():
        _pool = ThreadPoolExecutor(max_workers=torch.get_num_threads(), thread_name_prefix="ria_lsa_gain")
    return _pool


def _lsa_gain_native(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    lib, why = _native_lib()
    if lib is None:
        raise BackendUnavailableError(f"lsa_gain: backend 'native' unavailable: {why}")
    r, j = x.shape
    b = t.shape[1]
    jt, bt = -(-j // lib.rows), -(-b // lib.cols)
    xp = F.pad(x.double(), (0, jt * lib.rows - j)).reshape(r, jt, lib.rows).permute(1, 0, 2).contiguous()
    tp = F.pad(t.double(), (0, bt * lib.cols - b), value=float("inf")).reshape(r, bt, lib.cols)
    tp = tp.permute(1, 0, 2).contiguous()
    out = torch.zeros(jt * lib.rows, bt * lib.cols, dtype=torch.float64)
    args = (xp.data_ptr(), tp.data_ptr(), out.data_ptr(), r, bt * lib.cols)
    workers = min(torch.get_num_threads(), max(jt, bt)) if r * j * b >= _NATIVE_MIN_PARALLEL else 1
    if workers <= 1:
        lib.tiles(*args, 0, jt, 0, bt, _NATIVE_RBLOCK)
    else:  # disjoint output tiles per worker: split the longer tile axis
        split_b = bt >= workers
        n = bt if split_b else jt
        cuts = [n * i // workers for i in range(workers + 1)]
        futs = [_threads().submit(lib.tiles, *args, *((0, jt, lo, hi) if split_b else (lo, hi, 0, bt)), _NATIVE_RBLOCK)
                for lo, hi in zip(cuts[:-1], cuts[1:]) if hi > lo]
        for fut in futs:
            fut.result()
    return out[:j, :b]


# --- Triton (CUDA) ---------------------------------------------------------------------------
try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

_TRITON_BLOCKS = dict(BLOCK_R=8, BLOCK_J=32, BLOCK_B=32)

if triton is not None:
    @triton.jit
    def _lsa_gain_kernel(x_ptr, t_ptr, out_ptr, R, J, B,
                         BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_B: tl.constexpr):
        pid_j = tl.program_id(0)
        pid_b = tl.program_id(1)
        js = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
        bs = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        acc = tl.zeros((BLOCK_J, BLOCK_B), dtype=tl.float32)
        # a while loop, not range(0, R, BLOCK_R): Triton 3.6's interpreter cannot turn a
        # runtime scalar into a range bound under numpy >= 2.3
        r0 = 0
        while r0 < R:
            rs = r0 + tl.arange(0, BLOCK_R)
            rv = rs < R
            x = tl.load(x_ptr + rs[:, None].to(tl.int64) * J + js[None, :], mask=rv[:, None] & (js[None, :] < J),
                        other=0.0)
            # padded rows: x = 0 and t = +inf contribute relu(-inf) = 0
            t = tl.load(t_ptr + rs[:, None].to(tl.int64) * B + bs[None, :], mask=rv[:, None] & (bs[None, :] < B),
                        other=float("inf"))
            acc += tl.sum(tl.maximum(x[:, :, None] - t[:, None, :], 0.0), axis=0)
            r0 += BLOCK_R
        tl.store(out_ptr + js[:, None].to(tl.int64) * B + bs[None, :], acc, mask=(js[:, None] < J) & (bs[None, :] < B))


def lsa_gain_launch_config(j: int, b: int) -> tuple[dict, tuple[int, int]]:
    """(block sizes, grid) of ``_lsa_gain_kernel``: one [BLOCK_J x BLOCK_B] tile of the gain
    matrix per program (grid x over candidates j, y over blocks b), rows streamed in BLOCK_R steps."""
    blocks = dict(_TRITON_BLOCKS)
    return blocks, (cdiv(j, blocks["BLOCK_J"]), cdiv(b, blocks["BLOCK_B"]))


@_device.guarded  # the inputs' device and stream (issue 20)
def _lsa_gain_triton(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    r, j = x.shape
    b = t.shape[1]
    x = x.float().contiguous()
    t = t.float().contiguous()
    out = torch.empty((j, b), dtype=torch.float32, device=x.device)
    blocks, grid = lsa_gain_launch_config(j, b)
    _lsa_gain_kernel[grid](x, t, out, r, j, b, **blocks)
    return out.double()


def aot_cases() -> Iterable[tuple[str, Callable[[], object]]]:
    """AOT gate: the Triton gain kernel at the LSA shapes of 1024..8192-wide matrices
    (rows = width, ``g = width / M`` candidates and blocks) for 2:4 and 4:8."""
    cases = []
    for size in (1024, 2048, 4096, 8192):
        for n, m in ((2, 4), (4, 8)):
            g = size // m
            cases.append((f"lsa_gain rows={size} g={g} ({n}:{m})",
                          lambda size=size, g=g: lsa_gain(torch.zeros(size, g), torch.zeros(size, g), backend="triton")))
    return cases


# ---------------------------------------------------------------------------------------------
# the search
# ---------------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _lsa_round(score: torch.Tensor, perm: torch.Tensor, n: int, m: int, p: int, communities: int,
               backend: str | None, solver: str, stage_s: dict[str, float]) -> tuple[torch.Tensor, float]:
    """One LSA round at block position ``p``: the new permutation and the retained-score
    improvement it brings, read from the gain matrices (>= 0 up to rounding)."""
    t0 = time.perf_counter()
    r, c = score.shape
    g = c // m
    keep = m - n
    grid = perm.reshape(g, m)
    cand = grid[:, p]                                          # channel at position p of each block
    others = torch.cat([grid[:, :p], grid[:, p + 1:]], dim=1)  # [g, m-1] fixed channels
    fixed = score.index_select(1, others.reshape(-1)).reshape(r, g, m - 1)
    # K-th largest fixed score per (row, block): a candidate above it displaces it
    t = _kth_largest(fixed, keep)                              # [r, g]
    del fixed
    x = score.index_select(1, cand)                            # [r, g] candidate j = cand[j]
    new_cand = cand.clone()
    improvement = 0.0
    size = -(-g // communities)
    _sync(score.device)
    stage_s["prepare"] += time.perf_counter() - t0
    for c0 in range(0, g, size):
        sl = slice(c0, min(c0 + size, g))
        t1 = time.perf_counter()
        gain = lsa_gain(x[:, sl], t[:, sl], backend=backend)
        _sync(score.device)
        t2 = time.perf_counter()
        rows, cols = linear_sum_assignment(gain, solver=solver)
        t3 = time.perf_counter()
        # candidate rows[i] goes to block cols[i]; today every candidate sits in its own block
        improvement += float(gain[rows, cols].sum() - gain.diagonal().sum())
        new_cand[cols.to(cand.device) + c0] = cand[sl][rows.to(cand.device)]
        stage_s["gain"] += t2 - t1
        stage_s["lsa"] += t3 - t2
        stage_s["acceptance"] += time.perf_counter() - t3
    new_grid = grid.clone()
    new_grid[:, p] = new_cand
    return new_grid.reshape(-1), improvement


def channel_permutation(score: torch.Tensor, n: int, m: int, *, lsa: bool = True, blocks: int = 1,
                        max_rounds: int | None = None, backend: str | None = None,
                        solver: str | None = None) -> PermutationResult:
    """Input-channel permutation that raises the score N:M selection retains.

    ``score [rows, c]`` (rows of all linears sharing the input, concatenated);
    ``n`` of every ``m`` pruned. The result never retains less than the identity.
    ``backend``: the gain backend (see ``resolve_gain_backend``); ``solver``: the LSA solver
    (``"sparse"``, ``"lapjv"``, ``"scipy"``, ``"auction"``, ``"auto"``/None; env ``RIA_KERNELS_LSA_SOLVER``),
    see ``ria_kernels.lsa``. A round is accepted when its improvement, read from the gain
    matrix, is positive (the search never rescores the matrix after the allocation).
    """
    check_nm(n, m)
    check_matrix(score, "score")
    check_divisible(score.shape[1], m, "score.shape[1]")
    if not isinstance(blocks, int) or blocks < 1:
        raise RiaInputError(f"blocks must be an integer >= 1, got {blocks!r}")
    if max_rounds is not None and (not isinstance(max_rounds, int) or max_rounds < 0):
        raise RiaInputError(f"max_rounds must be an integer >= 0 or None, got {max_rounds!r}")
    t0 = time.perf_counter()
    stage_s = dict.fromkeys(STAGES, 0.0)
    s = score.detach().float().contiguous()
    solver_used = resolve_solver(s, solver)  # validates the name even when lsa=False
    identity = torch.arange(s.shape[1], device=s.device)
    result = PermutationResult(perm=identity, stage_s=stage_s)
    best = result.retained["identity"] = retained_score(s, n, m)
    alloc = heuristic_allocation(s, m)
    result.retained["allocation"] = retained_score(s, n, m, alloc)
    perm = identity
    if result.retained["allocation"] > best:
        perm, best = alloc, result.retained["allocation"]
    stage_s["allocation"] = time.perf_counter() - t0
    if lsa:
        result.gain_backend = resolve_gain_backend(s, backend)
        rounds = m if max_rounds is None else min(m, max_rounds)
        for p in range(rounds):
            lsa_before = stage_s["lsa"]
            cand, improvement = _lsa_round(s, perm, n, m, p, min(blocks, s.shape[1] // m), result.gain_backend,
                                           solver_used, stage_s)
            result.lsa_round_s.append(stage_s["lsa"] - lsa_before)
            if improvement > 0.0:  # exactly 0: a tie, the assignment changes nothing
                perm, best = cand, best + improvement
                result.rounds_accepted += 1
        # start + the float64 improvements: equals a rescoring of perm to the float32
        # resolution of the block sums (tests), without the rescoring
        result.retained["lsa"] = best
        result.solver = solver_used
    result.perm = perm
    result.time_s = time.perf_counter() - t0
    return result
