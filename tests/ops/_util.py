"""Helpers for kernel tests: where Triton can run, per-dtype tolerances, poisoning, guard
elements around outputs, an SM-count override."""
import contextlib
import importlib
import os

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON_OK = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
needs_triton = pytest.mark.skipif(not TRITON_OK, reason="Triton needs CUDA or TRITON_INTERPRET=1")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (rtol, atol) of a kernel output vs its reference, per op and *input* dtype.
TOL = {
    # Scores are computed in float32 from exactly up-cast inputs, so the bound does not
    # depend on the input dtype; vs float64 it covers float32 rounding of sums/products.
    "score_vs_fp64": {dt: (1e-5, 1e-7) for dt in DTYPES},
    # vs the float32 torch reference: only the summation order of |W| differs.
    "score_vs_fp32": {dt: (2e-6, 0.0) for dt in DTYPES},
    # retained score per N:M group: float32 sum of <= 16 exactly loaded values.
    "block_sum": {dt: (1e-6, 1e-6) for dt in DTYPES},
    # RMSNorm output is rounded to the input dtype: ~1-2 ulp of that dtype vs float64.
    "rms_norm": {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)},
}
# Masks, pruned weights and the returned residual are compared exactly (torch.equal).


def rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype).to(DEVICE)


def poisoned(shape, dtype):
    """An output buffer no kernel result can be mistaken for: NaN for floats; for
    bool/int8 every byte is -7 (neither 0 nor 1), see ``mask_bytes_written``."""
    if dtype == torch.bool:
        return torch.full(shape, -7, dtype=torch.int8, device=DEVICE).view(torch.bool)
    t = torch.empty(shape, dtype=dtype, device=DEVICE)
    if dtype.is_floating_point:
        t.fill_(float("nan"))
    else:
        t.fill_(-7)
    return t


def assert_mask_written(mask: torch.Tensor, ref: torch.Tensor) -> None:
    """Every byte of a (poisoned) bool mask was written with exactly 0 or 1 and equals ``ref``."""
    assert torch.equal(mask.view(torch.int8).cpu(), ref.to(torch.int8).cpu())


# --------------------------------------------------------------------------- SM-count override
# Launch configs that depend on the device's SM count (ops/ria_score.py pass 1; sparse24_mm's split-K)
# read it through these module functions; the CPU interpreter would always see one default.
_SM_COUNT_HOOKS = (("ria_kernels.ops.ria_score", "_sm_count"), ("ria_kernels.ops.sparse24_mm", "_num_sms"))


@contextlib.contextmanager
def sm_count(n: int):
    """Run the launchers as if the device had ``n`` SMs (so a GPU's configs run in the interpreter)."""
    saved = []
    for mod_name, attr in _SM_COUNT_HOOKS:
        mod = importlib.import_module(mod_name)
        if hasattr(mod, attr):
            saved.append((mod, attr, getattr(mod, attr)))
            setattr(mod, attr, lambda device, _n=n: _n)
    try:
        yield
    finally:
        for mod, attr, fn in saved:
            setattr(mod, attr, fn)


# --------------------------------------------------------------------------- guard elements
GUARD = 67  # elements before and after an output: odd, so a store off by a tile still lands in it


def _sentinel_fill(t: torch.Tensor) -> torch.Tensor:
    return t.fill_(float("nan") if t.dtype.is_floating_point else -7)


def guarded(shape, dtype, guard: int = GUARD):
    """An output buffer (poisoned like ``poisoned``) inside a larger allocation whose ``guard``
    elements before and after it hold a sentinel (NaN; -7 bytes for bool). Returns ``(out, check)``:
    ``out`` is a contiguous view, ``check()`` asserts that no guard element was written."""
    numel = 1
    for s in shape:
        numel *= s
    base_dtype = torch.int8 if dtype == torch.bool else dtype
    buf = _sentinel_fill(torch.empty(numel + 2 * guard, dtype=base_dtype, device=DEVICE))
    out = buf[guard:guard + numel].view(shape)
    if dtype == torch.bool:
        out = out.view(torch.bool)
    want = _sentinel_fill(torch.empty(guard, dtype=base_dtype, device=DEVICE))

    def check() -> None:
        for name, part in (("before", buf[:guard]), ("after", buf[guard + numel:])):
            same = torch.isnan(part) if base_dtype.is_floating_point else part == want
            assert bool(same.all()), f"{int((~same).sum())} guard elements {name} the output were written"
    return out, check


# --------------------------------------------------------------------------- int64 row offsets
# A row stride that fits int32 but whose row offsets do not: S = 2^31 - 2^20, row 2 starts at
# 2S = 2^32 - 2^21. Done in int32, that offset wraps to -2^21; the view starts 2^21 elements
# into its storage, so the wrapped address is element 0 (a zero page) and a missing int64 cast
# reads zeros there instead of crashing. The 8 GiB fp16 storage is only reserved, never
# touched, except for the pages of the three rows (the kernels read the view in place).
HUGE_STRIDE = 2**31 - 2**20
HUGE_OFFSET = 2**21


def huge_row_view(cols: int, seed: int = 0, dtype=torch.float16) -> torch.Tensor:
    """A 3 x ``cols`` view with row stride HUGE_STRIDE over a lazily allocated storage, rows
    filled with randn values (none zero). Skips the test where the address space is refused."""
    rows = 3
    try:
        storage = torch.empty(HUGE_OFFSET + (rows - 1) * HUGE_STRIDE + cols, dtype=dtype, device=DEVICE)
    except (RuntimeError, MemoryError) as exc:  # pragma: no cover - depends on the machine's overcommit
        pytest.skip(f"cannot reserve 8 GiB of address space: {exc}")
    view = storage.as_strided((rows, cols), (HUGE_STRIDE, 1), HUGE_OFFSET)
    g = torch.Generator().manual_seed(seed)
    vals = torch.randn(rows, cols, generator=g)
    view.copy_((vals + vals.sign() * 0.1).to(dtype))  # |value| >= 0.1: a zero read shows
    return view


def nm_topk_guarded(s: torch.Tensor, n: int, m: int):
    """``_nm_topk_triton(s, n, m)`` into guarded outputs: asserts nothing was written outside them, that
    they are the buffers returned, and that the mask matches ``nm_topk_blocks_reference`` on every
    element. Returns ``(mask, sums, ref_sums)`` for the caller's own checks."""
    from ria_kernels.ops.nm_mask import _nm_topk_triton, nm_topk_blocks_reference
    r, c = s.shape
    (mask_out, check_mask), (sums_out, check_sums) = guarded((r, c), torch.bool), guarded((r, c // m), torch.float32)
    mask, sums = _nm_topk_triton(s, n, m, mask_out=mask_out, sums_out=sums_out)
    check_mask()
    check_sums()  # no store past the (small) sums buffer
    assert mask.data_ptr() == mask_out.data_ptr() and sums.data_ptr() == sums_out.data_ptr()
    ref_mask, ref_sums = nm_topk_blocks_reference(s, n, m)
    assert_mask_written(mask, ref_mask)
    return mask, sums, ref_sums
