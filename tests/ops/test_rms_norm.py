import pytest
import torch

from ria_kernels import RiaInputError, permuted_rms_norm
from ria_kernels.ops.rms_norm import permuted_rms_norm_reference
from ._util import DEVICE, DTYPES, TOL, guarded, needs_cuda, needs_triton, poisoned, rand


def _ref64(x, w, perm, eps, res):
    """float64 RMSNorm; with a residual, h = x + residual rounded to x's dtype (the stored stream)."""
    h = x if res is None else (x.double() + res.double()).to(x.dtype)
    hd = h.double()
    y = hd * torch.rsqrt(hd.pow(2).mean(-1, keepdim=True) + eps) * w.double()
    return (y if perm is None else y[..., perm]), h


# rows = 1, 7, 128 (and a 3-D batch); hidden aligned (64, 96) and odd (5, 1000); all dtypes,
# permuted and unpermuted, with and without the fused residual add
CASES = ([((7, 64), dt, p, r) for dt in DTYPES for p in (False, True) for r in (False, True)]
         + [((1, 8), dt, True, True) for dt in DTYPES]
         + [((128, 5), dt, True, True) for dt in DTYPES]
         + [((2, 3, 96), torch.bfloat16, True, False), ((5, 1000), torch.float16, True, True),
            ((128, 96), torch.float32, False, True)])


@needs_triton
@pytest.mark.parametrize("shape,dtype,permute,residual", CASES)
def test_kernel_matches_reference(shape, dtype, permute, residual):
    seed = hash((shape, str(dtype), permute, residual)) % 10_000
    x = rand(*shape, dtype=dtype, seed=seed)
    w = rand(shape[-1], dtype=dtype, seed=seed + 1)
    r = rand(*shape, dtype=dtype, seed=seed + 2) if residual else None
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(shape[-1], generator=g).to(DEVICE) if permute else None
    out, check_out = guarded(shape, dtype)
    res_out, check_res = guarded(shape, dtype) if residual else (None, lambda: None)
    got = permuted_rms_norm(x, w, perm, 1e-6, r, backend="triton", out=out, residual_out=res_out)
    check_out()
    check_res()
    y, h = (got if residual else (got, None))
    assert y.data_ptr() == out.data_ptr()
    ry, rh = _ref64(x, w, perm, 1e-6, r)
    rtol, atol = TOL["rms_norm"][dtype]
    torch.testing.assert_close(y.double(), ry, rtol=rtol, atol=atol)
    if residual:
        # the updated residual comes back in the ORIGINAL channel order, exactly x + residual
        assert h.data_ptr() == res_out.data_ptr()
        if dtype == torch.bfloat16 and DEVICE == "cpu":
            # the Triton CPU interpreter rounds fp32 -> bf16 towards zero (GPU Triton rounds to
            # nearest even), so off the GPU h may differ from the reference by one bf16 ulp
            torch.testing.assert_close(h, rh, rtol=2 ** -7, atol=0)
        else:
            assert torch.equal(h, rh)
    # and the custom-op path (no out=) gives the same bits
    again = permuted_rms_norm(x, w, perm, 1e-6, r, backend="triton")
    assert torch.equal(again if not residual else again[0], y)


@needs_triton
def test_all_zero_rows_give_zero():
    x = torch.zeros(3, 16, device=DEVICE)
    y = permuted_rms_norm(x, rand(16), torch.randperm(16).to(DEVICE), backend="triton",
                          out=poisoned((3, 16), torch.float32))
    assert torch.equal(y, torch.zeros_like(y))


@needs_triton
def test_permuted_weight_cached_form():
    x, w = rand(4, 32, seed=1), rand(32, seed=2)
    perm = torch.randperm(32).to(DEVICE)
    a = permuted_rms_norm(x, w, perm, backend="triton")
    b = permuted_rms_norm(x, w[perm], perm, backend="triton", weight_permuted=True, validate=False)
    c = permuted_rms_norm(x, w[perm], perm, backend="torch", weight_permuted=True)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a, permuted_rms_norm_reference(x, w, perm), rtol=1e-5, atol=1e-6)


@needs_triton
def test_unpermuted_equals_permuted_with_identity():
    x, w = rand(7, 48, dtype=torch.float16, seed=5), rand(48, dtype=torch.float16, seed=6)
    ident = torch.arange(48, device=DEVICE)
    assert torch.equal(permuted_rms_norm(x, w, None, backend="triton"),
                       permuted_rms_norm(x, w, ident, backend="triton"))


