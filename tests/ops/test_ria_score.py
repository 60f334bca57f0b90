import pytest
import torch

from ria_kernels import RiaInputError, ria_score
from ria_kernels.ops.ria_score import (METHODS, _pruning_score_triton, abs_sums_triton, pruning_score,
                                       pruning_score_reference)
from ._util import DEVICE, DTYPES, TOL, guarded, huge_row_view, needs_triton, poisoned, rand, sm_count


def _reference64(w, act, method, a):
    wd = w.double().abs()
    cs, rs = wd.sum(0, keepdim=True), wd.sum(1, keepdim=True)
    ri = torch.where(cs > 0, wd / cs.clamp_min(1e-300), 0) + torch.where(rs > 0, wd / rs.clamp_min(1e-300), 0)
    return {"magnitude": wd, "wanda": wd * act.double(), "ri": ri, "ria": ri * act.double() ** a}[method]


# every method on r = 1, 7, 128 (fp32); every dtype on odd and aligned shapes (RIA)
CASES = ([((r, c), torch.float32, meth) for meth in METHODS for r, c in ((1, 8), (7, 36), (128, 64))]
         + [(shape, dt, "ria") for dt in DTYPES for shape in ((1, 260), (7, 128), (128, 24), (5, 4))])


@needs_triton
@pytest.mark.parametrize("shape,dtype,method", CASES)
def test_score_kernel_matches_reference(shape, dtype, method):
    seed = hash((shape, str(dtype), method)) % 1000
    w = rand(*shape, dtype=dtype, seed=seed)
    if shape[0] > 1:
        w[shape[0] // 2, :] = 0  # an all-zero row: its 1/row_sum term must be 0, not inf/NaN
    w[:, -1] = 0  # an all-zero column: its 1/col_sum term must be 0
    act = rand(shape[1], seed=seed + 1).abs() + 0.01
    out, check = guarded(shape, torch.float32)
    got = _pruning_score_triton(w, act, method, 0.5, out=out)
    check()
    assert got.data_ptr() == out.data_ptr() and bool(torch.isfinite(got).all())
    rtol, atol = TOL["score_vs_fp64"][dtype]
    torch.testing.assert_close(got.double(), _reference64(w.float(), act.float(), method, 0.5), rtol=rtol, atol=atol)
    rtol, atol = TOL["score_vs_fp32"][dtype]
    torch.testing.assert_close(got, pruning_score_reference(w, act, method, 0.5), rtol=rtol, atol=atol)


@needs_triton
@pytest.mark.parametrize("method", ["ri", "ria"])
def test_all_zero_matrix_scores_zero(method):
    w = torch.zeros(7, 16, device=DEVICE)
    got = _pruning_score_triton(w, torch.ones(16, device=DEVICE), method, 0.5, out=poisoned((7, 16), torch.float32))
    assert torch.equal(got, torch.zeros_like(got))


@needs_triton
@pytest.mark.parametrize("shape", [(1, 5), (7, 300), (300, 20), (513, 3)])
def test_abs_sums_one_pass(shape):
    # several row strips (> 256 rows) and column tiles (> 256 columns), odd tails
    w = rand(*shape, dtype=torch.float16, seed=shape[0])
    w[0] = 0
    rows, cols = abs_sums_triton(w)
    wd = w.double().abs()
    torch.testing.assert_close(rows.double(), wd.sum(1), rtol=1e-6, atol=0)
    torch.testing.assert_close(cols.double(), wd.sum(0), rtol=1e-6, atol=0)
    assert float(rows[0]) == 0.0


@needs_triton
def test_dispatch_forced_triton_equals_torch():
    w, act = rand(9, 16, seed=3), rand(16, seed=4).abs()
    torch.testing.assert_close(pruning_score(w, act, "ria", backend="triton"),
                               pruning_score(w, act, "ria", backend="torch"), rtol=2e-6, atol=0)
    torch.testing.assert_close(ria_score(w, act, 0.3, backend="triton"), ria_score(w, act, 0.3, backend="torch"),
                               rtol=2e-6, atol=0)


@needs_triton
def test_row_strided_view_supported_column_strided_rejected():
    big = rand(8, 40, seed=7)
    act = rand(32, seed=8).abs()
    view = big[:, 4:36]  # stride(0) = 40, stride(1) = 1: the kernels take a row stride
    torch.testing.assert_close(pruning_score(view, act, "ria", backend="triton"),
                               pruning_score_reference(view.contiguous(), act, "ria"), rtol=2e-6, atol=0)
    with pytest.raises(RiaInputError, match="stride"):
        pruning_score(rand(16, 8).t(), rand(16).abs(), "ria", backend="triton")
    with pytest.raises(RiaInputError, match="stride"):
        pruning_score(rand(1, 16)[:, ::2], rand(8).abs(), "ria", backend="triton")


def test_torch_backend_accepts_non_contiguous():
    w = rand(16, 8).t()
    torch.testing.assert_close(pruning_score(w, rand(16).abs(), "ria", backend="torch"),
                               pruning_score_reference(w.contiguous(), rand(16).abs(), "ria"))


def test_bad_inputs():
    w = rand(4, 8)
    with pytest.raises(RiaInputError, match="method must be one of"):
        pruning_score(w, None, "bogus")
    with pytest.raises(RiaInputError, match="needs act_norm"):
        pruning_score(w, None, "wanda")
    with pytest.raises(RiaInputError, match="2-D"):
        pruning_score(w[0], None, "magnitude")
    with pytest.raises(RiaInputError, match="dtype"):
        pruning_score(w.to(torch.int32), None, "magnitude")
    with pytest.raises(RiaInputError, match=r"act_norm must have shape \[in_features=8\]"):
        pruning_score(w, rand(7).abs(), "ria")
    with pytest.raises(RiaInputError, match="backend must be one of"):
        pruning_score(w, None, "magnitude", backend="cuda")


# ---- act_norm must be finite and >= 0 in every public entry that takes it
@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("bad,match", [(-1.0, ">= 0"), (float("nan"), "finite"), (float("inf"), "finite")])
def test_bad_act_norm_raises(backend, bad, match):
    w = rand(4, 8, seed=1)
    act = rand(8, seed=2).abs()
    act[3] = bad
    with pytest.raises(RiaInputError, match=f"act_norm must be {match}"):
        ria_score(w, act, backend=backend)
    for method in ("wanda", "ria"):
        with pytest.raises(RiaInputError, match="act_norm"):
            pruning_score(w, act, method, backend=backend)
    with pytest.raises(RiaInputError, match="act_norm must be >= 0"):
        ria_score(w, -torch.rand(8, device=DEVICE), backend=backend)  # the issue's repro


def test_zero_act_norm_is_valid():
    w = rand(4, 8, seed=1)
    got = ria_score(w, torch.zeros(8, device=DEVICE), backend="torch")
    assert torch.equal(got, torch.zeros_like(got))


# ---- issue 20 regressions
@needs_triton
@pytest.mark.parametrize("rows,sms", [(33, 132), (48, 132), (65, 132), (80, 132), (96, 132), (100, 132), (192, 132),
                                      (200, 132), (100, 108), (192, 114), (48, 1)])
def test_issue20_pass1_strips_do_not_overlap(rows, sms):
    """W 33x128 scored every element wrong (rows-per-program of pass 1 halved to 24, not a
    multiple of BLOCK_R: strips overlapped and column sums counted rows twice)."""
    w = torch.randn(rows, 128, generator=torch.Generator().manual_seed(rows)).to(DEVICE)
    act = torch.rand(128, generator=torch.Generator().manual_seed(1)).to(DEVICE) + 0.05
    out, check = guarded((rows, 128), torch.float32)
    with sm_count(sms):
        got = _pruning_score_triton(w, act, "ria", 0.5, out=out)
        cols = abs_sums_triton(w)[1]
    check()
    torch.testing.assert_close(cols.double(), w.double().abs().sum(0), rtol=1e-6, atol=0)
    rtol, atol = TOL["score_vs_fp64"][torch.float32]
    torch.testing.assert_close(got.double(), _reference64(w, act, "ria", 0.5), rtol=rtol, atol=atol)
    torch.testing.assert_close(ria_score(w, act, backend="triton"), ria_score(w, act, backend="torch"),
                               rtol=2e-6, atol=0)


@needs_triton
@pytest.mark.parametrize("method", METHODS)
def test_int64_row_offsets(method):
    """Row r of W at r * stride(0) >= 2^31 elements: the kernels' row offsets are int64."""
    view = huge_row_view(40, seed=3)
    act = rand(40, seed=4).abs() + 0.01
    got = _pruning_score_triton(view, act, method, 0.5)
    torch.testing.assert_close(got, pruning_score_reference(view.contiguous(), act, method, 0.5), rtol=2e-6, atol=0)


@needs_triton
@pytest.mark.parametrize("method", METHODS)
def test_outputs_guarded(method):
    """No store outside the score matrix (guard elements before and after it untouched)."""
    for shape in ((1, 1), (7, 129), (33, 300)):
        w, act = rand(*shape, seed=shape[1]), rand(shape[1], seed=1).abs()
        out, check = guarded(shape, torch.float32)
        got = _pruning_score_triton(w, act, method, 0.5, out=out)
        check()
        torch.testing.assert_close(got, pruning_score_reference(w, act, method, 0.5), rtol=2e-6, atol=0)
