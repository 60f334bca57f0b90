"""Launch configs of the Triton ops as pure functions, over the whole space they can see.

Every R and C from 1 to 1024 (all SM counts for the SM-dependent pass 1), plus a sample of
LLM shapes up to 28672 and 128256 (vocabulary rows). Invariants, per launch:

- the programs cover every element exactly once (a tile per program along each axis, no
  overlap: strips are whole multiples of the step the kernel walks them in; enough programs;
  no program wholly outside the tensor),
- the grid is within the hardware limits (x < 2^31, y and z < 2^16),
- block sizes are powers of two (``tl.arange``) and a tile holds at most 2^20 elements.

The checks are numpy-vectorised over the configs; a literal enumeration of the indices the
kernels' offset formulas touch (``np.bincount`` == 1) backs them on a sample of shapes.
"""
import itertools

import numpy as np
import pytest

from ria_kernels.ops import ria_score as RS
from ria_kernels.ops._grid import MAX_GRID_X, MAX_GRID_YZ
from ria_kernels.ops.nm_mask import nm_launch_config
from ria_kernels.ops.prune_fused import fused_nm_launch_config
from ria_kernels.ops.rms_norm import rms_launch_config
from ria_kernels.permutation import lsa_gain_launch_config

SMS = (1, 16, 78, 108, 114, 132, 144)
SPACE = np.arange(1, 1025)
LLM = (1, 2, 3, 15, 17, 33, 48, 65, 80, 96, 100, 153, 192, 200, 576, 1536, 2048, 3072, 4096, 5120, 8192,
       11008, 13824, 14336, 28672, 128256)
NM_M = (2, 3, 4, 5, 6, 8, 9, 12, 16, 32, 64)
MAX_TILE = 2**20  # Triton's largest tensor (TRITON_MAX_TENSOR_NUMEL)


def _pow2(a) -> bool:
    a = np.asarray(a)
    return bool(((a > 0) & ((a & (a - 1)) == 0)).all())


def _assert_cover(extent, tile, grid, what):
    """``grid`` programs of ``tile`` consecutive elements each cover [0, extent) exactly once
    (tiles are disjoint by construction) with no program wholly past the end."""
    extent, tile, grid = (np.asarray(v, dtype=np.int64) for v in (extent, tile, grid))
    short = grid * tile < extent
    idle = (grid - 1) * tile >= extent
    bad = short | idle
    if bad.any():
        i = np.flatnonzero(bad.ravel())[0]
        raise AssertionError(f"{what}: extent {extent.ravel()[i]} tile {tile.ravel()[i]} grid {grid.ravel()[i]} "
                             f"({int(short.sum())} too small, {int(idle.sum())} with idle programs)")


def _assert_grid_limits(gx, gy, what):
    gx, gy = np.asarray(gx, dtype=np.int64), np.asarray(gy, dtype=np.int64)
    assert bool((gx >= 1).all() and (gx <= MAX_GRID_X).all()), f"{what}: grid x out of [1, 2^31)"
    assert bool((gy >= 1).all() and (gy <= MAX_GRID_YZ).all()), f"{what}: grid y out of [1, 2^16)"


def _sweep(fn, rs, cs):
    """fn(r, c) -> tuple of k ints over the grid rs x cs, as an int64 array [len(rs), len(cs), k]."""
    rs, cs = [int(r) for r in rs], [int(c) for c in cs]
    flat = [fn(r, c) for r in rs for c in cs]
    k = len(flat[0])
    return np.fromiter(itertools.chain.from_iterable(flat), dtype=np.int64, count=k * len(flat)).reshape(
        len(rs), len(cs), k)


