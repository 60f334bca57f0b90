"""The CUTLASS 2:4 GEMM configs (narrow token tiles + split-K / stream-K for decode, issue 22 item 3).

CPU: the Python table ``sparse_mm.CUTLASS_CONFIGS`` equals the C++ one (``csrc/cutlass_sparse_configs.h``,
parsed here), ``cutlass_config_for`` (the static default by token bucket) branch by branch, the wrapper's input
checks and the fakes with the new arguments. GPU (skipped on a CPU): every config of the device's arch on the
one stored copy (compact values + metadata from ``sparse24_layout``'s converters) against the float32
reference on exactly-2:4 weights, with a preallocated workspace, and inside a CUDA graph.
"""
from __future__ import annotations

import os
import re

import pytest
import torch

from ria_kernels import BackendUnavailableError, RiaInputError
from ria_kernels.ops import sparse_mm
from ria_kernels.ops.sparse24_layout import compact_to_sm80_meta, compact_to_sm90_meta
from ria_kernels.ops.sparse24_mm import compress_24
from ria_kernels.ops.sparse_mm import (CUTLASS_CONFIGS, CUTLASS_DECODE_MAX_T, DEFAULT_SM_COUNT, MAX_SPLIT_K,
                                       WAVE_FILL, CutlassConfig, cutlass_config, cutlass_config_for,
                                       sparse_mm_reference, split_for_waves, wave_fill)
from conftest import assert_rel_close, cuda_graph_replay, poison_allocator

CUDA = torch.cuda.is_available()
HEADER = os.path.join(os.path.dirname(sparse_mm.__file__), "..", "..", "csrc", "cutlass_sparse_configs.h")


# --------------------------------------------------------------------------- CPU: table == C++ header
def _header_rows(macro: str) -> list[tuple[int, ...]]:
    text = open(HEADER).read()
    body = re.search(rf"#define {macro}\(X\)((?:.*\\\n)*.*\n)", text)
    assert body, f"{macro} not found in {HEADER}"
    return [tuple(int(v) for v in m.group(1).split(","))
            for m in re.finditer(r"X\(([\d,\s]+)\)", body.group(1))]


def test_python_table_matches_cpp_header_sm80():
    rows = _header_rows("RIA_SM80_CONFIGS")
    expect = [(c.config_id, c.tile_m, c.tile_t, c.tile_k, *c.warp, c.stages, int(c.split == "serial"))
              for c in CUTLASS_CONFIGS["sm80"]]
    assert rows == expect


def test_python_table_matches_cpp_header_sm90():
    rows = _header_rows("RIA_SM90_CONFIGS")
    expect = [(c.config_id, c.tile_m, c.tile_t, c.tile_k, int(c.split == "stream_k")) for c in CUTLASS_CONFIGS["sm90"]]
    assert rows == expect


@pytest.mark.parametrize("arch", sorted(CUTLASS_CONFIGS))
def test_table_invariants(arch):
    cfgs = CUTLASS_CONFIGS[arch]
    assert [c.config_id for c in cfgs] == list(range(len(cfgs)))  # ids index the C++ switch
    assert all(c.arch == arch for c in cfgs)
    assert cfgs[0].split == "none" and cfgs[0].tile_t == 128  # config 0 = today's prefill tile
    # one K tile for every config: same shape limits and, on sm90, MinTileShapeK = 128 (one metadata layout)
    assert len({c.tile_k for c in cfgs}) == 1
    narrow = [c for c in cfgs if c.split != "none"]
    assert sorted(c.tile_t for c in narrow) == [16, 32, 64]
    assert max(c.tile_t for c in narrow) == CUTLASS_DECODE_MAX_T
    assert {c.split for c in narrow} == {"serial" if arch == "sm80" else "stream_k"}


def test_cutlass_config_lookup_and_errors():
    assert cutlass_config("sm90", 2) == CutlassConfig("sm90", 2, 128, 32, 128, "stream_k")
    with pytest.raises(RiaInputError, match="arch must be one of"):
        cutlass_config("sm70", 0)
    with pytest.raises(RiaInputError, match=r"config must be one of \[0, 1, 2, 3\]"):
        cutlass_config("sm80", 4)
    with pytest.raises(RiaInputError, match="config must be one of"):
        cutlass_config("sm80", True)


