import pytest
import torch

from ria_kernels import RiaInputError
from ria_kernels.ops.prune_fused import fused_prune, fused_prune_reference
from ._util import DEVICE, DTYPES, assert_mask_written, guarded, huge_row_view, needs_triton, poisoned, rand

METHODS = ("magnitude", "wanda", "ri", "ria")

CASES = (
    # every method on r = 1, 7, 128, fp32, 2:4 (c = 4k for several k)
    [((r, c), torch.float32, meth, "2:4") for meth in METHODS for r, c in ((1, 16), (7, 48), (128, 8))]
    # every dtype and several patterns (M = 4, 6, 8, 16) for RIA, odd and aligned shapes
    + [(shape, dt, "ria", sp) for dt in DTYPES for shape, sp in
       (((1, 16), "1:4"), ((128, 32), "4:8"), ((7, 80), "5:16"), ((9, 24), "3:4"), ((7, 36), "2:6"))]
    # unstructured, per layer
    + [((7, 48), dt, "ria", 0.5) for dt in DTYPES]
)


def _inputs(shape, dtype, seed):
    w = rand(*shape, dtype=dtype, seed=seed)
    w[:, 0] = 0  # an all-zero column
    if shape[0] > 2:
        w[shape[0] // 2] = 0  # an all-zero row
    act = rand(shape[1], seed=seed + 1).abs() + 0.01
    return w, act


@needs_triton
@pytest.mark.parametrize("shape,dtype,method,sparsity", CASES)
def test_fused_prune_matches_reference(shape, dtype, method, sparsity):
    seed = hash((shape, str(dtype), method, sparsity)) % 10_000
    w, act = _inputs(shape, dtype, seed)
    (out, check_out), (mask_out, check_mask) = guarded(shape, dtype), guarded(shape, torch.bool)
    got_w, got_m = fused_prune(w, act, method, 0.5, sparsity, backend="triton", out=out, mask_out=mask_out)
    check_out()
    check_mask()
    ref_w, ref_m = fused_prune_reference(w, act, method, 0.5, sparsity)
    assert got_w.data_ptr() == out.data_ptr() and got_m.data_ptr() == mask_out.data_ptr()
    assert_mask_written(got_m, ref_m)
    assert torch.equal(got_w, ref_w)  # pruning only zeroes: exact in every dtype (and no NaN left)


@needs_triton
@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_fused_ties_deterministic(method):
    # |W| in {0, 1, 2} and a constant act_norm: most groups tie; lower column index kept
    g = torch.Generator().manual_seed(1)
    w = torch.randint(-2, 3, (7, 32), generator=g).float().to(DEVICE)
    act = torch.full((32,), 0.5, device=DEVICE)
    got_w, got_m = fused_prune(w, act, method, 0.5, "2:4", backend="triton")
    ref_w, ref_m = fused_prune_reference(w, act, method, 0.5, "2:4")
    assert torch.equal(got_m, ref_m) and torch.equal(got_w, ref_w)


@needs_triton
@pytest.mark.parametrize("per_output", [False, True])
@pytest.mark.parametrize("shape", [(1, 64), (13, 64), (128, 10)])
def test_fused_unstructured_exact(per_output, shape):
    w, act = _inputs(shape, torch.float16, shape[0])
    out, mask_out = poisoned(shape, torch.float16), poisoned(shape, torch.bool)
    got_w, got_m = fused_prune(w, act, "ria", 0.5, 0.3, per_output, backend="triton", out=out, mask_out=mask_out)
    ref_w, ref_m = fused_prune_reference(w, act, "ria", 0.5, 0.3, per_output)
    assert_mask_written(got_m, ref_m)
    assert torch.equal(got_w, ref_w)
    if per_output:
        assert bool(((~got_m).sum(1) == int(shape[1] * 0.3)).all())
    else:
        assert int((~got_m).sum()) == int(shape[0] * shape[1] * 0.3)


def test_torch_backend_fills_out():
    w, act = _inputs((7, 16), torch.float32, 0)
    out, mask_out = poisoned((7, 16), torch.float32), poisoned((7, 16), torch.bool)
    got_w, got_m = fused_prune(w, act, "ria", 0.5, "2:4", backend="torch", out=out, mask_out=mask_out)
    ref_w, ref_m = fused_prune_reference(w, act, "ria", 0.5, "2:4")
    assert got_w.data_ptr() == out.data_ptr() and torch.equal(got_w, ref_w)
    assert_mask_written(got_m, ref_m)


@needs_triton
def test_column_strided_weight_rejected_on_triton():
    with pytest.raises(RiaInputError, match="stride"):
        fused_prune(rand(16, 8).t(), rand(16).abs(), "ria", 0.5, "2:4", backend="triton")


def test_bad_inputs():
    with pytest.raises(RiaInputError, match="not divisible by M=4"):
        fused_prune(rand(4, 10), rand(10).abs(), sparsity="2:4")
    with pytest.raises(RiaInputError, match=r"\[0, 1\)"):
        fused_prune(rand(4, 8), rand(8).abs(), sparsity=1.0)
    with pytest.raises(RiaInputError, match="act_norm must have shape"):
        fused_prune(rand(4, 8), rand(6).abs(), sparsity="2:4")
    with pytest.raises(RiaInputError, match="dtype"):
        fused_prune(rand(4, 8).to(torch.int32), rand(8).abs(), sparsity="2:4")
    with pytest.raises(RiaInputError, match="out must be"):
        fused_prune(rand(4, 8), rand(8).abs(), sparsity="2:4", out=torch.empty(4, 4, device=DEVICE))
    with pytest.raises(RiaInputError, match="mask_out must be"):
        fused_prune(rand(4, 8), rand(8).abs(), sparsity="2:4", mask_out=torch.empty(4, 8, device=DEVICE))
    with pytest.raises(RiaInputError, match="pattern like"):
        fused_prune(rand(4, 8), rand(8).abs(), sparsity="2-4")


# ---- custom op: ria_kernels::fused_prune_nm (the N:M path without out=)
@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_custom_op_opcheck_and_compile(backend):
    w, act = _inputs((7, 16), torch.float16, 4)
    torch.library.opcheck(torch.ops.ria_kernels.fused_prune_nm.default, (w, act, "ria", 0.5, 2, 4, backend))
    fn = torch.compile(lambda t, a: fused_prune(t, a, "ria", 0.5, "2:4", backend=backend), fullgraph=True,
                       backend="aot_eager")
    got_w, got_m = fn(w, act)
    ref_w, ref_m = fused_prune_reference(w, act, "ria", 0.5, "2:4")
    assert torch.equal(got_m, ref_m) and torch.equal(got_w, ref_w)


# ---- NaN / inf: bad act_norm is rejected; NaN scores from the weight keep the N:M pattern
@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_issue_repro_inf_act_norm_rejected(backend):
    w = torch.tensor([[0., 1., 2., 3.]], dtype=torch.float16, device=DEVICE)
    act = torch.tensor([float("inf"), 1., 1., 1.], device=DEVICE)
    with pytest.raises(RiaInputError, match="act_norm must be finite"):
        fused_prune(w, act, "wanda", 0.5, "2:4", backend=backend)
    with pytest.raises(RiaInputError, match="act_norm must be >= 0"):
        fused_prune(w, -act.clamp(max=1), "ria", 0.5, "2:4", backend=backend)
    with pytest.raises(RiaInputError, match="act_norm must be finite"):
        fused_prune(w, act, "ria", 0.5, 0.5, backend=backend, out=torch.empty_like(w))


@needs_triton
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("sparsity", ["2:4", "4:8", "8:16"])
def test_nan_inf_weights_keep_pattern(method, sparsity):
    n, m = (int(v) for v in sparsity.split(":"))
    w = rand(5, 4 * m, dtype=torch.float16, seed=m)
    w[0, 1] = float("nan")
    w[1, :m] = float("nan")                    # a whole group of NaN scores
    w[2, 0] = float("inf")                     # inf weight: RI/RIA sums become inf, scores NaN/0
    w[3, :] = torch.where(torch.arange(4 * m, device=DEVICE) % 2 == 0, -0.0, 0.0).half()  # +-0 ties
    act = rand(4 * m, seed=m + 1).abs() + 0.01
    out, mask_out = poisoned(w.shape, torch.float16), poisoned(w.shape, torch.bool)
    got_w, got_m = fused_prune(w, act, method, 0.5, sparsity, backend="triton", out=out, mask_out=mask_out)
    ref_w, ref_m = fused_prune_reference(w, act, method, 0.5, sparsity)
    assert_mask_written(got_m, ref_m)
    assert bool((got_m.reshape(5, 4, m).sum(-1) == m - n).all())
    torch.testing.assert_close(got_w, ref_w, equal_nan=True, rtol=0, atol=0)


@needs_triton
@pytest.mark.parametrize("shape,sparsity", [((1, 4), "2:4"), ((1, 18), "2:6"), ((3, 10), "1:5"), ((1, 48), "8:16")])
def test_single_row_and_odd_widths(shape, sparsity):
    w, act = _inputs(shape, torch.bfloat16, shape[1])
    got_w, got_m = fused_prune(w, act, "ria", 0.5, sparsity, backend="triton")
    ref_w, ref_m = fused_prune_reference(w, act, "ria", 0.5, sparsity)
    assert torch.equal(got_m, ref_m) and torch.equal(got_w, ref_w)


# ---- issue 20 regressions
@needs_triton
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("per_output", [False, True])
def test_nan_weight_unstructured_triton(method, per_output):
    """[[nan, 1.0]] at 50%: the NaN score ranks as -inf and is the one pruned (the Triton
    unstructured path ranks the scores the kernel wrote, NaN included)."""
    w = torch.tensor([[float("nan"), 1.0]], device=DEVICE)
    act = torch.ones(2, device=DEVICE)
    got_w, got_m = fused_prune(w, act, method, 0.5, 0.5, per_output, backend="triton")
    assert torch.equal(got_m, torch.tensor([[False, True]], device=DEVICE))
    assert torch.equal(got_w, torch.tensor([[0.0, 1.0]], device=DEVICE))
    ref_w, ref_m = fused_prune_reference(w, act, method, 0.5, 0.5, per_output)
    assert torch.equal(got_m, ref_m) and torch.equal(got_w, ref_w)


@needs_triton
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("row,sparsity,keep", [([float("nan"), float("nan"), 1.0], "1:3", [True, False, True]),
                                               ([float("nan")] * 6, "3:6", [True] * 3 + [False] * 3)])
def test_nan_weight_with_padding_lanes(method, row, sparsity, keep):
    """NaN scores (-inf) tie with the padding lanes of a non-power-of-two M; the real, lower
    lanes win, so each group keeps exactly M - N real weights."""
    w = torch.tensor([row], device=DEVICE)
    act = torch.ones(len(row), device=DEVICE)
    got_w, got_m = fused_prune(w, act, method, 0.5, sparsity, backend="triton")
    want = torch.tensor([keep], device=DEVICE)
    assert torch.equal(got_m, want)
    ref_w, ref_m = fused_prune_reference(w, act, method, 0.5, sparsity)
    assert torch.equal(ref_m, want)
    torch.testing.assert_close(got_w, ref_w, equal_nan=True, rtol=0, atol=0)


@needs_triton
@pytest.mark.parametrize("sparsity", ["2:4", "1:3", 0.5])
def test_row_strided_weight_view(sparsity):
    big = rand(9, 60, dtype=torch.float16, seed=2)
    view = big[:, 6:54]
    act = rand(48, seed=3).abs() + 0.01
    got_w, got_m = fused_prune(view, act, "ria", 0.5, sparsity, backend="triton")
    ref_w, ref_m = fused_prune_reference(view.contiguous(), act, "ria", 0.5, sparsity)
    assert torch.equal(got_m, ref_m) and torch.equal(got_w, ref_w)


@needs_triton
@pytest.mark.parametrize("method", ["magnitude", "ria"])
@pytest.mark.parametrize("sparsity", ["2:4", "1:3"])
def test_int64_row_offsets(method, sparsity):
    """Row r of W at r * stride(0) >= 2^31 elements: pass 1 and the fused kernel use int64 rows."""
    view = huge_row_view(48, seed=5)
    act = rand(48, seed=6).abs() + 0.01
    got_w, got_m = fused_prune(view, act, method, 0.5, sparsity, backend="triton")
    ref_w, ref_m = fused_prune_reference(view.contiguous(), act, method, 0.5, sparsity)
    assert torch.equal(got_m, ref_m) and torch.equal(got_w, ref_w)


@needs_triton
@pytest.mark.parametrize("sparsity", ["2:4", "1:3", "5:16", 0.5])
@pytest.mark.parametrize("shape", [(1, 48), (7, 144), (33, 96)])
def test_outputs_guarded(sparsity, shape):
    """No store outside ``out`` / ``mask_out`` (guard elements before and after untouched)."""
    w, act = _inputs(shape, torch.float16, shape[0] + shape[1])
    out, check_out = guarded(shape, torch.float16)
    mask_out, check_mask = guarded(shape, torch.bool)
    got_w, got_m = fused_prune(w, act, "ria", 0.5, sparsity, backend="triton", out=out, mask_out=mask_out)
    check_out()
    check_mask()
    ref_w, ref_m = fused_prune_reference(w, act, "ria", 0.5, sparsity)
    assert_mask_written(got_m, ref_m)
    assert torch.equal(got_w, ref_w)