def test_bad_inputs():
    x, w = rand(4, 8), rand(8)
    with pytest.raises(RiaInputError, match="not a permutation"):
        permuted_rms_norm(x, w, torch.tensor([0, 0, 1, 2, 3, 4, 5, 6], device=x.device))
    with pytest.raises(RiaInputError, match="outside"):
        permuted_rms_norm(x, w, torch.arange(1, 9, device=x.device))
    with pytest.raises(RiaInputError, match=r"perm must have shape \[8\]"):
        permuted_rms_norm(x, w, torch.arange(7, device=x.device))
    with pytest.raises(RiaInputError, match="perm must be int16/int32/int64"):
        permuted_rms_norm(x, w, torch.arange(8, device=x.device).float())
    with pytest.raises(RiaInputError, match="weight must have shape"):
        permuted_rms_norm(x, rand(7))
    with pytest.raises(RiaInputError, match="dtype"):
        permuted_rms_norm(x.double(), w)
    with pytest.raises(RiaInputError, match="residual shape"):
        permuted_rms_norm(x, w, residual=rand(4, 7))
    with pytest.raises(RiaInputError, match="residual must be"):
        permuted_rms_norm(x, w, residual=rand(4, 8, dtype=torch.float16))
    with pytest.raises(RiaInputError, match="out must be"):
        permuted_rms_norm(x, w, out=rand(4, 7))
    with pytest.raises(RiaInputError, match="residual_out needs residual"):
        permuted_rms_norm(x, w, residual_out=rand(4, 8))
    with pytest.raises(RiaInputError, match="backend must be one of"):
        permuted_rms_norm(x, w, backend="cuda")


@needs_triton
def test_non_contiguous_rejected():
    x = rand(8, 16).t()
    with pytest.raises(RiaInputError, match="contiguous"):
        permuted_rms_norm(x, rand(8), backend="triton")
    with pytest.raises(RiaInputError, match="contiguous"):
        permuted_rms_norm(rand(16, 8), rand(8), residual=rand(8, 16).t(), backend="triton")


# ---- custom ops: ria_kernels::permuted_rms_norm / permuted_add_rms_norm
@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_custom_ops_opcheck(backend):
    x, w, r = rand(5, 32, seed=1), rand(32, seed=2), rand(5, 32, seed=3)
    perm = torch.randperm(32).to(DEVICE)
    torch.library.opcheck(torch.ops.ria_kernels.permuted_rms_norm.default, (x, w, perm, 1e-6, backend, False))
    torch.library.opcheck(torch.ops.ria_kernels.permuted_rms_norm.default, (x, w, None, 1e-6, backend, False))
    torch.library.opcheck(torch.ops.ria_kernels.permuted_add_rms_norm.default,
                          (x, r, w[perm], perm, 1e-6, backend, True))


def _block(x, w, perm, r, backend):
    # what a decoder layer does: fused add + permuted norm, then a plain norm (no graph break)
    y, h = permuted_rms_norm(x, w, perm, 1e-6, r, backend=backend, validate=False)
    z = permuted_rms_norm(h, w, None, 1e-6, backend=backend)
    return y * 2, h, z


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_compile_fullgraph(backend, compile_backend):
    if compile_backend == "inductor" and backend == "torch" and DEVICE == "cpu":
        pytest.skip("one inductor compile on CPU is enough (slow C++ build)")
    x, w, r = rand(5, 32, seed=1), rand(32, seed=2), rand(5, 32, seed=3)
    perm = torch.randperm(32).to(DEVICE)
    torch._dynamo.reset()
    fn = torch.compile(_block, fullgraph=True, backend=compile_backend)
    for got, ref in zip(fn(x, w, perm, r, backend), _block(x, w, perm, r, backend)):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


@needs_cuda
def test_cuda_graph_capture():
    x, w, r = rand(64, 256, dtype=torch.float16), rand(256, dtype=torch.float16), rand(64, 256, dtype=torch.float16)
    perm = torch.randperm(256, device="cuda")
    wp = w[perm].contiguous()
    eager = permuted_rms_norm(x, wp, perm, 1e-6, r, validate=False, weight_permuted=True)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up (compile the kernel) outside the capture
        permuted_rms_norm(x, wp, perm, 1e-6, r, validate=False, weight_permuted=True)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y, h = permuted_rms_norm(x, wp, perm, 1e-6, r, validate=False, weight_permuted=True)
    y.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, eager[0]) and torch.equal(h, eager[1])
    fn = torch.compile(lambda a, b: permuted_rms_norm(a, wp, perm, 1e-6, b, validate=False, weight_permuted=True),
                       mode="reduce-overhead", fullgraph=True)
    for _ in range(3):
        got = fn(x, r)
    assert torch.equal(got[0], eager[0]) and torch.equal(got[1], eager[1])


# ---- wide and odd rows, narrow (cached) permutations
@needs_triton
@pytest.mark.parametrize("h,dtype,residual", [(4097, torch.float16, True), (4097, torch.float32, False),
                                               (28672, torch.bfloat16, True), (28672, torch.float16, False),
                                               (28672, torch.float32, True)])  # fp32 + residual: chunked path