# --------------------------------------------------------------------------- ria_score pass 1
def _check_abs_sums(r, c, cfg):
    """cfg [..., 3] = (rows_per_prog, grid_rows, grid_cols) for shapes r x c (broadcast)."""
    rpp, gr, gc = cfg[..., 0], cfg[..., 1], cfg[..., 2]
    br, bc = RS._SUM_BLOCK_R, RS._SUM_BLOCK_C
    assert _pow2(br) and _pow2(bc) and _pow2(rpp), "pass 1 block sizes must be powers of two"
    # a program walks its strip in BLOCK_R steps: it touches ceil(rpp / BLOCK_R) * BLOCK_R rows,
    # which must be exactly its rows_per_prog, or strips overlap (issue 20: 33x128 -> 24-row strips)
    walked = -(-rpp // br) * br
    assert bool((walked == rpp).all()), f"rows_per_prog not a multiple of BLOCK_R: {np.unique(rpp[walked != rpp])}"
    assert bool((rpp <= RS._SUM_MAX_ROWS).all()), "strip longer than _SUM_MAX_ROWS (static_range unroll)"
    _assert_cover(r, rpp, gr, "pass 1 rows")
    _assert_cover(c, bc, gc, "pass 1 columns")
    _assert_grid_limits(gr, gc, "pass 1")
    # partial buffers rowp [gc, r] / colp [gr, c] are indexed with int32 p * N in the finishing kernel
    assert bool((gc * r < 2**31).all() and (gr * c < 2**31).all()), "partial buffer >= 2^31 elements"


@pytest.mark.parametrize("sms", SMS)
def test_abs_sums_config_every_shape_to_1024(sms):
    cfg = _sweep(lambda r, c: RS.abs_sums_config(r, c, sms), SPACE, SPACE)
    _check_abs_sums(SPACE[:, None], SPACE[None, :], cfg)


@pytest.mark.parametrize("sms", SMS)
def test_abs_sums_config_llm_shapes(sms):
    shapes = np.array(LLM)
    cfg = _sweep(lambda r, c: RS.abs_sums_config(r, c, sms), shapes, shapes)
    _check_abs_sums(shapes[:, None], shapes[None, :], cfg)


@pytest.mark.parametrize("r,c,sms", [(33, 128, 132), (48, 128, 132), (80, 64, 132), (192, 576, 132),
                                     (200, 4096, 132), (100, 576, 108), (65, 300, 114), (1, 1, 1)])
def test_abs_sums_config_enumerated(r, c, sms):
    """The kernel's row offsets (pid_r * ROWS_PER_PROG + i + arange(BLOCK_R), i in steps of BLOCK_R,
    masked to < R) literally enumerated: every row exactly once. The issue's shapes."""
    rpp, gr, gc = RS.abs_sums_config(r, c, sms)
    br = RS._SUM_BLOCK_R
    rows = (np.arange(gr)[:, None, None] * rpp + np.arange(0, rpp, br)[None, :, None]
            + np.arange(br)[None, None, :]).ravel()
    assert np.array_equal(np.bincount(rows[rows < r], minlength=r), np.ones(r, dtype=np.int64))
    cols = (np.arange(gc)[:, None] * RS._SUM_BLOCK_C + np.arange(RS._SUM_BLOCK_C)[None, :]).ravel()
    assert np.array_equal(np.bincount(cols[cols < c], minlength=c), np.ones(c, dtype=np.int64))


def test_abs_sums_config_keeps_the_machine_busy():
    # the point of the halving: >= 8 blocks per SM whenever BLOCK_R-row strips allow it
    for sms in SMS:
        for r, c in ((4096, 4096), (8192, 28672), (28672, 8192), (576, 1536)):
            rpp, gr, gc = RS.abs_sums_config(r, c, sms)
            assert gr * gc >= min(RS._MIN_BLOCKS_PER_SM * sms, -(-r // RS._SUM_BLOCK_R) * gc)


def test_finish_and_score_configs():
    rs = np.concatenate([SPACE, np.array(LLM)])
    fin = _sweep(RS.abs_sums_finish_config, rs, rs)
    block, grid = fin[..., 0], fin[..., 1]
    assert _pow2(block)
    row_progs = -(-rs[:, None] // block)
    _assert_cover(rs[:, None], block, row_progs, "finish rows")
    _assert_cover(rs[None, :], block, grid - row_progs, "finish columns")
    assert bool((grid <= MAX_GRID_X).all())
    sc = _sweep(lambda r, c: (t := RS.score_launch_config(r, c))[:2] + t[2], rs, rs)
    assert _pow2(sc[..., 0]) and _pow2(sc[..., 1]) and bool((sc[..., 0] * sc[..., 1] <= MAX_TILE).all())
    _assert_cover(rs[:, None], sc[..., 0], sc[..., 2], "score rows")
    _assert_cover(rs[None, :], sc[..., 1], sc[..., 3], "score columns")
    _assert_grid_limits(sc[..., 2], sc[..., 3], "score")


# --------------------------------------------------------------------------- N:M (nm_mask, fused prune)
def _check_nm(r, g, m, elem, cfg, what):
    """cfg [..., 6] = (MP, BLOCK_R, BLOCK_W, warps, grid_r, grid_g) for r rows x g groups of m."""
    mp, br, bw, warps, gr, gg = (cfg[..., i] for i in range(6))
    assert _pow2(mp) and _pow2(br) and _pow2(bw) and _pow2(warps), f"{what}: block sizes must be powers of two"
    assert bool((mp >= m).all() and (mp < 2 * m).all()), f"{what}: MP is not M rounded up to a power of two"
    assert bool((bw % mp == 0).all()), f"{what}: BLOCK_W not a whole number of groups"
    assert bool((br * bw <= MAX_TILE).all()), f"{what}: tile over Triton's 2^20 elements"
    # register budget of the ranking: at most one group or one 16-byte vector per thread
    assert bool((br * bw <= 32 * warps * np.maximum(mp, 16 // elem)).all()), f"{what}: tile over the register budget"
    _assert_cover(r, br, gr, f"{what} rows")
    _assert_cover(g, bw // mp, gg, f"{what} groups")  # a program covers BLOCK_W // MP groups, not BLOCK_W columns
    _assert_grid_limits(gr, gg, what)


# full sweep: nm_mask at fp32 scores, the fused prune at fp16/bf16 weights (each config's common case;
# the LLM sample below runs both element sizes through both)
@pytest.mark.parametrize("config,elem", [(nm_launch_config, 4), (fused_nm_launch_config, 2)],
                         ids=["nm_mask-fp32", "fused_prune-fp16"])
def test_nm_configs_every_shape_to_1024(config, elem):
    for m in NM_M:
        gs = np.arange(1, 1024 // m + 1)
        cfg = _sweep(lambda r, c: (t := config(r, c, m, elem))[:4] + t[4], SPACE, gs * m)
        _check_nm(SPACE[:, None], gs[None, :], m, elem, cfg, f"{config.__name__} M={m} elem={elem}")


@pytest.mark.parametrize("config", [nm_launch_config, fused_nm_launch_config], ids=["nm_mask", "fused_prune"])
def test_nm_configs_llm_shapes(config):
    rs = np.array(LLM)
    for m in NM_M:
        for elem in (2, 4):
            cols = np.array(sorted({c - c % m for c in LLM if c >= m}))
            cfg = _sweep(lambda r, c: (t := config(r, c, m, elem))[:4] + t[4], rs, cols)
            _check_nm(rs[:, None], cols[None, :] // m, m, elem, cfg, f"{config.__name__} M={m} elem={elem}")


@pytest.mark.parametrize("r,c,m", [(1, 153, 9), (3, 9 * 40, 9), (5, 6 * 50, 6), (7, 12 * 30, 12), (2, 3 * 100, 3),
                                   (1, 64 * 5, 64), (9, 4 * 70, 4)])
def test_nm_config_enumerated(r, c, m):
    """The kernel's offsets (``nm_tile_offsets``: group pid_g * (BLOCK_W // MP) + n // MP, lane
    n % MP < M -> column group * M + lane) enumerated: every element exactly once (1x153 at 1:9
    is the issue's G * MP > 256 case)."""
    mp, br, bw, _, (gr, gg) = nm_launch_config(r, c, m, 4)
    n = np.arange(bw)
    group = np.arange(gg)[:, None] * (bw // mp) + n[None, :] // mp
    lane = np.broadcast_to(n % mp, group.shape)
    ok = (lane < m) & (group * m + lane < c)
    cols = (group * m + lane)[ok]
    rows = (np.arange(gr)[:, None] * br + np.arange(br)[None, :]).ravel()
    rows = rows[rows < r]
    flat = (rows[:, None] * c + cols[None, :]).ravel()
    assert np.array_equal(np.bincount(flat, minlength=r * c), np.ones(r * c, dtype=np.int64))


# --------------------------------------------------------------------------- rms_norm
def test_rms_launch_config_every_hidden_size():
    hs = np.concatenate([np.arange(1, 40000), np.array([65536, 128256, 2**20])])
    cfg = np.array([rms_launch_config(int(h)) for h in hs], dtype=np.int64)
    block, warps = cfg[:, 0], cfg[:, 1]
    assert _pow2(block) and _pow2(warps) and bool((warps <= 32).all())
    _assert_cover(hs, block, np.ones_like(hs), "rms_norm row")  # the whole row in one program
    assert bool((block <= MAX_TILE).all())
    # <= 32 elements per thread per tensor up to 32768 (no spills, see rms_launch_config)
    small = hs <= 32768
    assert bool((block[small] // (32 * warps[small]) <= 32).all())
    # the RELOAD_ROW path splits the row into 4 chunks: a power of two each
    assert bool((block[block >= 16384] % 4 == 0).all())


# --------------------------------------------------------------------------- LSA gain
def test_lsa_gain_launch_config():
    rs = np.concatenate([SPACE, np.array(LLM)])
    blocks, _ = lsa_gain_launch_config(1, 1)
    assert all(_pow2(v) for v in blocks.values())
    assert blocks["BLOCK_R"] * blocks["BLOCK_J"] * blocks["BLOCK_B"] <= MAX_TILE
    cfg = np.array([[lsa_gain_launch_config(int(j), int(b))[1] for b in rs] for j in rs], dtype=np.int64)
    _assert_cover(rs[:, None], blocks["BLOCK_J"], cfg[..., 0], "lsa gain candidates")
    _assert_cover(rs[None, :], blocks["BLOCK_B"], cfg[..., 1], "lsa gain blocks")
    _assert_grid_limits(cfg[..., 0], cfg[..., 1], "lsa gain")


# --------------------------------------------------------------------------- sparse24_mm
# launch_config / launch_grid / split_cost of ops/sparse24_mm.py as pure functions of (T, N, K,
# SM count, dtype), over the SM counts of real GPUs (A100 108, H100 PCIe 114, H100/H200 SXM 132,
# H20 78, L4 58, RTX 4090 128, A10 72, T4-class 40, 46, 144) and any count, odd and prime shapes.
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
import torch  # noqa: E402

from ria_kernels.ops import sparse24_mm as S24  # noqa: E402

REAL_SMS = (40, 46, 58, 72, 78, 108, 114, 128, 132, 144)
PRIMES = (2, 3, 5, 7, 11, 13, 31, 61, 127, 251, 509, 1021, 2039, 4093, 8191, 16381, 28669)
S24_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _s24_valid_splits(steps, t, k):
    cap = max(1, min(steps // 2, k // (18 * t)))
    return [s for s in range(1, cap + 1) if -(-steps // -(-steps // s)) == s]


def _s24_check(t, n, k, sms, dtype):
    """Every invariant of one sparse24_mm launch (see launch_config / launch_grid)."""
    cfg = S24.launch_config(t, n, k, sms, dtype)
    (gn, gs, gt), kps = S24.launch_grid(t, n, k, cfg)
    where = f"T={t} N={n} K={k} sms={sms} {dtype}: {cfg}"
    assert _pow2([cfg.block_n, cfg.block_t, cfg.block_k]), where
    assert cfg.block_n * cfg.block_k <= MAX_TILE and cfg.block_t * cfg.block_k <= MAX_TILE, where
    _assert_cover(n, cfg.block_n, gn, where)
    _assert_cover(t, cfg.block_t, gt, where)
    # K: kps is a whole number of BLOCK_K steps, the splits tile [0, K) and the last one starts
    # inside K, so no program runs a fully masked K-step
    assert kps % cfg.block_k == 0 and (gs - 1) * kps < k <= gs * kps, where
    assert gs == cfg.split_k, where  # launch_config never asks for an empty split
    _assert_grid_limits(gn, gs, where)
    assert gt < MAX_GRID_YZ, where
    if cfg.maxnreg is not None:  # 4 blocks of this size fit an SM's 64K registers up to T = 16, 3 above
        blocks = 4 if t <= 16 else 3
        assert cfg.maxnreg <= (128 if t <= 16 else 168) and blocks * cfg.maxnreg * 32 * cfg.num_warps <= 65536, where
    steps = -(-k // cfg.block_k)
    if t > S24.DECODE_MAX_T:
        assert gs == 1 and cfg.maxnreg is None, where
        return cfg
    assert gt == 1 and cfg.block_t == max(16, 1 << (t - 1).bit_length()), where  # W streamed once
    if dtype != torch.float32 and k % 32 == 0:
        assert cfg.maxnreg == (128 if t <= 16 else 168) and cfg.num_warps == 4, where
    valid = _s24_valid_splits(steps, t, k)
    assert gs in valid, where  # >= 2 K-steps per split, partials <= ~40% of W, none empty
    if gs > 1:
        assert kps // cfg.block_k >= 2 and 2 * gs * t * n * 4 <= 0.4 * n * k * 9 / 8, where
    costs = {s: S24.split_cost(gn, steps, s, t, k, sms) for s in valid}
    assert all(c >= 1.0 for c in costs.values()), where  # relative to an ideal launch
    assert costs[gs] <= min(costs.values()) + 1e-9, where                  # the cheapest split, ...
    assert all(costs[s] > costs[gs] + 1e-13 for s in valid if s < gs), where  # ... the smallest on a tie
    return cfg


def _wave_efficiency(programs, sms):
    unit = 2 * sms
    return programs / (-(-programs // unit) * unit)


@settings(max_examples=400, deadline=None)
@given(t=st.one_of(st.integers(1, 64), st.integers(65, 40000), st.sampled_from(PRIMES)),
       n=st.one_of(st.integers(1, 60000), st.sampled_from(PRIMES + (4096, 11008, 28672, 128256))),
       k4=st.one_of(st.integers(1, 20000), st.sampled_from(PRIMES)),
       sms=st.one_of(st.sampled_from(REAL_SMS), st.integers(1, 200)),
       dtype=st.sampled_from(S24_DTYPES))
def test_sparse24_launch_config_properties(t, n, k4, sms, dtype):
    _s24_check(t, n, 4 * k4, sms, dtype)


def test_sparse24_launch_config_llm_shapes_real_gpus():
    """LLaMA / Qwen / OPT linears at decode on each real SM count: the weight is streamed by at
    least 1.5 programs per SM up to T = 32 (0.7 at T = 64, where the partials cap the split), and
    the programs fill whole waves of 2 blocks per SM but for the rounding the shape forces: on
    average >= 95% of the slots busy, >= 85% of the launches at >= 90%, none under 50% (the worst
    are T = 64 on 4096/5120-row weights, where the partials cap allows 3 splits)."""
    shapes = [(n, k) for n in (4096, 5120, 8192, 11008, 13824, 14336, 28672) for k in (4096, 5120, 8192, 11008,
                                                                                          13824, 14336, 28672)]
    effs = []
    for sms in REAL_SMS:
        for n, k in shapes:
            for t in (1, 2, 4, 8, 16, 17, 32, 33, 64):
                for dtype in (torch.float16, torch.bfloat16):
                    cfg = _s24_check(t, n, k, sms, dtype)
                    (gn, gs, _), _ = S24.launch_grid(t, n, k, cfg)
                    assert gn * gs >= (1.5 if t <= 32 else 0.7) * sms, f"T={t} N={n} K={k} sms={sms}: {cfg}"
                    effs.append(_wave_efficiency(gn * gs, sms))
    effs = np.array(effs)
    assert effs.mean() >= 0.95 and (effs >= 0.9).mean() >= 0.85 and effs.min() >= 0.5, (effs.mean(), effs.min())


def test_sparse24_launch_config_branches():
    """Each branch of launch_config returns the tiles its docstring names (the AOT gate compiles
    these without spills)."""
    lc = S24.launch_config
    for t, tile in ((1, (64, 16, 128)), (16, (64, 16, 128)), (17, (64, 32, 128)), (32, (64, 32, 128)),
                    (33, (64, 64, 64)), (64, (64, 64, 64))):
        for dtype in (torch.float16, torch.bfloat16):        # word metadata: capped, 3 stages
            cfg = lc(t, 4096, 4096, 132, dtype)
            assert cfg[:3] == tile and cfg[4:] == (4, 3, 128 if t <= 16 else 168), cfg
    assert lc(1, 4096, 4100)[:3] == (64, 16, 128) and lc(1, 4096, 4100)[4:] == (4, 3, None)  # byte metadata
    assert lc(17, 4096, 4100)[:3] == (64, 32, 64) and lc(64, 4096, 4100)[4:] == (4, 4, None)
    f32 = torch.float32
    assert lc(16, 4096, 4096, dtype=f32)[2] == 128 and lc(16, 4096, 4100, dtype=f32)[2] == 64
    assert lc(17, 4096, 4096, dtype=f32)[2:] == (32, lc(17, 4096, 4096, dtype=f32).split_k, 8, 2, None)
    assert lc(65, 4096, 4096, dtype=f32) == S24.Sparse24Config(64, 64, 32, 1, 4, 3)
    assert lc(65, 4096, 4100) == S24.Sparse24Config(128, 64, 32, 1, 8, 3)
    assert lc(128, 4096, 4100) == S24.Sparse24Config(64, 128, 32, 1, 8, 3)
    assert lc(65, 4096, 4096) == S24.Sparse24Config(128, 64, 64, 1, 4, 3)
    assert lc(128, 4096, 4096) == S24.Sparse24Config(128, 128, 64, 1, 8, 3)


def test_sparse24_split_cost_model():
    """split_cost by hand: a launch in exact waves of 2 blocks per SM with >= 4 programs per SM
    costs only the per-program overhead; a half-empty wave costs the full wave; below 4 programs
    per SM the cost grows with the idle share; the partials add their byte share."""
    sms = 100
    # 100 tiles x 8 splits = 800 programs = 4 full waves of 200; 64 steps -> 8 per split
    c = S24.split_cost(100, 64, 8, 1, 8192, sms)
    assert c == pytest.approx((8 + S24.PROGRAM_OVERHEAD_STEPS) / 8 + 2 * 8 * 4 / (8192 * 9 / 8))
    # 100 tiles x 1 split: 100 programs in a wave of 200 slots, a quarter of the 4 programs/SM
    c1 = S24.split_cost(100, 64, 1, 1, 8192, sms)
    assert c1 == pytest.approx(200 * 65 / 6400 / (100 / 400))
    # 300 programs: 2 waves (400 slots) for 1.5 waves of work
    c3 = S24.split_cost(100, 63, 3, 1, 8192, sms)
    assert c3 == pytest.approx(400 * 22 / 6300 / (300 / 400) + 2 * 3 * 4 / (8192 * 9 / 8))
    # the chosen split on this shape is the smallest exact-wave one at 4 programs per SM (400)
    assert S24._choose_split(100, 64, 1, 8192, sms) == 4
    # a shape that already fills whole waves unsplit stays unsplit
    assert S24._choose_split(800, 64, 1, 8192, sms) == 1
