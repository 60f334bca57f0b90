import pytest
import torch

from ria_kernels import RiaInputError
from ria_kernels.ops.ria_score import METHODS, _pruning_score_triton, pruning_score, pruning_score_reference
from ._util import DEVICE, DTYPES, TOL, needs_triton, poisoned, rand


def _reference64(w, act, method, a):
    wd = w.double().abs()
    cs, rs = wd.sum(0, keepdim=True), wd.sum(1, keepdim=True)
    ri = torch.where(cs > 0, wd / cs.clamp_min(1e-300), 0) + torch.where(rs > 0, wd / rs.clamp_min(1e-300), 0)
    return {"magnitude": wd, "wanda": wd * act.double(), "ri": ri, "ria": ri * act.double() ** a}[method]


CASES = ([((7, 36), torch.float32, meth) for meth in METHODS]
         + [(shape, dt, "ria") for dt in DTYPES for shape in ((1, 8), (128, 64), (5, 260))])


@needs_triton
@pytest.mark.parametrize("shape,dtype,method", CASES)
def test_score_kernel_matches_reference(shape, dtype, method):
    seed = hash((shape, str(dtype), method)) % 1000
    w = rand(*shape, dtype=dtype, seed=seed)
    w[0, :] = 0  # an all-zero row
    w[:, -1] = 0  # an all-zero column
    act = rand(shape[1], seed=seed + 1).abs() + 0.01
    out = poisoned(shape, torch.float32)
    got = _pruning_score_triton(w, act, method, 0.5, out=out)
    assert got.data_ptr() == out.data_ptr() and torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), _reference64(w.float(), act.float(), method, 0.5), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got, pruning_score_reference(w, act, method, 0.5), rtol=1e-6, atol=0)


@needs_triton
def test_dispatch_forced_triton_equals_torch():
    w, act = rand(9, 16, seed=3), rand(16, seed=4).abs()
    torch.testing.assert_close(pruning_score(w, act, "ria", backend="triton"),
                               pruning_score(w, act, "ria", backend="torch"), rtol=1e-6, atol=0)


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
