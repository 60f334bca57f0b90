import pytest
import torch
from scipy.optimize import linear_sum_assignment as scipy_lsa

from ria_kernels import RiaInputError
from ria_kernels import lsa as lsa_mod
from ria_kernels import lsa_sparse
from ria_kernels._errors import BackendUnavailableError
from ria_kernels.lsa import auction, lapjv_available, linear_sum_assignment, resolve_solver

SIZES = [1, 2, 7, 64, 257]
needs_lapjv = pytest.mark.skipif(not lapjv_available(), reason="optional lapx not installed")
EXACT = ["scipy"] + (["lapjv"] if lapjv_available() else []) + (["sparse"] if lsa_sparse.available() else [])


def _optimum(a: torch.Tensor) -> float:
    r, c = scipy_lsa(a.double().numpy(), maximize=True)
    return float(a.double().numpy()[r, c].sum())


def _total(a: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> float:
    return float(a.double()[rows, cols].sum())


def _check_assignment(rows, cols, r, c):
    k = min(r, c)
    assert rows.dtype == cols.dtype == torch.long
    assert rows.shape == cols.shape == (k,)
    assert torch.equal(rows, torch.sort(rows).values)          # rows ascending, like scipy
    assert len(set(rows.tolist())) == k and len(set(cols.tolist())) == k
    assert 0 <= int(rows.min()) and int(rows.max()) < r and 0 <= int(cols.min()) and int(cols.max()) < c


@pytest.mark.parametrize("n", SIZES)
def test_auction_float_within_bound(n):
    a = torch.rand(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1000 + n)) * 10
    res = auction(a)
    assert torch.equal(torch.sort(res.cols).values, torch.arange(n))
    opt = _optimum(a)
    got = _total(a, torch.arange(n), res.cols)
    # documented bound: n * eps_final, eps_final = 1e-6 * (max - min) / n
    expected_bound = 1e-6 * float(a.max() - a.min()) if n > 1 else 0.0  # n == 1: nothing to choose
    assert res.bound == pytest.approx(expected_bound)
    assert opt - res.bound - 1e-9 * abs(opt) <= got <= opt + 1e-9 * abs(opt)
    rows, cols = linear_sum_assignment(a, solver="auction")
    _check_assignment(rows, cols, n, n)
    assert _total(a, rows, cols) >= opt - res.bound - 1e-9 * abs(opt)


@pytest.mark.parametrize("n", SIZES)
def test_auction_integer_is_exact(n):
    a = torch.randint(-50, 50, (n, n), generator=torch.Generator().manual_seed(2000 + n)).double()
    rows, cols = linear_sum_assignment(a, solver="auction")
    _check_assignment(rows, cols, n, n)
    assert _total(a, rows, cols) == _optimum(a)  # integer sums are exact in float64


def test_integer_dtype_and_many_ties():
    # values in {0, 1, 2}: lots of equal optima; the total must still be the optimum
    a = torch.randint(0, 3, (40, 40), generator=torch.Generator().manual_seed(3))
    rows, cols = linear_sum_assignment(a, solver="auction")
    _check_assignment(rows, cols, 40, 40)
    assert _total(a, rows, cols) == _optimum(a)
    # deterministic tie-breaking: same input, same answer
    assert torch.equal(cols, linear_sum_assignment(a, solver="auction")[1])


@pytest.mark.parametrize("value", [0.0, -3.5, 7.0])
def test_constant_matrix(value):
    a = torch.full((9, 9), value, dtype=torch.float64)
    rows, cols = linear_sum_assignment(a, solver="auction")
    _check_assignment(rows, cols, 9, 9)
    assert _total(a, rows, cols) == pytest.approx(9 * value)