# --------------------------------------------------------------------------- CPU: cutlass_config_for
@pytest.mark.parametrize("arch", ["sm80", "sm90"])
@pytest.mark.parametrize("t,tile_t", [(1, 16), (4, 16), (16, 16), (17, 32), (32, 32), (33, 64), (64, 64)])
def test_decode_buckets_pick_the_narrowest_tile(arch, t, tile_t):
    cid, split = cutlass_config_for(arch, t, 4096, 4096)
    cfg = cutlass_config(arch, cid)
    assert cfg.tile_t == tile_t and cfg.split != "none" and split >= 1


@pytest.mark.parametrize("arch", ["sm80", "sm90"])
@pytest.mark.parametrize("t", [65, 256, 1024, 100_000])
def test_prefill_buckets_use_config_0(arch, t):
    assert cutlass_config_for(arch, t, 8192, 28672) == (0, 1)


def test_sm90_leaves_the_split_to_stream_k():
    for t in (1, 16, 64):
        for n, k in ((4096, 4096), (8192, 28672), (128, 128)):
            assert cutlass_config_for("sm90", t, n, k)[1] == 1


def test_sm80_split_k_fills_the_waves():
    # 4096 rows / 128 = 32 output tiles: 1 slice fills 32/108 SMs, 2 -> 64/108, 3 -> 96/108 = 0.89 >= WAVE_FILL
    assert cutlass_config_for("sm80", 1, 4096, 4096) == (1, 3)
    # 8192 / 128 = 64 tiles: 2 slices = 128 CTAs = 2 waves filled 0.59; 3 -> 192 / 216 = 0.89
    assert cutlass_config_for("sm80", 16, 8192, 28672) == (1, 3)
    # exactly as many tiles as SMs: no split
    assert cutlass_config_for("sm80", 8, 108 * 128, 4096) == (1, 1)
    # another SM count: 32 tiles on 64 SMs -> 2 slices fill them exactly
    assert cutlass_config_for("sm80", 8, 4096, 4096, sm_count=64) == (1, 2)
    assert DEFAULT_SM_COUNT == {"sm80": 108, "sm90": 132}


def test_wave_fill_and_split_for_waves():
    assert wave_fill(108, 108) == 1.0 and wave_fill(109, 108) == pytest.approx(109 / 216)
    assert split_for_waves(32, 108, 16) == 3  # first s reaching WAVE_FILL
    assert WAVE_FILL == 0.8
    # none reaches WAVE_FILL within the cap: the best-filled one (2 tiles, cap 4 -> 8 CTAs)
    assert split_for_waves(2, 108, 4) == 4
    # equal fills: the smaller split (54 and 108 CTAs on 54 SMs both fill 1.0; 54 first reaches it)
    assert split_for_waves(27, 54, 4) == 2
    assert split_for_waves(5, 108, 1) == 1


def test_sm80_split_k_caps():
    # K = 256: 4 K tiles of 64, at least 4 per slice -> no split even though 2 tiles would want 54 slices
    assert cutlass_config_for("sm80", 1, 256, 256) == (1, 1)
    # K = 1024: 16 K tiles -> at most 4 slices (none fills the SMs: the best-filled, 4)
    assert cutlass_config_for("sm80", 1, 256, 1024) == (1, 4)
    # one output tile, very long K: capped at MAX_SPLIT_K
    assert cutlass_config_for("sm80", 1, 128, 65536) == (1, MAX_SPLIT_K)
    # K shorter than one tile still gives a valid (1) split
    assert cutlass_config_for("sm80", 1, 128, 32) == (1, 1)


@pytest.mark.parametrize("bad", [dict(arch="sm70"), dict(t=0), dict(n=-1), dict(k=2.0), dict(t=True),
                                 dict(sm_count=0)])
