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
