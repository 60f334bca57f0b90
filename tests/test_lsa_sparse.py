import logging

import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy.optimize import linear_sum_assignment as scipy_lsa

from ria_kernels import RiaInputError
from ria_kernels import lsa as lsa_mod
from ria_kernels import lsa_sparse
from ria_kernels._errors import BackendUnavailableError
from ria_kernels.lsa import linear_sum_assignment, resolve_solver
from ria_kernels.lsa_sparse import auto_start, sparse_lap

needs_sparse = pytest.mark.skipif(not lsa_sparse.available(), reason=f"native sparse LAP unavailable: "
                                  f"{lsa_sparse.native_lib()[1]}")
pytestmark = needs_sparse
ODD_SIZES = [1, 2, 3, 5, 7, 13, 31, 97, 257]


def _optimum(a: torch.Tensor) -> float:
    r, c = scipy_lsa(a.double().numpy(), maximize=True)
    return float(a.double().numpy()[r, c].sum())


def _matrix(kind: str, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "uniform":
        return torch.rand(n, n, dtype=torch.float64, generator=g) * 100 - 20
    if kind == "heavy":        # like the permutation gains: a few dominant columns and rows
        return torch.rand(n, n, dtype=torch.float64, generator=g) * torch.rand(n, dtype=torch.float64, generator=g) ** 3
    if kind == "ties":         # values in {0, 1, 2}: very many optimal assignments
        return torch.randint(0, 3, (n, n), generator=g).double()
    if kind == "integer":
        return torch.randint(-1000, 1000, (n, n), generator=g).double()
    if kind == "additive":     # large row + column offsets, small interaction: the 'column' start
        return (1000 + 50 * torch.rand(n, 1, dtype=torch.float64, generator=g)
                + 30 * torch.rand(1, n, dtype=torch.float64, generator=g) + torch.rand(n, n, dtype=torch.float64, generator=g))
    if kind == "negative":
        return -torch.rand(n, n, dtype=torch.float64, generator=g) * 1e3 - 1e3
    if kind == "sparse_zeros":  # mostly exact zeros, like the search's last rounds
        a = torch.rand(n, n, dtype=torch.float64, generator=g)
        return torch.where(a > 0.8, a, torch.zeros_like(a))
    raise ValueError(kind)


def _check_proof(a: torch.Tensor, res) -> float:
    """Independent check of the certificate: u_i + v_j >= a_ij everywhere (to tol), and the
    matching's total is sum(u) + sum(v) - gap; returns the total."""
    n = a.shape[0]
    assert torch.equal(torch.sort(res.cols).values, torch.arange(n))
    slack = res.u[:, None] + res.v[None, :] - a
    assert float(slack.min()) >= -res.tol - 1e-12 * float(a.abs().max())
    own = slack[torch.arange(n), res.cols]
    assert float(own.max()) <= res.tol + 1e-12 * float(a.abs().max())   # tight on the matching
    total = float(a[torch.arange(n), res.cols].sum())
    dual = float(res.u.sum() + res.v.sum())
    assert res.gap == pytest.approx(dual - total, abs=1e-9 * max(1.0, abs(total)))
    assert 0.0 <= res.gap <= n * res.tol + 1e-12
    return total


@pytest.mark.parametrize("kind", ["uniform", "heavy", "ties", "integer", "additive", "negative", "sparse_zeros"])
@pytest.mark.parametrize("n", ODD_SIZES)
def test_optimal_with_proof(kind, n):
    a = _matrix(kind, n, seed=17 * n + len(kind))
    res = sparse_lap(a)
    total = _check_proof(a, res)
    opt = _optimum(a)
    if kind in ("ties", "integer"):
        assert total == opt                     # integer sums are exact in float64
    else:
        assert total == pytest.approx(opt, rel=1e-9, abs=1e-9)
        assert total >= opt - n * res.tol - 1e-9 * abs(opt)


@pytest.mark.parametrize("start", ["zero", "column"])
@pytest.mark.parametrize("k", [1, 2, 5, 1000])
def test_every_start_and_list_size_is_exact(start, k):
    """k=1 makes almost every Dijkstra step go through a row's bound entry (the lazy widening)."""
    for kind in ("heavy", "ties", "additive"):
        a = _matrix(kind, 61, seed=k)
        res = sparse_lap(a, k=k, start=start)
        total = _check_proof(a, res)
        assert total == pytest.approx(_optimum(a), rel=1e-12, abs=1e-12)
        if k == 1 and kind == "ties":
            assert res.stats["refreshes"] > 0   # the bound path was exercised
        assert res.stats["outer"] >= 1 and res.stats["edges"] >= 61


def test_warm_start_from_prices():
    a = _matrix("heavy", 200, seed=3)
    cold = sparse_lap(a, start="zero")
    warm = sparse_lap(a, start="prices", prices=cold.v)
    assert float(a[torch.arange(200), warm.cols].sum()) == pytest.approx(_optimum(a), rel=1e-12)
    _check_proof(a, warm)
    # optimal prices: each row's greedy best column is (up to ties) its optimal one
    assert warm.stats["augments"] <= cold.stats["augments"]
    assert warm.stats["greedy_matched"] >= cold.stats["greedy_matched"]
    # any prices are a valid start, even nonsense ones
    junk = torch.randn(200, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 1e3
    res = sparse_lap(a, start="prices", prices=junk)
    assert float(a[torch.arange(200), res.cols].sum()) == pytest.approx(_optimum(a), rel=1e-12)


def test_auto_start_rule():
    assert auto_start(_matrix("additive", 9, 0)) == "column"
    assert auto_start(_matrix("sparse_zeros", 9, 0)) == "zero"
    assert auto_start(_matrix("negative", 9, 0)) == "zero"


@settings(max_examples=40, deadline=None)
@given(n=st.sampled_from([1, 2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53]),
       hi=st.integers(1, 6), seed=st.integers(0, 2**31 - 1), k=st.integers(1, 8))
def test_property_integer_exact(n, hi, seed, k):
    a = torch.randint(0, hi + 1, (n, n), generator=torch.Generator().manual_seed(seed)).double()
    res = sparse_lap(a, k=k)
    assert _check_proof(a, res) == _optimum(a)


@settings(max_examples=25, deadline=None)
@given(r=st.sampled_from([1, 2, 3, 5, 7, 11, 13, 29]), c=st.sampled_from([1, 2, 3, 5, 7, 11, 13, 29]),
       seed=st.integers(0, 2**31 - 1))
def test_property_rectangular_via_dispatch(r, c, seed):
    a = torch.rand(r, c, generator=torch.Generator().manual_seed(seed)) * torch.rand(c, generator=torch.Generator().manual_seed(seed + 1)) ** 3
    rows, cols = linear_sum_assignment(a, solver="sparse")
    assert rows.shape == cols.shape == (min(r, c),)
    assert torch.equal(rows, torch.sort(rows).values)
    assert len(set(cols.tolist())) == min(r, c) and int(cols.max()) < c and int(rows.max()) < r
    assert float(a.double()[rows, cols].sum()) == pytest.approx(_optimum(a), rel=1e-9, abs=1e-12)


def test_tiny_and_empty():
    assert sparse_lap(torch.tensor([[3.5]])).cols.tolist() == [0]
    res = sparse_lap(torch.tensor([[1.0, 5.0], [4.0, 1.0]]))
    assert res.cols.tolist() == [1, 0] and res.gap == 0.0
    assert sparse_lap(torch.tensor([[2, 1], [1, 2]])).cols.tolist() == [0, 1]   # integer dtype
    empty = sparse_lap(torch.empty(0, 0))
    assert empty.cols.numel() == 0 and empty.gap == 0.0
    rows, cols = linear_sum_assignment(torch.empty(0, 3), solver="sparse")
    assert rows.numel() == cols.numel() == 0


@pytest.mark.parametrize("value", [0.0, -3.5, 7.0])
def test_constant_matrix(value):
    a = torch.full((9, 9), value, dtype=torch.float64)
    res = sparse_lap(a)
    assert _check_proof(a, res) == pytest.approx(9 * value)


def test_same_result_as_scipy_on_permutation_gain():
    """A real gain matrix of the search (2:4, first round, heavy-tailed score)."""
    from ria_kernels import permutation as P
    s = torch.rand(64, 512, generator=torch.Generator().manual_seed(5)) * torch.rand(512, generator=torch.Generator().manual_seed(6)) ** 3
    perm = P.heuristic_allocation(s, 4)
    grid = perm.reshape(128, 4)
    fixed = s[:, grid[:, 1:].reshape(-1)].reshape(64, 128, 3)
    gain = P.lsa_gain_reference(s[:, grid[:, 0]], P._kth_largest(fixed, 2))
    res = sparse_lap(gain)
    _check_proof(gain, res)
    assert float(gain[torch.arange(128), res.cols].sum()) == pytest.approx(_optimum(gain), rel=1e-12)


def test_bad_inputs():
    with pytest.raises(RiaInputError, match="square"):
        sparse_lap(torch.rand(3, 4))
    with pytest.raises(RiaInputError, match="square"):
        sparse_lap([[1.0]])
    with pytest.raises(RiaInputError, match="dtype"):
        sparse_lap(torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(RiaInputError, match="finite"):
        sparse_lap(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(RiaInputError, match="k must"):
        sparse_lap(torch.rand(3, 3), k=0)
    with pytest.raises(RiaInputError, match="start"):
        sparse_lap(torch.rand(3, 3), start="greedy")
    with pytest.raises(RiaInputError, match="prices"):
        sparse_lap(torch.rand(3, 3), start="prices")
    with pytest.raises(RiaInputError, match="prices"):
        sparse_lap(torch.rand(3, 3), prices=torch.zeros(3))
    with pytest.raises(RiaInputError, match="shape"):
        sparse_lap(torch.rand(3, 3), start="prices", prices=torch.zeros(4))
    with pytest.raises(RiaInputError, match="finite"):
        sparse_lap(torch.rand(3, 3), start="prices", prices=torch.tensor([0.0, float("inf"), 0.0]))
    with pytest.raises(RiaInputError, match="finite"):
        linear_sum_assignment(torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), solver="sparse")


def test_unavailable_is_reported(monkeypatch, caplog):
    """No compiler: 'sparse' forced fails with the reason; the automatic choice falls back to scipy."""
    monkeypatch.delenv("RIA_KERNELS_LSA_SOLVER", raising=False)
    monkeypatch.setattr(lsa_sparse, "_state", {"lib": None, "why": "no C++ compiler"})
    from ria_kernels import _logging
    monkeypatch.setattr(_logging, "_seen", set())
    a = torch.rand(4, 4)
    with caplog.at_level(logging.INFO, logger="ria_kernels"):
        assert resolve_solver(a) == "scipy"
    assert "native sparse solver unavailable (no C++ compiler)" in caplog.text
    with pytest.raises(BackendUnavailableError, match="no C\\+\\+ compiler"):
        linear_sum_assignment(a, solver="sparse")
    with pytest.raises(BackendUnavailableError, match="no C\\+\\+ compiler"):
        sparse_lap(a)


def test_build_failure_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("RIA_KERNELS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(lsa_sparse, "_state", {})
    lib, why = lsa_sparse.native_lib()
    assert lib is None and "no-such-compiler" in why


def test_dispatch_auto_and_env(monkeypatch):
    a = torch.rand(5, 5)
    monkeypatch.delenv("RIA_KERNELS_LSA_SOLVER", raising=False)
    assert resolve_solver(a) == "sparse"
    assert resolve_solver(a, "SPARSE") == "sparse"
    monkeypatch.setenv("RIA_KERNELS_LSA_SOLVER", "scipy")
    assert resolve_solver(a) == "scipy"
    assert resolve_solver(a, "sparse") == "sparse"
    assert "sparse" in lsa_mod.SOLVERS


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensor_device_kept():
    a = torch.randint(0, 1000, (50, 50), generator=torch.Generator().manual_seed(9)).double()
    rows, cols = linear_sum_assignment(a.cuda(), solver="sparse")
    assert rows.is_cuda and cols.is_cuda
    assert float(a[rows.cpu(), cols.cpu()].sum()) == _optimum(a)
