import pytest
import torch

from ria_kernels import RiaInputError
from ria_kernels.ops.prune_fused import fused_prune, fused_prune_reference
from ._util import DTYPES, needs_triton, poisoned, rand


CASES = (
    # every method on an odd row count, fp32, 2:4
    [((7, 48), torch.float32, meth, "2:4") for meth in ("magnitude", "wanda", "ri", "ria")]
    # every dtype and several patterns for RIA, odd and aligned shapes
    + [(shape, dt, "ria", sp) for dt in DTYPES for shape, sp in
       (((1, 16), "1:4"), ((128, 32), "4:8"), ((7, 80), "5:16"), ((9, 24), "3:4"))]
    + [((7, 48), dt, "ria", 0.5) for dt in DTYPES]
)


@needs_triton
@pytest.mark.parametrize("shape,dtype,method,sparsity", CASES)
def test_fused_prune_matches_reference(shape, dtype, method, sparsity):
    seed = hash((shape, str(dtype), method, sparsity)) % 10_000
    w = rand(*shape, dtype=dtype, seed=seed)
    w[:, 0] = 0
    act = rand(shape[1], seed=seed + 1).abs() + 0.01
    out = poisoned(shape, dtype)
    mask_out = poisoned(shape, torch.int8).view(torch.bool) if isinstance(sparsity, str) else None
    got_w, got_m = fused_prune(w, act, method, 0.5, sparsity, backend="triton", out=out, mask_out=mask_out)
    ref_w, ref_m = fused_prune_reference(w, act, method, 0.5, sparsity)
    assert got_w.data_ptr() == out.data_ptr()
    assert torch.equal(got_m, ref_m)
    assert torch.equal(got_w, ref_w)  # pruning only zeroes: exact in every dtype


@needs_triton
@pytest.mark.parametrize("per_output", [False, True])
def test_fused_unstructured_ratio_exact(per_output):
    w = rand(13, 64, seed=5)
    _, mask = fused_prune(w, rand(64, seed=6).abs(), "ria", 0.5, 0.3, per_output, backend="triton")
    if per_output:
        assert bool(((~mask).sum(1) == int(64 * 0.3)).all())
    else:
        assert int((~mask).sum()) == int(13 * 64 * 0.3)


def test_bad_inputs():
    with pytest.raises(RiaInputError, match="not divisible by M=4"):
        fused_prune(rand(4, 10), rand(10).abs(), sparsity="2:4")
    with pytest.raises(RiaInputError, match=r"\[0, 1\)"):
        fused_prune(rand(4, 8), rand(8).abs(), sparsity=1.0)
    with pytest.raises(RiaInputError, match="act_norm must have shape"):
        fused_prune(rand(4, 8), rand(6).abs(), sparsity="2:4")