def test_cutlass_config_for_rejects_bad_input(bad):
    args = dict(arch="sm80", t=1, n=4096, k=4096)
    args.update(bad)
    with pytest.raises(RiaInputError):
        cutlass_config_for(**args)


# --------------------------------------------------------------------------- CPU: wrapper checks, fakes
def test_wrapper_rejects_bad_config_split_and_workspace():
    x = torch.randn(3, 64, dtype=torch.float16)
    values = torch.zeros(32, 32, dtype=torch.float16)
    meta80 = torch.zeros(32, 4, dtype=torch.int16)
    meta90 = torch.zeros(64, 16, dtype=torch.uint8)
    with pytest.raises(RiaInputError, match=r"sm80 CUTLASS config must be one of"):
        sparse_mm.cutlass_sparse_mm(x, values, meta80, config=7)
    with pytest.raises(RiaInputError, match=r"sm90 CUTLASS config must be one of"):
        sparse_mm.cutlass_sparse_mm(x, values, meta90, config=-1)
    with pytest.raises(RiaInputError, match="split_k must be an int >= 1"):
        sparse_mm.cutlass_sparse_mm(x, values, meta80, config=1, split_k=0)
    with pytest.raises(RiaInputError, match="workspace must be a contiguous uint8"):
        sparse_mm.cutlass_sparse_mm(x, values, meta80, config=1, workspace=torch.zeros(8, dtype=torch.int32))
    with pytest.raises(RiaInputError, match="config must be one of"):
        sparse_mm.cutlass_workspace_size("sm80", 32, 3, 64, 9)
    if not CUDA:  # a valid query needs the extension
        with pytest.raises(BackendUnavailableError, match="no CUDA device"):
            sparse_mm.cutlass_workspace_size("sm90", 64, 3, 128, 1)


_SCRATCH = "ria_kernels_fake_cfg_test"


@pytest.mark.skipif(CUDA, reason="scratch CPU namespace only on CPU machines")
def test_fakes_take_config_split_and_workspace():
    from torch._subclasses.fake_tensor import FakeTensorMode
    lib = torch.library.Library(_SCRATCH, "DEF")
    try:
        for op in ("cutlass_sparse_mm", "cutlass90_sparse_mm"):
            lib.define(f"{op}(Tensor x, Tensor values, Tensor meta, Tensor? bias, Tensor? alpha, int config=0, "
                       "int split_k=1, Tensor? workspace=None) -> Tensor")
        sparse_mm._register_fakes(_SCRATCH)
        ns = getattr(torch.ops, _SCRATCH)
        with FakeTensorMode():
            x = torch.empty(5, 128, dtype=torch.bfloat16)
            values = torch.empty(96, 64, dtype=torch.bfloat16)
            ws = torch.empty(1024, dtype=torch.uint8)
            y = ns.cutlass_sparse_mm(x, values, torch.empty(96, 8, dtype=torch.int16), None, None, 2, 3, ws)
            assert y.shape == (5, 96) and y.dtype == torch.bfloat16
            y = ns.cutlass90_sparse_mm(x, values, torch.empty(128, 16, dtype=torch.uint8), None, None)
            assert y.shape == (5, 96)
    finally:
        lib._destroy()


