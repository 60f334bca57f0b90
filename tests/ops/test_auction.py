"""ops/auction.py: the batched Triton auction vs its torch reference (same assignment and prices,
bit for bit) and vs scipy's exact optimum (integer gains: the same total; float gains: within
the documented bound n * eps_final, and within the measured duality gap). Runs under
TRITON_INTERPRET=1 on the CPU: problems are kept small (the interpreter runs each bidding
iteration as numpy ops). Launch config and eps schedule tested as pure functions."""
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment as scipy_lsa

from ria_kernels import _backend
from ria_kernels._errors import BackendUnavailableError, RiaInputError
from ria_kernels.ops import auction as A
from ria_kernels.ops._grid import MAX_GRID_X
from ria_kernels.ops.auction import (auction_batched, auction_batched_reference, auction_launch_config,
                                     duality_gap, eps_schedule)
from ria_kernels.permutation import lsa_gain_reference

from ._util import DEVICE, needs_triton

KINDS = ("int", "ties", "float32", "float64", "heavy")


def make_gains(kind: str, b: int, n: int, seed: int) -> torch.Tensor:
    """[b, n, n] problems: random integers, tie-heavy {0, 1, 2}, uniform floats, or the
    heavy-tailed structured gains of a permutation round (``lsa_gain_reference`` of candidate
    vs threshold columns of a log-normal score, as the 2:4 search builds them)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "int":
        return torch.randint(-50, 50, (b, n, n), generator=g).double()
    if kind == "ties":
        return torch.randint(0, 3, (b, n, n), generator=g).float()
    if kind == "float32":
        return torch.rand(b, n, n, generator=g) * 10
    if kind == "float64":
        return torch.rand(b, n, n, generator=g, dtype=torch.float64) * 100 - 20
    if kind == "heavy":
        out = []
        for _ in range(b):
            score = torch.exp(2.0 * torch.randn(3 * n, 2 * n, generator=g, dtype=torch.float64))
            out.append(lsa_gain_reference(score[:, :n], score[:, n:]))
        return torch.stack(out)
    raise AssertionError(kind)


def _optimum(a: torch.Tensor) -> float:
    r, c = scipy_lsa(a.double().numpy(), maximize=True)
    return float(a.double().numpy()[r, c].sum())


def _check_result(gains: torch.Tensor, res) -> None:
    """Each problem: cols a permutation, total within the a-priori bound and the measured gap of
    scipy's optimum; integer problems exactly optimal."""
    b, n, _ = gains.shape
    assert res.cols.shape == (b, n) and res.cols.dtype == torch.long
    for i in range(b):
        a = gains[i].double().cpu()
        cols = res.cols[i].cpu()
        assert torch.equal(torch.sort(cols).values, torch.arange(n)), f"problem {i}: not a permutation"
        total = float(a[torch.arange(n), cols].sum())
        opt = _optimum(a)
        tol = 1e-9 * max(abs(opt), 1.0)
        assert total <= opt + tol
        assert total >= opt - float(res.bound[i]) - tol, (i, total, opt, float(res.bound[i]))
        assert total >= opt - float(res.gap[i]) - tol  # the certificate holds
        assert float(res.gap[i]) <= float(res.bound[i]) * (1 + 1e-6) + tol  # eps-CS: gap <= n * eps
        if bool((a == a.round()).all()):
            assert total == opt


# --------------------------------------------------------------------------- pure functions
def test_launch_config_pure():
    ns = list(range(1, 600)) + [1000, 1024, 2047, 2048, 4096, 7168, 8192, 28672 // 4]
    for n in ns:
        for batch in (1, 5, 64, MAX_GRID_X):
            br, bc, warps, maxnreg, grid = auction_launch_config(n, batch)
            p = 1 << max(n - 1, 0).bit_length()
            for v in (br, bc, warps):
                assert v & (v - 1) == 0 and v >= 1       # tl.arange needs powers of two
            assert bc <= p and br <= p                   # no chunk / bidder block wholly masked
            assert br <= 16 and bc <= 128                # register budget of the [BLOCK_R, BLOCK_C] f64 tile
            assert br * bc // (32 * warps) <= 16         # <= 16 doubles per thread
            assert maxnreg * 32 * warps <= 65536 and maxnreg <= 255
            assert grid == (batch,) and 1 <= grid[0] <= MAX_GRID_X
    with pytest.raises(RiaInputError):
        auction_launch_config(0, 1)
    with pytest.raises(RiaInputError):
        auction_launch_config(5, 0)


@pytest.mark.parametrize("n", [2, 3, 17, 64, 257, 2048])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 37.0, 1e6])
@pytest.mark.parametrize("integer", [False, True])
def test_eps_schedule_pure(n, scale, integer):
    s = eps_schedule(scale, n, integer)
    final = 1e-6 * scale / n
    if integer:
        final = min(final, 1.0 / (n + 1))
    assert s[-1] == final
    assert s[0] == max(0.05 * scale, final)
    assert all(x > y for x, y in zip(s, s[1:]))       # strictly decreasing
    assert all(y == max(x / 4, final) for x, y in zip(s, s[1:]))
    # the number of phases is the log4 of the eps range, plus the first
    assert len(s) == 1 + max(0, math.ceil(math.log(s[0] / final, 4) - 1e-12))
    assert eps_schedule(scale, n, integer, eps=0.5)[-1] == 0.5