def test_wide_and_odd_hidden(h, dtype, residual):
    x = rand(2, h, dtype=dtype, seed=h)
    w = rand(h, dtype=dtype, seed=h + 1)
    r = rand(2, h, dtype=dtype, seed=h + 2) if residual else None
    perm = torch.randperm(h, generator=torch.Generator().manual_seed(h)).to(DEVICE)
    out = poisoned((2, h), dtype)
    res_out = poisoned((2, h), dtype) if residual else None
    got = permuted_rms_norm(x, w, perm, 1e-6, r, backend="triton", out=out, residual_out=res_out)
    y = got[0] if residual else got
    ry, rh = _ref64(x, w, perm, 1e-6, r)
    rtol, atol = TOL["rms_norm"][dtype]
    torch.testing.assert_close(y.double(), ry, rtol=rtol, atol=atol)
    if residual:
        torch.testing.assert_close(got[1], rh, rtol=2 ** -7 if dtype == torch.bfloat16 else 0, atol=0)


@needs_triton
@pytest.mark.parametrize("perm_dtype", [torch.int16, torch.int32, torch.int64])
def test_perm_dtypes_give_the_same_bits(perm_dtype):
    x, w = rand(5, 96, dtype=torch.float16, seed=3), rand(96, dtype=torch.float16, seed=4)
    perm = torch.randperm(96, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    ref = permuted_rms_norm(x, w, perm, backend="triton")
    assert torch.equal(permuted_rms_norm(x, w, perm.to(perm_dtype), backend="triton"), ref)


def test_narrow_permutation_cached_and_invalidated():
    from ria_kernels.ops.rms_norm import narrow_permutation
    perm = torch.randperm(64)
    a = narrow_permutation(perm)
    assert a.dtype == torch.int16 and torch.equal(a.long(), perm)
    assert narrow_permutation(perm) is a                 # converted once
    perm.copy_(perm.flip(0))                             # in-place change: the cache sees the new version
    b = narrow_permutation(perm)
    assert b is not a and torch.equal(b.long(), perm)
    big = torch.arange(40000)
    assert narrow_permutation(big).dtype == torch.int32
    i16 = perm.to(torch.int16)
    assert narrow_permutation(i16) is i16


def test_int16_perm_rejected_above_32768():
    x, w = torch.zeros(1, 32769), torch.ones(32769)
    with pytest.raises(RiaInputError, match="int32/int64 for hidden size 32769"):
        permuted_rms_norm(x, w, torch.zeros(32769, dtype=torch.int16), validate=False)


# ---- issue 20: guard elements around the outputs
@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (2, 1000), (4, 48)])
def test_outputs_guarded(dtype, shape):
    """No store outside ``out`` / ``residual_out`` (guard elements before and after untouched)."""
    x, r = rand(*shape, dtype=dtype, seed=1), rand(*shape, dtype=dtype, seed=2)
    w = rand(shape[-1], dtype=dtype, seed=3)
    perm = torch.randperm(shape[-1], generator=torch.Generator().manual_seed(4)).to(DEVICE)
    out, check_out = guarded(shape, dtype)
    res_out, check_res = guarded(shape, dtype)
    y, h = permuted_rms_norm(x, w, perm, 1e-6, r, backend="triton", out=out, residual_out=res_out)
    check_out()
    check_res()
    ry, rh = permuted_rms_norm_reference(x, w, perm, 1e-6, r)
    rtol, atol = TOL["rms_norm"][dtype]
    torch.testing.assert_close(y.double(), ry.double(), rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- CUDA-graph safety of the narrow cache
def test_narrow_permutation_never_caches_inside_a_capture(monkeypatch):
    """A narrow copy made while a CUDA graph is being captured lives in the graph's pool: it is
    used, never cached for later eager calls. (Capture faked: ``_device.capturing``.)"""
    from ria_kernels import _device
    from ria_kernels.ops import rms_norm as R
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(_device, "capturing", lambda device: True)
    in_graph = R.narrow_permutation(perm)
    assert in_graph.dtype == torch.int16 and torch.equal(in_graph.long(), perm)
    assert not any(hit[0] is perm for hit in R._NARROW_CACHE.values())
    monkeypatch.setattr(_device, "capturing", lambda device: False)
    eager = R.narrow_permutation(perm)
    assert eager is not in_graph and R.narrow_permutation(perm) is eager   # cached from now on


def test_narrow_permutation_pins_what_a_capture_reads(monkeypatch):
    """A cached copy a capture reads stays alive for the process: neither LRU eviction nor an
    in-place change of ``perm`` (a new copy) may free memory a graph replay reads."""
    import gc
    import weakref

    from ria_kernels import _device
    from ria_kernels.ops import rms_norm as R
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    cached = R.narrow_permutation(perm)
    monkeypatch.setattr(_device, "capturing", lambda device: True)
    assert R.narrow_permutation(perm) is cached                          # the capture reuses the copy
    monkeypatch.setattr(_device, "capturing", lambda device: False)
    ref = weakref.ref(cached)
    del cached
    perm[:2] = perm[:2].flip(0)                                          # version bump: a new copy
    assert torch.equal(R.narrow_permutation(perm).long(), perm)
    monkeypatch.setattr(R, "_NARROW_CACHE_SIZE", 0)
    R.narrow_permutation(torch.arange(8))                                # evicts the oldest entry
    gc.collect()
    assert ref() is not None                                             # still held for the graph