# --------------------------------------------------------------------------- GPU
def exactly_24(n: int, k: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Exactly 2 non-zeros of magnitude in [0.25, 2.25) in every group of 4 (no degenerate group)."""
    g = torch.Generator().manual_seed(seed)
    mag = torch.rand(n, k, generator=g) * 2 + 0.25
    sign = torch.where(torch.rand(n, k, generator=g) < 0.5, -1.0, 1.0)
    keep = torch.rand(n, k // 4, 4, generator=g).argsort(-1).argsort(-1) < 2
    return (mag * sign * keep.reshape(n, k)).to(dtype)


def _device_arch() -> str:
    if not CUDA:
        pytest.skip("needs a CUDA GPU")
    if not sparse_mm.load_ops():
        pytest.skip(f"extension unavailable: {sparse_mm.extension_status()}")
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("2:4 sparse tensor cores need compute capability >= 8.0")
    arch = sparse_mm.cutlass_arch(torch.device("cuda"))
    if arch is None:
        pytest.skip("this build has no CUTLASS kernel")
    return arch


def _one_copy(w: torch.Tensor, arch: str):
    """The one stored copy on the GPU: compact values + metadata in the arch's order (no CUTLASS compressor)."""
    n, k = w.shape
    values, meta = compress_24(w)
    meta = compact_to_sm90_meta(meta, n, k) if arch == "sm90" else compact_to_sm80_meta(meta, n, k)
    return values.cuda(), meta.cuda()


def _workspace(arch, n, t, k, config, split_k):
    size = sparse_mm.cutlass_workspace_size(arch, n, t, k, config, split_k)
    return torch.empty(max(size, 16), dtype=torch.uint8, device="cuda")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("config", [0, 1, 2, 3])
@pytest.mark.parametrize("tokens", [1, 5, 16, 24, 64])
def test_config_matches_reference_on_the_one_copy(config, tokens, dtype):
    arch = _device_arch()
    n, k = 512, 1024
    w = exactly_24(n, k, dtype, seed=31 * config + tokens)
    values, meta = _one_copy(w, arch)
    g = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, k, generator=g).to(dtype).cuda()
    bias = torch.randn(n, generator=g).to(dtype).cuda()
    alpha = (torch.rand(n, generator=g) + 0.5).cuda()
    wc = w.cuda()
    default_split = cutlass_config_for(arch, tokens, n, k)[1] if config else 1
    splits = sorted({1, default_split} | ({3} if config and arch == "sm80" else set()))
    for split_k in splits:
        for b, a in ((None, None), (bias, alpha)):
            ws = _workspace(arch, n, tokens, k, config, split_k)
            poison_allocator(tokens * n * 4)
            y = sparse_mm.cutlass_sparse_mm(x, values, meta, b, a, config=config, split_k=split_k, workspace=ws)
            assert y.shape == (tokens, n) and y.dtype == dtype and y.is_contiguous()
            assert_rel_close(y, sparse_mm_reference(x, wc, b, a), dtype)


def test_narrow_config_without_needed_workspace_is_refused():
    arch = _device_arch()
    n, k, t = 512, 1024, 4
    cid, split_k = cutlass_config_for(arch, t, n, k)
    if sparse_mm.cutlass_workspace_size(arch, n, t, k, cid, split_k) == 0:
        pytest.skip("this config and shape need no workspace")
    values, meta = _one_copy(exactly_24(n, k, torch.float16, seed=3), arch)
    x = torch.randn(t, k, dtype=torch.float16, device="cuda")
    with pytest.raises(RuntimeError, match="need a workspace"):
        sparse_mm.cutlass_sparse_mm(x, values, meta, config=cid, split_k=split_k)
    with pytest.raises(RuntimeError, match="bytes, this config and shape need"):
        sparse_mm.cutlass_sparse_mm(x, values, meta, config=cid, split_k=split_k,
                                    workspace=torch.empty(0, dtype=torch.uint8, device="cuda"))


@pytest.mark.parametrize("tokens", [1, 16, 64])
def test_decode_config_in_cuda_graph(tokens):
    """Narrow config + split-K / stream-K captured with its workspace allocated before the capture."""
    arch = _device_arch()
    n, k = 1024, 2048
    w = exactly_24(n, k, torch.float16, seed=tokens + 100)
    values, meta = _one_copy(w, arch)
    bias = torch.randn(n, dtype=torch.float16, device="cuda")
    cid, split_k = cutlass_config_for(arch, tokens, n, k)
    ws = _workspace(arch, n, tokens, k, cid, split_k)

    def fn(x):
        return sparse_mm.cutlass_mm_op(meta)(x, values, meta, bias, None, cid, split_k, ws)

    x = torch.randn(tokens, k, dtype=torch.float16, device="cuda")
    new_x = torch.randn_like(x)
    y = cuda_graph_replay(fn, x, new_x)
    assert_rel_close(y, sparse_mm_reference(new_x, w.cuda(), bias), torch.float16)
