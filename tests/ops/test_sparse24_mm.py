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
from ._util import DEVICE, DTYPES, TRITON_OK, needs_triton, poisoned


@pytest.fixture(autouse=True, scope="module")
def _interpreter_bf16_dot():
    """The Triton 3.9 CPU interpreter feeds bf16 ``tl.dot`` operands to numpy as their raw
    uint16 bits (garbage products); widen them to float32 first, as the GPU's bf16 MMA does
    exactly. Only the interpreter's ``create_dot`` is patched, never the kernel."""
    if DEVICE != "cpu" or not TRITON_OK:
        yield
        return
    import triton.language as tl
    from triton.runtime import interpreter as interp
    orig = interp.InterpreterBuilder.create_dot

    def widen(h):
        if h.dtype.scalar != tl.bfloat16:
            return h
        return interp.TensorHandle(interp._convert_float(h.data, tl.bfloat16, tl.float32, None).view(np.float32),
                                   tl.float32)

    interp.InterpreterBuilder.create_dot = lambda self, a, b, d, *rest: orig(self, widen(a), widen(b), d, *rest)
    yield
    interp.InterpreterBuilder.create_dot = orig


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
        if cfg.split_k > 1:                                      # fp32 partials <= ~10% of W bytes
            assert 2 * cfg.split_k * t * n * 4 <= 0.12 * n * k * 9 / 8
        if t <= 4:
            assert programs >= 1.5 * S.DEFAULT_NUM_SMS           # the whole GPU streams
    big = launch_config(1024, n, k)
    assert big.split_k == 1 and big.block_t == 128


def test_aot_cases_cover_decode_and_prefill():
    cases = S.aot_cases()
    labels = [label for label, _ in cases]
    assert len(set(labels)) == len(labels) == len(S.AOT_SHAPES) * len(S.AOT_TOKENS) * 3  # fp16, bf16, fp16 + bias
    assert all(callable(fn) for _, fn in cases)
    for t in (1, 4, 16, 64, 1024):
        assert any(f"T={t} " in label for label in labels)
