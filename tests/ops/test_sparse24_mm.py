"""ops/sparse24_mm: the compressed 2:4 format and the Triton matmul on it (CPU: TRITON_INTERPRET=1)."""
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ria_kernels import RiaInputError
from ria_kernels.ops import sparse24_mm as S
from ria_kernels.ops.sparse24_mm import (Sparse24Config, compress_24, decompress_24, launch_config, sparse24_mm,
                                         sparse24_mm_reference)
from ._util import DEVICE, DTYPES, TRITON_OK, needs_cuda, needs_triton, poisoned


@pytest.fixture(autouse=True)
def _shuffled_program_order(monkeypatch, request):
    """The interpreter runs a grid's programs in grid order, so the last split-K program of a tile
    to arrive is always split ``split_k - 1``: a reduction that relies on that order passes there
    and fails on a GPU. Here every launch runs its programs in a random order (seeded per test):
    the sequential i-th program gets the grid index of the i-th entry of a permutation."""
    if DEVICE != "cpu" or not TRITON_OK:
        return
    from triton.runtime import interpreter as interp
    builder = interp.interpreter_builder
    rng = np.random.default_rng(zlib.crc32(request.node.name.encode()))
    real_dim, real_idx = builder.set_grid_dim, builder.set_grid_idx
    state = {}

    def set_grid_dim(nx, ny, nz):
        real_dim(nx, ny, nz)
        state["dims"], state["perm"] = (nx, ny, nz), rng.permutation(nx * ny * nz)

    def set_grid_idx(x, y, z):
        nx, ny, nz = state["dims"]
        i = int(state["perm"][(x * ny + y) * nz + z])
        real_idx(i // (ny * nz), (i // nz) % ny, i % nz)

    monkeypatch.setattr(builder, "set_grid_dim", set_grid_dim)
    monkeypatch.setattr(builder, "set_grid_idx", set_grid_idx)


# (rtol, atol) of the kernel's output vs float64 F.linear of the masked dense weight: float32
# accumulation, then one rounding to the output dtype (the CPU interpreter truncates fp32 -> bf16,
# so up to 1 bf16 ulp there); fp32 is the IEEE (no TF32) reference path.
TOL = {torch.float32: (1e-5, 1e-4), torch.float16: (1e-3, 1e-3), torch.bfloat16: (8e-3, 1e-2)}


def sparse_weight(n, k, dtype, seed=0):
    """A 2:4 weight with every kind of group: 2, 1 and 0 non-zeros, kept values that are
    exactly -0.0 and pruned slots holding -0.0."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k // 4, 4, generator=g)
    keep = torch.rand(n, k // 4, 4, generator=g).argsort(-1)[..., :2]
    mask = torch.zeros(n, k // 4, 4, dtype=torch.bool).scatter_(-1, keep, True)
    kind = torch.randint(0, 8, (n, k // 4, 1), generator=g)
    first = mask & (mask.cumsum(-1) == 1)
    mask = torch.where(kind == 0, torch.zeros_like(mask), torch.where(kind == 1, first, mask))
    w = torch.where(mask, w, torch.full_like(w, -0.0))          # pruned slots: -0.0
    w = torch.where(mask & (kind == 2) & first, torch.full_like(w, -0.0), w)   # a kept -0.0
    return w.reshape(n, k).to(dtype).to(DEVICE)


def reference64(x, w, bias):
    return F.linear(x.double(), w.double(), None if bias is None else bias.double())


def check(x, w, bias, config=None):
    values, meta = compress_24(w)
    n = w.shape[0]
    out = poisoned((*x.shape[:-1], n), x.dtype)
    if config is None:
        got = sparse24_mm(x, values, meta, bias, backend="triton", out=out)
    else:
        got = S._sparse24_mm_triton(x, values, meta, bias, out=out, config=config)
    assert got.data_ptr() == out.data_ptr() and got.dtype == x.dtype
    rtol, atol = TOL[x.dtype]
    torch.testing.assert_close(got.double(), reference64(x, w, bias), rtol=rtol, atol=atol)
    return got, values, meta


TOKENS = (1, 2, 3, 7, 8, 16, 33, 64, 257)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("t", TOKENS)
def test_kernel_default_config(t, dtype):
    # N = 3 x BLOCK_N (64; 128 for prefill: then 1.5 tiles), K = 3 x BLOCK_K (256 up to T = 16,
    # then 128; 64 for prefill)
    n, k = 192, (768 if t <= 16 else 384 if t <= 64 else 192)
    seed = t * 10 + DTYPES.index(dtype)
    w = sparse_weight(n, k, dtype, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(t, k, generator=g).to(dtype).to(DEVICE)
    bias = torch.randn(n, generator=g).to(dtype).to(DEVICE) if t % 2 else None
    got, values, meta = check(x, w, bias)
    # the custom-op path (no out=) gives the same bits
    assert torch.equal(sparse24_mm(x, values, meta, bias, backend="triton"), got)


# explicit configs reach split-K and every masked edge: N, K and T not multiples of the tile,
# K % 8 == 4 (a half-used last metadata byte), splits whose last K range runs past K
EDGE_CASES = [
    # (t, n, k, config)
    (5, 96, 320, Sparse24Config(32, 16, 64, 3, 4, 1)),        # split-K 3, K = 5 tiles (uneven splits)
    (1, 100, 204, Sparse24Config(32, 16, 64, 2, 4, 1)),       # N, K ragged, K % 8 == 4, split 2
    (17, 33, 132, Sparse24Config(16, 32, 32, 4, 4, 1)),       # T ragged in a 32-token tile, split 4
    (40, 64, 256, Sparse24Config(32, 16, 64, 2, 4, 1)),       # several token tiles with split-K
    (70, 48, 96, Sparse24Config(32, 64, 32, 1, 4, 1)),        # prefill-style, ragged everything
]


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("t,n,k,config", EDGE_CASES, ids=lambda v: str(v) if not isinstance(v, tuple) else "cfg")
def test_kernel_edges_and_split_k(t, n, k, config, dtype):
    seed = t + n + k
    w = sparse_weight(n, k, dtype, seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, k, generator=g).to(dtype).to(DEVICE)
    bias = torch.randn(n, generator=g).to(dtype).to(DEVICE)
    got, values, meta = check(x, w, bias, config)
    if dtype != torch.float16:  # the dtype only changes loads/stores: one dtype covers the rest
        return
    check(x, w, None, config)
    if config.split_k > 1:
        # deterministic: partials summed in split order, whatever order the programs ran in
        again = S._sparse24_mm_triton(x, values, meta, bias, config=config)
        assert torch.equal(again, got)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("t", (1, 20, 65))
def test_kernel_default_config_k_not_multiple_of_32(t, dtype):
    # K % 32 != 0: byte-wise metadata and launch_config's smaller K steps (128 / 64 / 32), a ragged
    # last step, split-K at decode
    n, k = 72, 388
    w = sparse_weight(n, k, dtype, t)
    g = torch.Generator().manual_seed(t)
    x = torch.randn(t, k, generator=g).to(dtype).to(DEVICE)
    cfg = launch_config(t, n, k, S.DEFAULT_NUM_SMS, dtype)
    assert k % cfg.block_k and (t != 1 or S.launch_grid(t, n, k, cfg)[0][1] > 1)  # the edges are reached
    check(x, w, torch.randn(n, generator=g).to(dtype).to(DEVICE))


@needs_triton
def test_meta_view_with_unaligned_rows():
    # K % 32 == 0 but meta rows not 4-byte aligned (a view into a wider buffer): copied to the
    # word layout, same result as the contiguous meta
    w = sparse_weight(64, 256, torch.float16, 11)
    values, meta = compress_24(w)
    wide = torch.zeros(64, meta.shape[1] + 3, dtype=torch.uint8, device=DEVICE)
    wide[:, 1:1 + meta.shape[1]] = meta
    view = wide[:, 1:1 + meta.shape[1]]
    assert view.storage_offset() % 4 and view.stride(0) % 4
    x = torch.randn(3, 256).half().to(DEVICE)
    assert torch.equal(sparse24_mm(x, values, view, backend="triton"), sparse24_mm(x, values, meta, backend="triton"))


# --------------------------------------------------------------------------- concurrency
@needs_triton
def test_split_k_counters_are_per_call(monkeypatch):
    """Every split-K launch gets its own counters, zero when the kernel starts (so two launches
    that overlap on a GPU, on two streams or a graph replay beside an eager call, cannot meet in
    one counter), and a launch that leaves its counters dirty (killed half-way) cannot corrupt
    the next one."""
    seen = []
    real = S._split_workspace

    def spy(device, split, t, n, tiles):
        ws, cnt = real(device, split, t, n, tiles)
        assert cnt.dtype == torch.int32 and cnt.numel() == tiles and int(cnt.abs().sum()) == 0
        assert ws.shape == (split, t, n) and ws.dtype == torch.float32
        assert cnt.data_ptr() % 16 == 0 and ws.data_ptr() % 16 == 0
        seen.append((cnt, split))
        return ws, cnt

    monkeypatch.setattr(S, "_split_workspace", spy)
    t, n, k, cfg = 5, 96, 320, Sparse24Config(32, 16, 64, 3, 4, 1)
    w = sparse_weight(n, k, torch.float16, 2)
    x = torch.randn(t, k).half().to(DEVICE)
    first, _, _ = check(x, w, None, cfg)
    cnt, split = seen[0]
    assert split == 3 and cnt.tolist() == [split] * cnt.numel()   # every split arrived exactly once
    cnt.fill_(1)                                                  # left dirty, as by an aborted launch
    again, _, _ = check(x, w, None, cfg)
    assert torch.equal(again, first) and len(seen) == 2
    assert seen[1][0].data_ptr() != cnt.data_ptr()                # its own counters (the first are still alive)
    assert not any(isinstance(v, dict) and v and all(isinstance(t, torch.Tensor) for t in v.values())
                   for v in vars(S).values()), "a module-level tensor cache would be shared by every stream"


@needs_cuda
def test_two_streams_interleaved_launches_gpu():
    """2 streams x 200 launches of different shapes (split-K and not), queued alternately with no
    synchronisation between the streams, so split-K launches overlap on the GPU; every output
    matches the reference."""
    shapes = [(1, 4096, 4096), (3, 1024, 11008), (16, 11008, 4096), (33, 2048, 2048), (64, 512, 8192),
              (2, 4096, 4100), (130, 1024, 1024)]
    weights = {}
    for i, (t, n, k) in enumerate(shapes):
        w = sparse_weight(n, k, torch.float16, i)
        weights[(n, k)] = (w,) + compress_24(w)
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    g = torch.Generator().manual_seed(0)
    jobs = []
    for i in range(400):
        t, n, k = shapes[int(torch.randint(len(shapes), (1,), generator=g))]
        x = torch.randn(t, k, generator=g).half().to(DEVICE)
        jobs.append((i % 2, x, n, k))
    torch.cuda.synchronize()
    outs = []
    for s, x, n, k in jobs:
        with torch.cuda.stream(streams[s]):
            x.record_stream(streams[s])
            outs.append(sparse24_mm(x, *weights[(n, k)][1:], backend="triton"))
    torch.cuda.synchronize()
    for (s, x, n, k), y in zip(jobs, outs):
        ref = reference64(x, weights[(n, k)][0], None)
        torch.testing.assert_close(y.double(), ref, rtol=2e-3, atol=2e-3)


@needs_cuda
def test_graph_replay_beside_eager_split_k_gpu():
    """A captured split-K launch replayed on one stream while eager split-K launches of another
    shape run on a second: both right, and the graph still right after many eager calls (no
    buffer it holds was replaced or freed)."""
    w1, w2 = sparse_weight(1024, 8192, torch.float16, 1), sparse_weight(4096, 4096, torch.float16, 2)
    c1, c2 = compress_24(w1), compress_24(w2)
    static_x = torch.randn(2, 8192).half().to(DEVICE)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        sparse24_mm(static_x, *c1, backend="triton")  # compile outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = sparse24_mm(static_x, *c1, backend="triton")
    other = torch.cuda.Stream()
    for i in range(50):
        static_x.copy_(torch.randn(2, 8192).half())
        graph.replay()
        with torch.cuda.stream(other):
            x2 = torch.randn(1, 4096, device=DEVICE).half()
            y2 = sparse24_mm(x2, *c2, backend="triton")
        torch.cuda.synchronize()
        torch.testing.assert_close(static_y.double(), reference64(static_x, w1, None), rtol=2e-3, atol=2e-3)
        torch.testing.assert_close(y2.double(), reference64(x2, w2, None), rtol=2e-3, atol=2e-3)


@needs_triton
def test_program_order_is_shuffled():
    """The autouse fixture really runs a grid's programs out of grid order (else the split-K
    arrival tests above would test only one order)."""
    import triton
    import triton.language as tl

    @triton.jit
    def arrival(order_ptr, cnt_ptr):
        pid = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
        tl.store(order_ptr + pid, tl.atomic_add(cnt_ptr, 1))

    order = torch.full((64,), -1, dtype=torch.int32)
    cnt = torch.zeros(1, dtype=torch.int32)
    arrival[(8, 8)](order, cnt)
    assert sorted(order.tolist()) == list(range(64))              # each program ran exactly once
    assert order.tolist() != list(range(64))                      # ... not in grid order


@needs_triton
def test_leading_dims_and_strided_x():
    w = sparse_weight(64, 256, torch.float16, 3)
    values, meta = compress_24(w)
    x = torch.randn(2, 3, 512).half().to(DEVICE)[..., ::2]       # [2, 3, 256], last-dim stride 2
    got = sparse24_mm(x, values, meta, backend="triton")
    assert got.shape == (2, 3, 64)
    torch.testing.assert_close(got.double(), reference64(x, w, None), rtol=1e-3, atol=1e-3)


@needs_triton
def test_kernel_extreme_sparsity_all_zero_weight():
    w = torch.zeros(64, 256, dtype=torch.float16, device=DEVICE)
    x = torch.randn(3, 256).half().to(DEVICE)
    got, _, _ = check(x, w, torch.ones(64, dtype=torch.float16, device=DEVICE))
    assert torch.equal(got, torch.ones_like(got))


# --------------------------------------------------------------------------- format
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k", [4, 8, 12, 260])
def test_round_trip_exact(k, dtype):
    w = sparse_weight(9, k, dtype, k)
    values, meta = compress_24(w)
    assert values.shape == (9, k // 2) and values.dtype == dtype
    assert meta.shape == (9, (k + 7) // 8) and meta.dtype == torch.uint8
    dense = decompress_24(values, meta)
    assert torch.equal(dense, w)                                   # -0.0 == 0.0 compares equal ...
    assert not bool(torch.signbit(dense[dense == 0]).any())        # ... and comes back as +0.0
    assert torch.equal(compress_24(dense)[0], values) and torch.equal(compress_24(dense)[1], meta)


def test_format_layout_by_hand():
    # row 0: groups (cols 1, 3 kept), (col 2 only -> kept pair 0, 2), (no non-zero -> 0, 1)
    w = torch.tensor([[0, 5, 0, 6, 0, 0, 7, 0, 0, 0, 0, 0]], dtype=torch.float16)
    values, meta = compress_24(w)
    assert values.tolist() == [[5, 6, 0, 7, 0, 0]]
    codes = [1 | 3 << 2, 0 | 2 << 2, 0 | 1 << 2]                   # i0 | i1 << 2 per group
    assert meta.tolist() == [[codes[0] | codes[1] << 4, codes[2]]]   # even group in the low nibble
    assert S.FORMAT_VERSION == 1


def test_compressed_bytes_ratio():
    values, meta = compress_24(sparse_weight(64, 4096, torch.float16))
    dense_bytes = 64 * 4096 * 2
    assert (values.numel() * values.element_size() + meta.numel()) / dense_bytes == 0.5625


# --------------------------------------------------------------------------- device-ordered metadata
# The kernel reads the sm80 / sm90 metadata orders of ops/sparse24_layout.py directly (META_LAYOUT).
# Against the float32 torch reference on the compact metadata, per dtype: both sides accumulate in
# float32 and round once to the output dtype, so they may differ by 1 ulp of it.
LAYOUT_TOL = {torch.float32: (1e-5, 1e-4), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}
LAYOUT_CASES = [
    # (layout, t, n, k, config or None = launch_config)
    ("sm80", 1, 64, 256, None),                                   # decode default, split-K
    ("sm80", 5, 96, 320, Sparse24Config(32, 16, 64, 3, 4, 1)),    # N % 64 != 0, split 3, ragged splits
    ("sm80", 17, 32, 96, Sparse24Config(32, 32, 64, 1, 4, 1)),    # ragged last K step (K % 64 == 32)
    ("sm80", 70, 64, 128, Sparse24Config(32, 64, 32, 1, 4, 1)),   # several token tiles (prefill shape)
    ("sm90", 1, 64, 256, None),
    ("sm90", 3, 100, 208, Sparse24Config(32, 16, 64, 2, 4, 1)),   # N padded to 128, K padded to 256, ragged K
    ("sm90", 20, 130, 144, Sparse24Config(64, 32, 32, 2, 4, 1)),  # several 64-row atoms, K % 32 == 16
    ("sm90", 65, 70, 272, None),                                  # prefill default, 2 atom columns
]


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout,t,n,k,config", LAYOUT_CASES, ids=lambda v: str(v) if not isinstance(v, tuple) else "cfg")
def test_kernel_reads_device_meta_layouts(layout, t, n, k, config, dtype):
    from ria_kernels.ops.sparse24_layout import compact_to_layout
    seed = n + k + t
    w = sparse_weight(n, k, dtype, seed)
    values, meta = compress_24(w)
    dev_meta = compact_to_layout(meta, n, k, layout)
    assert dev_meta.shape != meta.shape or dev_meta.dtype != meta.dtype or not torch.equal(dev_meta, meta)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, k, generator=g).to(dtype).to(DEVICE)
    bias = torch.randn(n, generator=g).to(dtype).to(DEVICE) if t % 2 else None
    ref = sparse24_mm_reference(x, values, meta, bias).float()
    out = poisoned((t, n), dtype)
    if config is None:
        got = sparse24_mm(x, values, dev_meta, bias, backend="triton", out=out, meta_layout=layout)
    else:
        got = S._sparse24_mm_triton(x, values, dev_meta, bias, out=out, config=config, meta_layout=layout)
    assert got.data_ptr() == out.data_ptr() and not torch.isnan(got).any()
    rtol, atol = LAYOUT_TOL[dtype]
    torch.testing.assert_close(got.float(), ref, rtol=rtol, atol=atol)
    # the same bits as the kernel on the compact metadata, and through the custom op
    compact = S._sparse24_mm_triton(x, values, meta, bias, config=config) if config is not None else \
        sparse24_mm(x, values, meta, bias, backend="triton")
    assert torch.equal(got, compact)
    if config is None:
        assert torch.equal(sparse24_mm(x, values, dev_meta, bias, backend="triton", meta_layout=layout), got)


@pytest.mark.parametrize("layout", ["sm80", "sm90"])
def test_device_meta_layout_torch_backend_and_checks(layout):
    from ria_kernels.ops.sparse24_layout import compact_to_layout
    k = 128 if layout == "sm80" else 144  # sm90: K padded to 256, so the buffers' shapes differ
    w = sparse_weight(64, k, torch.float16, 3)
    values, meta = compress_24(w)
    dev_meta = compact_to_layout(meta, 64, k, layout)
    x = torch.randn(4, k).half().to(DEVICE)
    # the torch backend converts back to the compact order: the reference's bits
    assert torch.equal(sparse24_mm(x, values, dev_meta, backend="torch", meta_layout=layout),
                       sparse24_mm_reference(x, values, meta))
    with pytest.raises(RiaInputError, match="meta"):     # the compact buffer is not a device-order buffer
        sparse24_mm(x, values, meta, meta_layout=layout)
    with pytest.raises(RiaInputError, match="meta_layout"):
        sparse24_mm(x, values, dev_meta, meta_layout="sm100")
    with pytest.raises(RiaInputError, match="meta"):     # and a device buffer is not the compact one
        sparse24_mm(x, values, dev_meta)
    odd = sparse_weight(48 if layout == "sm80" else 8, 40, torch.float16, 4)   # shapes the layout refuses
    v_odd, _ = compress_24(odd)
    with pytest.raises(RiaInputError, match=layout):
        sparse24_mm(torch.randn(1, 40).half().to(DEVICE), v_odd, dev_meta, meta_layout=layout)


# --------------------------------------------------------------------------- input checks
def test_bad_inputs_raise():
    w = sparse_weight(8, 16, torch.float16)
    values, meta = compress_24(w)
    x = torch.randn(2, 16).half().to(DEVICE)
    dense = torch.ones(4, 8, dtype=torch.float16)
    with pytest.raises(RiaInputError, match="not 2:4"):
        compress_24(dense)
    with pytest.raises(RiaInputError, match="divisible by 4"):
        compress_24(torch.zeros(4, 6))
    with pytest.raises(RiaInputError, match="dtype"):
        compress_24(torch.zeros(4, 8, dtype=torch.int32))
    with pytest.raises(RiaInputError, match="in_features"):
        sparse24_mm(torch.randn(2, 12).half().to(DEVICE), values, meta)
    with pytest.raises(RiaInputError, match="dtype"):
        sparse24_mm(x.float(), values, meta)
    with pytest.raises(RiaInputError, match="meta"):
        sparse24_mm(x, values, meta.to(torch.int32))
    with pytest.raises(RiaInputError, match="meta"):
        sparse24_mm(x, values, meta[:, :1])
    with pytest.raises(RiaInputError, match="bias"):
        sparse24_mm(x, values, meta, torch.zeros(7, dtype=torch.float16, device=DEVICE))
    with pytest.raises(RiaInputError, match="out"):
        sparse24_mm(x, values, meta, out=torch.empty(2, 7, dtype=torch.float16, device=DEVICE))
    with pytest.raises(RiaInputError, match="backend"):
        sparse24_mm(x, values, meta, backend="cuda")


# --------------------------------------------------------------------------- custom op
def test_custom_op_fake_and_schema():
    w = sparse_weight(16, 32, torch.float32)
    values, meta = compress_24(w)
    x = torch.randn(3, 32).to(DEVICE)
    torch.library.opcheck(torch.ops.ria_kernels.sparse24_mm.default, (x, values, meta, None, "torch"))
    from torch._subclasses.fake_tensor import FakeTensorMode
    values_half = values.half()
    with FakeTensorMode() as mode:
        fx = mode.from_tensor(torch.randn(2, 5, 32, dtype=torch.float16))
        fv = mode.from_tensor(values_half)
        fm = mode.from_tensor(meta)
        y = torch.ops.ria_kernels.sparse24_mm(fx, fv, fm, None, None)
        assert y.shape == (2, 5, 16) and y.dtype == torch.float16


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_torch_compile_no_graph_break(backend):
    torch._dynamo.reset()
    w = sparse_weight(64, 256, torch.float16, 5)
    values, meta = compress_24(w)
    bias = torch.randn(64).half().to(DEVICE)
    x = torch.randn(4, 256).half().to(DEVICE)

    def f(x):
        return sparse24_mm(x * 2, values, meta, bias, backend=backend) + 1

    got = torch.compile(f, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(got.double(), reference64(x * 2, w, bias) + 1, rtol=1e-3, atol=2e-3)


def test_dispatch_cpu_is_reference():
    w = sparse_weight(32, 64, torch.bfloat16, 7)
    values, meta = compress_24(w)
    x = torch.randn(5, 64).bfloat16()
    assert torch.equal(sparse24_mm(x.cpu(), values.cpu(), meta.cpu()),
                       sparse24_mm_reference(x, values.cpu(), meta.cpu()))


# --------------------------------------------------------------------------- launch heuristic
@pytest.mark.parametrize("n,k", S.AOT_SHAPES)
def test_launch_config_decode_streams_weights_once(n, k):
    for t in (1, 2, 4, 8, 16, 32, 64):
        cfg = launch_config(t, n, k)
        assert cfg.block_t >= t and cfg.block_t >= 16           # one token tile: W read once
        steps = -(-k // cfg.block_k)
        programs = -(-n // cfg.block_n) * cfg.split_k
        assert cfg.split_k <= max(1, steps // 2)                 # >= 2 K-steps per split
        if cfg.split_k > 1:                                      # fp32 partials <= ~40% of W bytes
            assert 2 * cfg.split_k * t * n * 4 <= 0.4 * n * k * 9 / 8
        # the whole GPU streams the weight, in ~whole waves of 2 blocks per SM
        assert programs >= (1.5 if t <= 32 else 0.7) * S.DEFAULT_NUM_SMS
        unit = 2 * S.DEFAULT_NUM_SMS
        assert programs / (-(-programs // unit) * unit) >= 0.7
        # <= 128 registers (4 blocks of 4 warps per SM) up to T = 16, <= 168 (3 blocks) above
        assert cfg.num_warps == 4 and cfg.maxnreg == (S.DECODE_MAXNREG if t <= 16 else S.DECODE_MAXNREG_WIDE)
    big = launch_config(1024, n, k)
    assert big.split_k == 1 and big.block_t == 128


def test_aot_cases_cover_decode_and_prefill():
    cases = S.aot_cases()
    labels = [label for label, _ in cases]
    named = [label for label in labels if "reachable" not in label and "layout=" not in label]
    for layout in ("sm80", "sm90"):  # the device metadata orders: every decode tile and prefill
        for t in (1, 17, 33, 1024):
            assert any(f"layout={layout} T={t} " in label for label in labels)
    assert len(set(labels)) == len(labels)
    assert len(named) == len(S.AOT_SHAPES) * len(S.AOT_TOKENS) * 3  # fp16, bf16, fp16 + bias
    assert all(callable(fn) for _, fn in cases)
    for t in (1, 4, 16, 64, 1024):
        assert any(f"T={t} " in label for label in labels)


# --------------------------------------------------------------------------- launch_config as a pure function
SM_COUNTS = (1, 16, 78, 108, 114, 132, 144)
LARGE = (4096, 5120, 8192, 11008, 13824, 14336, 28672, 128256)


def assert_launch_ok(t, n, k, sms, dtype):
    """The invariants of one (T, N, K, SM count, dtype): the programs cover every output element
    exactly once, the splits cover K exactly once with no fully masked K-step, the grid fits the
    hardware limits, the tiles are what Triton and the kernel need, and decode reads W once."""
    cfg = launch_config(t, n, k, sms, dtype)
    (gn, gs, gt), kps = S.launch_grid(t, n, k, cfg)
    where = f"T={t} N={n} K={k} sms={sms} {dtype}: {cfg}"
    for b in (cfg.block_n, cfg.block_t, cfg.block_k):
        assert b & (b - 1) == 0, where                            # tl.arange needs powers of 2
    assert cfg.block_n >= 16 and cfg.block_t >= 16 and cfg.block_k >= 32, where  # tl.dot dims >= 16; words: 32
    assert cfg.num_warps in (1, 2, 4, 8, 16, 32) and 1 <= cfg.num_stages <= 4, where
    # output tiles: offs = pid * BLOCK + arange(BLOCK) are disjoint; together they cover [0, N) and
    # [0, T), and no tile is wholly outside
    assert (gn - 1) * cfg.block_n < n <= gn * cfg.block_n, where
    assert (gt - 1) * cfg.block_t < t <= gt * cfg.block_t, where
    # K: split s owns [s * kps, min((s + 1) * kps, K)) in BLOCK_K steps, so every step starts
    # inside K iff the last split starts inside K
    assert kps % cfg.block_k == 0 and (gs - 1) * kps < k <= gs * kps, where
    assert 1 <= gs <= cfg.split_k, where
    assert gn < 2 ** 31 and gs <= 65535 and gt <= 65535, where
    if t <= S.DECODE_MAX_T:
        assert gt == 1 and cfg.block_t == max(16, 1 << (t - 1).bit_length()), where  # W streamed once
    else:
        assert gs == 1, where
    if gs > 1:
        assert kps // cfg.block_k >= 2, where                                # >= 2 K-steps per split
        assert 2 * gs * t * n * 4 <= 0.4 * n * k * 9 / 8, where             # fp32 partials <= ~40% of W
    if cfg.maxnreg is not None:  # the register cap: 4 (T <= 16) or 3 blocks of num_warps fit 64K registers
        assert (4 if t <= 16 else 3) * cfg.maxnreg * 32 * cfg.num_warps <= 65536, where
    return cfg


def test_launch_config_every_token_count():
    for t in range(1, 1025):
        for n, k in ((1, 4), (192, 388), (4096, 4096), (11008, 4100)):
            for sms in SM_COUNTS:
                for dtype in DTYPES:
                    assert_launch_ok(t, n, k, sms, dtype)


def test_launch_config_every_n_and_k():
    for n in range(1, 1025):
        for t in (1, 16, 17, 64, 65, 300):
            for k in (4, 388, 4096):
                for sms in SM_COUNTS:
                    assert_launch_ok(t, n, k, sms, torch.float16)
    for k in range(4, 4097, 4):
        for t in (1, 16, 33, 64, 1000):
            for n in (1, 100, 4096):
                for sms in SM_COUNTS:
                    for dtype in (torch.float16, torch.float32):
                        assert_launch_ok(t, n, k, sms, dtype)


def test_launch_config_llm_shapes():
    for n in LARGE:
        for k in LARGE:
            for t in (1, 2, 3, 4, 8, 16, 17, 31, 32, 33, 48, 63, 64, 65, 127, 128, 1024, 8191, 32768):
                for sms in SM_COUNTS:
                    for dtype in DTYPES:
                        cfg = assert_launch_ok(t, n, k, sms, dtype)
                        if t <= 4 and dtype != torch.float32 and sms == S.DEFAULT_NUM_SMS and k >= 4096:
                            # the whole GPU streams the weight at decode
                            assert -(-n // cfg.block_n) * S.launch_grid(t, n, k, cfg)[0][1] >= 1.5 * sms


def test_launch_config_fp32_and_byte_metadata_tiles():
    # the tiles the AOT gate found within registers and shared memory (see launch_config)
    assert launch_config(1, 4096, 4096, dtype=torch.float32).block_k == 128
    assert launch_config(32, 4096, 4096, dtype=torch.float32).block_k == 32
    assert launch_config(1024, 4096, 4096, dtype=torch.float32)[:3] == (64, 64, 32)
    assert launch_config(1, 4096, 4100).block_k == 128 and launch_config(64, 4096, 4100).block_k == 64
    assert launch_config(1024, 4096, 4100).block_k == 32
    assert launch_config(1, 4096, 4096) == launch_config(1, 4096, 4096, dtype=torch.bfloat16)


def test_reachable_configs_cover_every_launch():
    """Every (T, N, K, dtype, bias) of the sweeps above compiles to a variant that
    reachable_configs() (what the AOT gate compiles) lists, and each listed representative
    really reaches its variant."""
    reachable = S.reachable_configs()
    for key, (t, n, k, dtype, bias) in reachable.items():
        assert S.compile_variant(t, n, k, dtype, bias) == key
    shapes = [(t, n, k) for t in range(1, 1025, 3) for n, k in ((1, 4), (192, 388), (4096, 4096), (4097, 4100))]
    shapes += [(t, n, k) for n in range(1, 300, 7) for k in range(4, 2049, 36) for t in (1, 16, 17, 64, 65, 300)]
    shapes += [(t, n, k) for n in LARGE for k in LARGE for t in (1, 8, 17, 33, 64, 65, 128, 8191)]
    for t, n, k in shapes:
        for dtype in DTYPES:
            for bias in (False, True):
                key = S.compile_variant(t, n, k, dtype, bias)
                assert S.variant_covered(key, reachable), f"T={t} N={n} K={k} {dtype} bias={bias}: {key}"
    labels = [label for label, _ in S.aot_cases()]
    assert sum("reachable" in label for label in labels) == len(reachable)


@pytest.mark.parametrize("kept", [3, 4])
@pytest.mark.parametrize("group", [0, 5])
def test_compress_24_refuses_a_group_with_more_than_two_nonzeros(kept, group):
    """Exactly one group of 4 holds 3 (or 4) non-zeros, the others are 2:4: one clear error naming the
    count, never a silently truncated group (the mutation run's surviving mutant accepted 3)."""
    w = torch.zeros(2, 24)
    w[:, 0::4] = 1.0
    w[:, 1::4] = -2.0  # every group keeps exactly 2
    row, col = divmod(group, 6)
    w[row, 4 * col:4 * col + kept] = torch.arange(1, kept + 1, dtype=torch.float32)
    with pytest.raises(RiaInputError, match=r"not 2:4 sparse: 1 group\(s\) of 4 hold more than 2 non-zeros"):
        compress_24(w)
    values, meta = compress_24(w * (torch.arange(24) % 4 < 2))  # the same weight made 2:4 compresses
    assert torch.equal(decompress_24(values, meta), w * (torch.arange(24) % 4 < 2))


# --------------------------------------------------------------------------- metadata orders (issue 22)
@pytest.mark.parametrize("layout", ["sm80", "sm90"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_reads_every_meta_layout(layout, dtype):
    """The torch path takes the metadata in a device order and gives the row-major result bit for bit."""
    from ria_kernels.ops.sparse24_layout import compact_to_layout
    n, k = 64, 192
    values, meta = compress_24(sparse_weight(n, k, dtype, 11))
    x = torch.randn(5, k, dtype=dtype)
    want = sparse24_mm(x, values, meta, backend="torch")
    out = poisoned((5, n), dtype)
    got = sparse24_mm(x, values, compact_to_layout(meta, n, k, layout), backend="torch", out=out,
                      meta_layout=layout)
    assert torch.equal(got, want)
    assert torch.equal(sparse24_mm(x, values, compact_to_layout(meta, n, k, layout), backend="torch",
                                   meta_layout=layout), want)  # through the custom op too


def test_meta_layout_checked_against_its_shape():
    n, k = 64, 128
    values, meta = compress_24(sparse_weight(n, k, torch.float16, 3))
    x = torch.randn(2, k, dtype=torch.float16)
    with pytest.raises(RiaInputError, match=r"sm80 meta must be torch.int16 of shape \[64, 8\]"):
        sparse24_mm(x, values, meta, backend="torch", meta_layout="sm80")  # row-major bytes passed as sm80
    with pytest.raises(RiaInputError, match="meta_layout must be one of"):
        sparse24_mm(x, values, meta, backend="torch", meta_layout="sm70")
    assert S.KERNEL_META_LAYOUTS == ("rowmajor", "sm80", "sm90")  # what SparseLinear relies on for one copy