def test_negative_gains():
    a = -torch.rand(33, 33, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 1e3 - 1e3
    res = auction(a)
    got = _total(a, torch.arange(33), res.cols)
    opt = _optimum(a)
    assert opt - res.bound - 1e-9 * abs(opt) <= got <= opt + 1e-9 * abs(opt)


def test_sync_free_path_matches():
    """check_every > 1 is the CUDA code path (device-side compaction, stale bidders)."""
    a = torch.randint(0, 20, (50, 50), generator=torch.Generator().manual_seed(6)).double()
    res = auction(a, check_every=8)
    assert torch.equal(torch.sort(res.cols).values, torch.arange(50))
    assert _total(a, torch.arange(50), res.cols) == _optimum(a)


@pytest.mark.parametrize("shape", [(5, 9), (9, 5), (1, 4), (4, 1)])
def test_rectangular(shape):
    a = torch.randint(0, 30, shape, generator=torch.Generator().manual_seed(sum(shape))).float()
    for solver in ["auction"] + EXACT:
        rows, cols = linear_sum_assignment(a, solver=solver)
        _check_assignment(rows, cols, *shape)
        assert _total(a, rows, cols) == _optimum(a)


def test_scipy_solver_exact_and_device_kept():
    a = torch.rand(17, 17, generator=torch.Generator().manual_seed(7))
    rows, cols = linear_sum_assignment(a, solver="scipy")
    assert rows.device == a.device and cols.device == a.device
    assert _total(a, rows, cols) == pytest.approx(_optimum(a), rel=1e-12)


@needs_lapjv
@pytest.mark.parametrize("shape", [(1, 1), (2, 2), (64, 64), (257, 257), (30, 70), (70, 30)])
def test_lapjv_exact_float_and_device_kept(shape):
    a = torch.rand(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(sum(shape))) * 100 - 20
    rows, cols = linear_sum_assignment(a, solver="lapjv")
    _check_assignment(rows, cols, *shape)
    assert rows.device == a.device
    assert _total(a, rows, cols) == pytest.approx(_optimum(a), rel=1e-12)
    # continuous random gains have one optimum: the same assignment as scipy's
    r_ref, c_ref = scipy_lsa(a.numpy(), maximize=True)
    assert rows.tolist() == r_ref.tolist() and cols.tolist() == c_ref.tolist()


@needs_lapjv
def test_lapjv_ties_and_float32_input():
    a = torch.randint(0, 3, (40, 40), generator=torch.Generator().manual_seed(4)).float()
    rows, cols = linear_sum_assignment(a, solver="lapjv")
    _check_assignment(rows, cols, 40, 40)
    assert _total(a, rows, cols) == _optimum(a)


def test_empty():
    rows, cols = linear_sum_assignment(torch.empty(0, 0), solver="auction")
    assert rows.numel() == 0 and cols.numel() == 0


def test_eps_override_is_used():
    a = torch.rand(20, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    res = auction(a, eps=1e-3)
    assert res.eps_final == 1e-3 and res.bound == pytest.approx(20 * 1e-3)
    assert _total(a, torch.arange(20), res.cols) >= _optimum(a) - res.bound


def test_bad_inputs():
    with pytest.raises(RiaInputError, match="2-D"):
        linear_sum_assignment(torch.rand(4))
    with pytest.raises(RiaInputError, match="2-D"):
        linear_sum_assignment(torch.rand(2, 2, 2))
    with pytest.raises(RiaInputError, match="finite"):
        linear_sum_assignment(torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), solver="auction")
    with pytest.raises(RiaInputError, match="finite"):
        linear_sum_assignment(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), solver="scipy")
    with pytest.raises(RiaInputError, match="solver"):
        linear_sum_assignment(torch.rand(3, 3), solver="hungarian")
    with pytest.raises(RiaInputError, match="eps"):
        linear_sum_assignment(torch.rand(3, 3), solver="auction", eps=0.0)
    with pytest.raises(RiaInputError, match="eps"):
        linear_sum_assignment(torch.rand(3, 3), solver="auction", eps=float("nan"))
    with pytest.raises(RiaInputError, match="dtype"):
        linear_sum_assignment(torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(RiaInputError, match="torch.Tensor"):
        linear_sum_assignment([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(RiaInputError, match="square"):
        auction(torch.rand(3, 4))
    with pytest.raises(RiaInputError, match="check_every"):
        auction(torch.rand(3, 3), check_every=0)


def test_dispatch_and_env_override(monkeypatch):
    a = torch.rand(6, 6)
    monkeypatch.delenv("RIA_KERNELS_LSA_SOLVER", raising=False)
    auto = "sparse" if lsa_sparse.available() else "scipy"
    assert resolve_solver(a) == auto               # auto: exact, lapjv where lapx is installed
    assert resolve_solver(a, "auto") == auto
    assert resolve_solver(a, "AUCTION") == "auction"
    monkeypatch.setenv("RIA_KERNELS_LSA_SOLVER", "auction")
    assert resolve_solver(a) == "auction"
    assert resolve_solver(a, "scipy") == "scipy"   # an explicit argument beats the env
    monkeypatch.setenv("RIA_KERNELS_LSA_SOLVER", "bogus")
    with pytest.raises(RiaInputError, match="RIA_KERNELS_LSA_SOLVER"):
        linear_sum_assignment(a)


def test_lapjv_missing(monkeypatch):
    monkeypatch.delenv("RIA_KERNELS_LSA_SOLVER", raising=False)
    monkeypatch.setattr(lsa_mod, "lapjv_available", lambda: False)
    a = torch.rand(5, 5)
    assert resolve_solver(a) == ("sparse" if lsa_sparse.available() else "scipy")  # auto never needs lapx
    with pytest.raises(BackendUnavailableError, match="lapx"):
        linear_sum_assignment(a, solver="lapjv")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auction_on_cuda_matches_scipy():
    a = torch.randint(0, 1000, (300, 300), generator=torch.Generator().manual_seed(9)).double()
    rows, cols = linear_sum_assignment(a.cuda(), solver="auction")
    assert rows.is_cuda and cols.is_cuda
    assert _total(a, rows.cpu(), cols.cpu()) == _optimum(a)


# --------------------------------------------------------------------------- auction_triton / batched
needs_triton = pytest.mark.skipif(not (torch.cuda.is_available() or __import__("os").environ.get("TRITON_INTERPRET")
                                       == "1"), reason="Triton needs CUDA or TRITON_INTERPRET=1")
_DEV = "cuda" if torch.cuda.is_available() else "cpu"


@needs_triton
@pytest.mark.parametrize("shape", [(7, 7), (5, 9), (9, 5), (1, 4), (4, 1), (13, 13)])
def test_auction_triton_solver(shape):
    a = torch.randint(0, 30, shape, generator=torch.Generator().manual_seed(sum(shape))).float()
    rows, cols = linear_sum_assignment(a.to(_DEV), solver="auction_triton")
    assert rows.device.type == cols.device.type == _DEV
    rows, cols = rows.cpu(), cols.cpu()
    _check_assignment(rows, cols, *shape)
    assert _total(a, rows, cols) == _optimum(a)  # integer gains: exact


@needs_triton
@pytest.mark.parametrize("shape", [(3, 6, 6), (2, 5, 8), (2, 8, 5), (1, 11, 11)])
def test_batched_matches_per_problem(shape):
    g = torch.randint(-20, 20, shape, generator=torch.Generator().manual_seed(sum(shape)))
    for solver in ["auction_triton", "scipy", "auction"]:
        rows, cols = lsa_mod.linear_sum_assignment_batched(g.to(_DEV) if solver == "auction_triton" else g,
                                                           solver=solver)
        k = min(shape[1:])
        assert rows.shape == cols.shape == (shape[0], k)
        for i in range(shape[0]):
            _check_assignment(rows[i].cpu(), cols[i].cpu(), *shape[1:])
            assert _total(g[i], rows[i].cpu(), cols[i].cpu()) == _optimum(g[i])


@needs_triton
def test_batched_float_within_bound():
    g = torch.rand(3, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 10
    rows, cols = lsa_mod.linear_sum_assignment_batched(g.to(_DEV), solver="auction_triton")
    for i in range(3):
        opt = _optimum(g[i])
        # documented bound: 1e-6 * (max - min) of that problem
        assert opt - 1e-6 * float(g[i].max() - g[i].min()) - 1e-12 <= _total(g[i], rows[i].cpu(), cols[i].cpu())


def test_batched_bad_inputs_and_empty():
    with pytest.raises(RiaInputError, match="3-D"):
        lsa_mod.linear_sum_assignment_batched(torch.rand(3, 3))
    with pytest.raises(RiaInputError, match="finite"):
        lsa_mod.linear_sum_assignment_batched(torch.tensor([[[float("nan")]]]), solver="scipy")
    with pytest.raises(RiaInputError, match="torch.Tensor"):
        lsa_mod.linear_sum_assignment_batched([[[1.0]]])
    rows, cols = lsa_mod.linear_sum_assignment_batched(torch.empty(0, 3, 3), solver="scipy")
    assert rows.shape == cols.shape == (0, 0)
    rows, cols = lsa_mod.linear_sum_assignment_batched(torch.empty(2, 0, 3), solver="scipy")
    assert rows.shape == cols.shape == (2, 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_auction_triton_needs_cuda_or_interpreter(monkeypatch):
    from ria_kernels import _backend
    monkeypatch.setattr(_backend, "_INTERPRET_AT_IMPORT", False)
    a = torch.rand(4, 4)
    with pytest.raises(BackendUnavailableError, match="auction_triton"):
        linear_sum_assignment(a, solver="auction_triton")
    monkeypatch.setenv("RIA_KERNELS_LSA_SOLVER", "auction_triton")
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET"):
        lsa_mod.linear_sum_assignment_batched(a[None])
    monkeypatch.delenv("RIA_KERNELS_LSA_SOLVER")
    assert resolve_solver(a) in ("sparse", "scipy")  # the automatic choice is unchanged by the new solver
