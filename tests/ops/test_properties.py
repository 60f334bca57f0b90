"""Property tests (hypothesis) of every Triton op against its torch reference.

Random shapes (1, odd, prime, non-power-of-two multiples of 16, up to a few hundred), every
dtype, row-strided (non-contiguous) inputs where the Triton API takes them, NaN / +-inf / -0.0
and exact ties where meaningful, and an SM count drawn from the GPUs the launch configs are
sized for (``sm_count``), so the interpreter runs the configs a GPU would. Outputs are
poisoned and surrounded by guard elements (``guarded``).

Profiles (tests/conftest.py): ``ci`` (default, a few examples per test) and
``HYPOTHESIS_PROFILE=deep`` for a long local run. A failure prints the reproducing blob.
"""
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, note  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ria_kernels.ops.nm_mask import nm_mask, nm_mask_reference, unstructured_mask, unstructured_mask_reference  # noqa: E402
from ria_kernels.ops.prune_fused import fused_prune, fused_prune_reference  # noqa: E402
from ria_kernels.ops.ria_score import METHODS, _pruning_score_triton, pruning_score_reference  # noqa: E402
from ria_kernels.ops.rms_norm import permuted_rms_norm, permuted_rms_norm_reference  # noqa: E402
from ria_kernels.permutation import _lsa_gain_triton, lsa_gain_reference  # noqa: E402

from ._util import DEVICE, DTYPES, TOL, assert_mask_written, guarded, needs_triton, nm_topk_guarded, sm_count  # noqa: E402

pytestmark = needs_triton

SMS = (1, 16, 78, 108, 114, 132, 144)
# 1, odd, primes, and the row counts that broke pass 1 (48, 80, 96, 100, 192, 200), multiples of 16
SPECIAL_DIMS = (1, 2, 3, 5, 7, 13, 17, 31, 33, 48, 65, 80, 96, 100, 127, 144, 192, 200, 257)
NM = ((1, 2), (1, 3), (2, 4), (1, 4), (3, 4), (2, 5), (2, 6), (3, 6), (4, 8), (3, 7), (1, 9), (6, 12), (5, 16),
      (8, 16))
SPECIALS = (float("nan"), float("inf"), float("-inf"), -0.0, 0.0)


def dims(lo=1, hi=260):
    return st.one_of(st.sampled_from([d for d in SPECIAL_DIMS if lo <= d <= hi]), st.integers(lo, hi))


