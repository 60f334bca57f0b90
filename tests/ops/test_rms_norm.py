import pytest
import torch

from ria_kernels import RiaInputError, permuted_rms_norm
from ria_kernels.ops.rms_norm import permuted_rms_norm_reference
from ._util import DEVICE, DTYPES, TOL, needs_triton, poisoned, rand


def _ref64(x, w, perm, eps, res):
    h = x.double() + (res.double() if res is not None else 0)
    y = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * w.double()
    return (y if perm is None else y[..., perm]), h


CASES = ([((7, 64), dt, p, r) for dt in DTYPES for p in (False, True) for r in (False, True)]
         + [((1, 8), torch.float32, True, True), ((2, 3, 96), torch.bfloat16, True, False),
            ((5, 1000), torch.float16, True, True)])


@needs_triton
@pytest.mark.parametrize("shape,dtype,permute,residual", CASES)
def test_kernel_matches_reference(shape, dtype, permute, residual):
    seed = hash((shape, str(dtype), permute, residual)) % 10_000
    x = rand(*shape, dtype=dtype, seed=seed)
    w = rand(shape[-1], dtype=dtype, seed=seed + 1)
    r = rand(*shape, dtype=dtype, seed=seed + 2) if residual else None
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(shape[-1], generator=g).to(DEVICE) if permute else None
    out = poisoned(shape, dtype)
    got = permuted_rms_norm(x, w, perm, 1e-6, r, backend="triton", out=out)
    y, h = (got if residual else (got, None))
    assert y.data_ptr() == out.data_ptr()
    ry, rh = _ref64(x, w, perm.cpu() if permute else None, 1e-6, r)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(y.double().cpu(), ry.cpu(), rtol=rtol, atol=atol * 10)
    if residual:
        torch.testing.assert_close(h.double().cpu(), rh.cpu(), rtol=rtol, atol=atol)


@needs_triton
def test_permuted_weight_cached_form():
    x, w = rand(4, 32, seed=1), rand(32, seed=2)
    perm = torch.randperm(32).to(DEVICE)
    a = permuted_rms_norm(x, w, perm, backend="triton")
    b = permuted_rms_norm(x, w[perm], perm, backend="triton", weight_permuted=True, validate=False)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, permuted_rms_norm_reference(x, w, perm), rtol=1e-5, atol=1e-6)


def test_bad_inputs():
    x, w = rand(4, 8), rand(8)
    with pytest.raises(RiaInputError, match="not a permutation"):
        permuted_rms_norm(x, w, torch.tensor([0, 0, 1, 2, 3, 4, 5, 6], device=x.device))
    with pytest.raises(RiaInputError, match="outside"):
        permuted_rms_norm(x, w, torch.arange(1, 9, device=x.device))
    with pytest.raises(RiaInputError, match="weight must have shape"):
        permuted_rms_norm(x, rand(7))
    with pytest.raises(RiaInputError, match="dtype"):
        permuted_rms_norm(x.double(), w)
    with pytest.raises(RiaInputError, match="residual shape"):
        permuted_rms_norm(x, w, residual=rand(4, 7))


@needs_triton
def test_non_contiguous_rejected():
    x = rand(8, 16).t()
    with pytest.raises(RiaInputError, match="contiguous"):
        permuted_rms_norm(x, rand(8), backend="triton")