def test_eps_schedule_trivial():
    assert eps_schedule(0.0, 10, True) == []
    assert eps_schedule(5.0, 1, False) == []
    assert eps_schedule(5.0, 0, False) == []


def test_duality_gap_certificate():
    a = make_gains("float64", 2, 9, 1)
    cols = torch.stack([torch.as_tensor(scipy_lsa(a[i].numpy(), maximize=True)[1]) for i in range(2)])
    # any prices give an upper bound on the optimum: the gap at the optimum is >= 0 for zero prices
    gap0 = duality_gap(a, cols, torch.zeros(2, 9, dtype=torch.float64))
    want = a.amax(2).sum(1) - a.gather(2, cols[:, :, None]).squeeze(2).sum(1)
    assert torch.allclose(gap0, want, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- reference
@pytest.mark.parametrize("kind", KINDS)
def test_reference_vs_scipy(kind):
    gains = make_gains(kind, 3, 23, seed=10 + KINDS.index(kind))
    _check_result(gains, auction_batched_reference(gains))


# --------------------------------------------------------------------------- Triton kernel
@needs_triton
@pytest.mark.parametrize("kind,b,n", [("int", 1, 2), ("int", 2, 5), ("ties", 3, 11), ("float32", 2, 13),
                                      ("float64", 1, 31), ("heavy", 2, 19), ("int", 5, 7)])
def test_triton_matches_reference_bitwise(kind, b, n):
    gains = make_gains(kind, b, n, seed=100 * n + b).to(DEVICE)
    got = auction_batched(gains, backend="triton")
    ref = auction_batched_reference(gains.cpu())
    assert torch.equal(got.cols.cpu(), ref.cols)
    assert torch.equal(got.prices.cpu(), ref.prices)   # same IEEE operations, same order
    assert torch.equal(got.iterations, ref.iterations)
    assert got.phases == ref.phases and got.launches >= got.phases
    _check_result(gains.cpu(), got)


@needs_triton
@pytest.mark.parametrize("kind,n", [("int", 61), ("heavy", 37), ("ties", 64)])
def test_triton_vs_scipy_larger(kind, n):
    """Several bidder blocks and column chunks (n > BLOCK_R; 61 and 37 prime, 64 a power of 2)."""
    gains = make_gains(kind, 1, n, seed=7 * n).to(DEVICE)
    _check_result(gains.cpu(), auction_batched(gains, backend="triton"))


@needs_triton
def test_triton_relaunch_continues():
    """max_iters caps each launch; the host re-launches and the kernel continues from the state
    in memory: the same assignment and prices as one long launch, in more launches."""
    gains = make_gains("int", 2, 11, seed=5).to(DEVICE)
    once = auction_batched(gains, backend="triton")
    capped = auction_batched(gains, backend="triton", max_iters=3)
    assert torch.equal(once.cols, capped.cols) and torch.equal(once.prices, capped.prices)
    assert torch.equal(once.iterations, capped.iterations)
    assert capped.launches > once.launches


@needs_triton
def test_triton_dtypes_and_trivial_problems():
    # int, float16 and bool-free inputs are widened exactly; a constant problem and n == 1
    g = torch.randint(0, 9, (3, 6, 6), generator=torch.Generator().manual_seed(2))
    g[1] = 4  # constant: every assignment is optimal, identity returned
    res = auction_batched(g.to(DEVICE), backend="triton")
    _check_result(g, res)
    assert torch.equal(res.cols[1].cpu(), torch.arange(6))
    assert float(res.bound[1]) == 0.0
    half = auction_batched(g.half().to(DEVICE), backend="triton")
    assert torch.equal(half.cols, res.cols)
    one = auction_batched(torch.full((2, 1, 1), 3.0, device=DEVICE), backend="triton")
    assert one.cols.tolist() == [[0], [0]]
    empty = auction_batched(torch.empty(0, 4, 4, device=DEVICE), backend="triton")
    assert empty.cols.shape == (0, 4)
    empty = auction_batched(torch.empty(3, 0, 0, device=DEVICE), backend="triton")
    assert empty.cols.shape == (3, 0)


@needs_triton
def test_triton_eps_override_bound():
    gains = make_gains("float64", 2, 9, seed=3).to(DEVICE)
    res = auction_batched(gains, backend="triton", eps=1e-3)
    assert res.eps_final.tolist() == [1e-3, 1e-3] and torch.allclose(res.bound, torch.full((2,), 9e-3,
                                                                                         dtype=torch.float64))
    _check_result(gains.cpu(), res)


@needs_triton
def test_warm_start_prices():
    """Warm start (issue 26 item 2): the previous problem's prices and a small first eps solve a
    slightly changed problem to the same optimality in fewer iterations; Triton == reference."""
    g = make_gains("int", 2, 23, seed=11)
    cold = auction_batched_reference(g)
    h = g.clone()
    h[:, 3, 5] += 7  # a few entries change, as between two permutation rounds
    h[:, 10, 2] -= 4
    warm_ref = auction_batched_reference(h, prices=cold.prices, eps_start=1.0)
    cold_h = auction_batched_reference(h)
    _check_result(h, warm_ref)
    assert int(warm_ref.iterations.sum()) < int(cold_h.iterations.sum())
    assert warm_ref.phases < cold_h.phases
    warm = auction_batched(h.to(DEVICE), backend="triton", prices=cold.prices.to(DEVICE), eps_start=1.0)
    assert torch.equal(warm.cols.cpu(), warm_ref.cols) and torch.equal(warm.prices.cpu(), warm_ref.prices)
    # the caller's prices are not modified
    assert torch.equal(cold.prices, auction_batched_reference(g).prices)


def test_eps_start_schedule():
    final = 1e-6 * 100.0 / 10  # below the integer cap 1 / 11
    s = eps_schedule(100.0, 10, True, eps_start=1.0)
    assert s[0] == 1.0 and s[-1] == final
    assert eps_schedule(100.0, 10, True, eps_start=1e9)[0] == 5.0    # never above scale / 20
    assert eps_schedule(100.0, 10, True, eps_start=1e-9) == [final]  # never below eps_final


def test_bad_inputs():
    with pytest.raises(RiaInputError, match="B, n, n"):
        auction_batched(torch.rand(4, 4))
    with pytest.raises(RiaInputError, match="B, n, n"):
        auction_batched(torch.rand(2, 3, 4))
    with pytest.raises(RiaInputError, match="finite"):
        auction_batched(torch.tensor([[[1.0, float("nan")], [0.0, 1.0]]]))
    with pytest.raises(RiaInputError, match="finite"):
        auction_batched(torch.tensor([[[1.0, float("inf")], [0.0, 1.0]]]))
    with pytest.raises(RiaInputError, match="dtype"):
        auction_batched(torch.ones(1, 3, 3, dtype=torch.bool))
    with pytest.raises(RiaInputError, match="torch.Tensor"):
        auction_batched([[[1.0]]])
    for eps in (0.0, -1.0, float("nan"), True):
        with pytest.raises(RiaInputError, match="eps"):
            auction_batched(torch.rand(1, 3, 3), eps=eps)
    for it in (0, -3, 2.5, True):
        with pytest.raises(RiaInputError, match="max_iters"):
            auction_batched(torch.rand(1, 3, 3), max_iters=it)
    with pytest.raises(RiaInputError, match="prices"):
        auction_batched(torch.rand(2, 3, 3), prices=torch.zeros(3, 3))
    with pytest.raises(RiaInputError, match="prices"):
        auction_batched(torch.rand(1, 3, 3), prices=torch.tensor([[0.0, float("nan"), 0.0]]))
    with pytest.raises(RiaInputError, match="prices"):
        auction_batched(torch.rand(1, 3, 3), prices=torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(RiaInputError, match="eps_start"):
        auction_batched(torch.rand(1, 3, 3), eps_start=0.0)
    with pytest.raises(RiaInputError, match="backend"):
        auction_batched(torch.rand(1, 3, 3), backend="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_triton_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.setattr(_backend, "_INTERPRET_AT_IMPORT", False)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET"):
        auction_batched(torch.rand(1, 3, 3), backend="triton")
    # the default on a CPU tensor is the torch reference
    monkeypatch.delenv("RIA_KERNELS_BACKEND", raising=False)
    res = auction_batched(torch.rand(2, 5, 5, generator=torch.Generator().manual_seed(0)))
    _check_result(torch.rand(2, 5, 5, generator=torch.Generator().manual_seed(0)), res)


def test_aot_cases_listed():
    labels = [label for label, _ in A.aot_cases()]
    assert len(labels) == len(set(labels)) and any("n=2048" in l for l in labels)
    # every config the launch heuristic returns is among the cases (configs constant from n = 128)
    cases = {auction_launch_config(int(l.split("n=")[1]), 1)[:4] for l in labels}
    assert cases == {auction_launch_config(n, 1)[:4] for n in range(2, 300)}


# --------------------------------------------------------------------------- property test
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, note  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SMALL_DIMS = (2, 3, 5, 7, 11, 13, 16, 17, 19)


@needs_triton
@given(kind=st.sampled_from(KINDS), b=st.integers(1, 3),
       n=st.one_of(st.sampled_from(SMALL_DIMS), st.integers(2, 19)), seed=st.integers(0, 2**31 - 1))
def test_property_triton_vs_scipy(kind, b, n, seed):
    note(f"kind={kind} b={b} n={n} seed={seed}")
    gains = make_gains(kind, b, n, seed)
    res = auction_batched(gains.to(DEVICE), backend="triton")
    _check_result(gains, res)
    ref = auction_batched_reference(gains)
    assert torch.equal(res.cols.cpu(), ref.cols) and torch.equal(res.prices.cpu(), ref.prices)
    assert np.isfinite(res.gap.numpy()).all()