@st.composite
def matrices(draw, r, c, dtype, specials=SPECIALS, strided=True):
    """[r, c] tensor of ``dtype``: randn values, or (ties) multiples of 0.5 in [-3, 3] whose sums
    are exact in float32 in any order; a few entries set to ``specials``; optionally an all-zero
    row and column; optionally a column slice of a wider buffer (row stride > c)."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    w = torch.randn(r, c, generator=g)
    if draw(st.booleans()):
        w = (w * 2).round().clamp(-6, 6) / 2  # ties
    if specials:
        for _ in range(draw(st.integers(0, 4))):
            w[draw(st.integers(0, r - 1)), draw(st.integers(0, c - 1))] = draw(st.sampled_from(specials))
    if draw(st.booleans()):
        w[draw(st.integers(0, r - 1))] = 0.0
        w[:, draw(st.integers(0, c - 1))] = 0.0
    w = w.to(dtype)
    if strided and draw(st.booleans()):
        pad, off = draw(st.integers(1, 9)), draw(st.integers(0, 9))
        buf = torch.full((r, c + pad + off), float("nan"), dtype=dtype)
        buf[:, off:off + c] = w
        w = buf[:, off:off + c]
        assert w.stride(0) > c or r == 1
    note(f"matrix {r}x{c} {dtype} strides {w.stride()}")
    return w.to(DEVICE)


def act_norms(draw, c):
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    act = torch.rand(c, generator=g) + 0.01
    if draw(st.booleans()):
        act[draw(st.integers(0, c - 1))] = 0.0  # a zero norm is valid
    return act.to(DEVICE)


@given(data=st.data(), r=dims(), c=dims(), dtype=st.sampled_from(DTYPES), method=st.sampled_from(METHODS),
       a=st.sampled_from([0.5, 0.0, 1.0, 0.25]), sms=st.sampled_from(SMS))
def test_pruning_score(data, r, c, dtype, method, a, sms):
    w = data.draw(matrices(r, c, dtype))
    act = act_norms(data.draw, c)
    out, check = guarded((r, c), torch.float32)
    with sm_count(sms):
        got = _pruning_score_triton(w, act, method, a, out=out)
    check()
    ref = pruning_score_reference(w, act, method, a)
    # only the summation order of |W| differs (TOL["score_vs_fp32"]); NaN where the reference has NaN
    rtol, atol = TOL["score_vs_fp32"][dtype]
    torch.testing.assert_close(got, ref, rtol=rtol, atol=atol, equal_nan=True)


@given(data=st.data(), r=dims(hi=130), g=dims(hi=40), nm=st.sampled_from(NM), dtype=st.sampled_from(DTYPES))
def test_nm_topk(data, r, g, nm, dtype):
    n, m = nm
    s = data.draw(matrices(r, g * m, dtype))
    mask, sums, ref_sums = nm_topk_guarded(s, n, m)
    assert bool((mask.reshape(r, g, m).sum(-1) == m - n).all())
    rtol, atol = TOL["block_sum"][dtype]
    torch.testing.assert_close(sums, ref_sums, rtol=rtol, atol=atol, equal_nan=True)
    assert torch.equal(nm_mask(s, n, m, backend="triton"), nm_mask_reference(s, n, m))


@given(data=st.data(), r=dims(hi=100), c=dims(hi=200), dtype=st.sampled_from(DTYPES),
       ratio=st.one_of(st.sampled_from([0.0, 0.5, 0.9]), st.floats(0.0, 0.99)), per_output=st.booleans())
def test_unstructured_mask(data, r, c, dtype, ratio, per_output):
    s = data.draw(matrices(r, c, dtype))
    assert torch.equal(unstructured_mask(s, ratio, per_output, backend="triton"),
                       unstructured_mask_reference(s, ratio, per_output))


@given(data=st.data(), r=dims(hi=130), g=dims(hi=30), nm=st.sampled_from(NM), dtype=st.sampled_from(DTYPES),
       method=st.sampled_from(METHODS), sms=st.sampled_from(SMS))
def test_fused_prune_nm(data, r, g, nm, dtype, method, sms):
    n, m = nm
    w = data.draw(matrices(r, g * m, dtype))
    act = act_norms(data.draw, g * m)
    out, check_out = guarded((r, g * m), dtype)
    mask_out, check_mask = guarded((r, g * m), torch.bool)
    with sm_count(sms):
        got_w, got_m = fused_prune(w, act, method, 0.5, f"{n}:{m}", backend="triton", out=out, mask_out=mask_out)
    check_out()
    check_mask()
    ref_w, ref_m = fused_prune_reference(w, act, method, 0.5, f"{n}:{m}")
    assert_mask_written(got_m, ref_m)
    torch.testing.assert_close(got_w, ref_w, rtol=0, atol=0, equal_nan=True)  # pruning only zeroes: exact


@given(data=st.data(), r=dims(hi=100), c=dims(hi=200), dtype=st.sampled_from(DTYPES),
       method=st.sampled_from(METHODS), ratio=st.sampled_from([0.25, 0.5, 0.7]), per_output=st.booleans(),
       sms=st.sampled_from(SMS))
def test_fused_prune_unstructured(data, r, c, dtype, method, ratio, per_output, sms):
    w = data.draw(matrices(r, c, dtype))
    act = act_norms(data.draw, c)
    with sm_count(sms):
        got_w, got_m = fused_prune(w, act, method, 0.5, ratio, per_output, backend="triton")
    ref_w, ref_m = fused_prune_reference(w, act, method, 0.5, ratio, per_output)
    assert torch.equal(got_m, ref_m)
    torch.testing.assert_close(got_w, ref_w, rtol=0, atol=0, equal_nan=True)


@given(data=st.data(), tokens=st.integers(1, 5), h=st.one_of(dims(), st.sampled_from([1000, 1024, 4097])),
       dtype=st.sampled_from(DTYPES), permute=st.booleans(), residual=st.booleans(), weight_permuted=st.booleans())
def test_permuted_rms_norm(data, tokens, h, dtype, permute, residual, weight_permuted):
    x = data.draw(matrices(tokens, h, dtype, strided=False))  # the Triton path takes contiguous rows only
    res = data.draw(matrices(tokens, h, dtype, specials=(-0.0,), strided=False)) if residual else None
    w = data.draw(matrices(1, h, dtype, specials=(-0.0, 0.0), strided=False))[0]
    perm = None
    if permute:
        perm = torch.randperm(h, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 999)))).to(DEVICE)
        perm = perm.to(data.draw(st.sampled_from([torch.int16, torch.int32, torch.int64])))
    w_arg = w[perm.long()] if (perm is not None and weight_permuted) else w
    out, check_out = guarded((tokens, h), dtype)
    res_out, check_res = guarded((tokens, h), dtype) if residual else (None, lambda: None)
    got = permuted_rms_norm(x, w_arg, perm, 1e-6, res, backend="triton", weight_permuted=weight_permuted,
                            out=out, residual_out=res_out)
    check_out()
    check_res()
    ref = permuted_rms_norm_reference(x, w, perm, 1e-6, res)
    y, ry = (got[0], ref[0]) if residual else (got, ref)
    rtol, atol = TOL["rms_norm"][dtype]
    torch.testing.assert_close(y.float(), ry.float(), rtol=rtol, atol=atol, equal_nan=True)
    if residual:
        # h = x + residual; the CPU interpreter rounds fp32 -> bf16 towards zero (1 bf16 ulp)
        tol = 2 ** -7 if (dtype == torch.bfloat16 and DEVICE == "cpu") else 0
        torch.testing.assert_close(got[1], ref[1], rtol=tol, atol=0, equal_nan=True)


@given(data=st.data(), r=dims(hi=70), j=dims(hi=70), b=dims(hi=70), dtype=st.sampled_from(DTYPES))
def test_lsa_gain(data, r, j, b, dtype):
    x = data.draw(matrices(r, j, dtype, specials=(-0.0, 0.0)))
    t = data.draw(matrices(r, b, dtype, specials=(-0.0, 0.0)))
    got = _lsa_gain_triton(x, t)
    ref = lsa_gain_reference(x, t)
    # float32 accumulation of r non-negative terms vs float64: relative to the sum itself
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
