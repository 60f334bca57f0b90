"""SparseLinear: pattern validation, backend dispatch (arg > env > auto, measured table),
the dense path on CPU, and every backend on the GPU."""
import json
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ria_kernels import BackendUnavailableError, RiaInputError, SparseLinear
from ria_kernels import sparse_linear as sl
from ria_kernels.ops import sparse_mm
from ria_kernels.ops.sparse_mm import sparse_mm_reference
from conftest import SPARSE_MM_TOKENS, assert_rel_close, cuda_graph_replay, poison_allocator

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
# dense path on CPU vs the float32 reference: (rtol, atol) by dtype
TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2)}
# GPU backends: relative error bound ||y - ref|| / ||ref|| by dtype
TOKENS = SPARSE_MM_TOKENS


def pruned_linear(n, k, bias=True, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    w = torch.randn(n, k, generator=g)
    keep = torch.rand(n, k // 4, 4, generator=g).argsort(-1).argsort(-1) < 2
    with torch.no_grad():
        lin.weight.copy_(w * keep.reshape(n, k))
        if bias:
            lin.bias.copy_(torch.randn(n, generator=g))
    return lin.to(dtype=dtype, device=device)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own on-disk table and no env overrides."""
    monkeypatch.setenv(sl.ENV_CACHE_DIR, str(tmp_path / "cache"))
    monkeypatch.delenv(sl.ENV_BACKEND, raising=False)
    monkeypatch.delenv(sl.ENV_AUTOTUNE, raising=False)
    sl.set_tune_table(None)
    yield
    sl.set_tune_table(None)


# --------------------------------------------------------------------------- pattern validation
def test_from_linear_validates_pattern_and_type():
    with pytest.raises(RiaInputError, match="needs an nn.Linear"):
        SparseLinear.from_linear(nn.Conv1d(4, 4, 1))
    lin = pruned_linear(8, 16)
    with torch.no_grad():
        lin.weight[0, :4] = 1.0
        lin.weight[3, 8:12] = 1.0
        lin.weight[5, 4:7] = 1.0
    with pytest.raises(RiaInputError, match=r"not 2:4 sparse: 3 of 32 groups"):
        SparseLinear.from_linear(lin)
    with pytest.raises(RiaInputError, match="in_features=10 is not divisible by 4"):
        SparseLinear.from_linear(nn.Linear(10, 4))
    with pytest.raises(RiaInputError, match="2-D"):
        sl.check_2to4(torch.zeros(2, 2, 4))
    with pytest.raises(RiaInputError, match=r"bias must have shape \[8\]"):
        SparseLinear(pruned_linear(8, 16).weight, torch.zeros(7))


def test_from_linear_copies_and_keeps_api():
    lin = pruned_linear(8, 16)
    m = SparseLinear.from_linear(lin)
    assert (m.in_features, m.out_features, m.backend) == (16, 8, "dense")
    assert isinstance(m.weight, nn.Parameter) and not m.weight.requires_grad
    with torch.no_grad():
        lin.weight.zero_()
    assert m.weight.abs().sum() > 0, "the module must not alias the source linear"
    assert "backend=dense" in repr(m)


# --------------------------------------------------------------------------- precedence: arg > env > auto
def test_requested_backend_precedence(monkeypatch):
    assert sl.requested_backend(None) is None
    assert sl.requested_backend("auto") is None
    assert sl.requested_backend("CUTLASS") == "cutlass"
    monkeypatch.setenv(sl.ENV_BACKEND, "torch_semi_structured")
    assert sl.requested_backend(None) == "torch_semi_structured"
    assert sl.requested_backend("dense") == "dense"  # argument beats env
    monkeypatch.setenv(sl.ENV_BACKEND, "fast")
    with pytest.raises(RiaInputError, match=f"env {sl.ENV_BACKEND} must be one of"):
        sl.requested_backend(None)
    with pytest.raises(RiaInputError, match="backend must be one of"):
        sl.requested_backend("cublas")


@pytest.mark.skipif(CUDA, reason="checks the no-CUDA reason")
@pytest.mark.parametrize("backend", sl.SPARSE_BACKENDS)
def test_forced_unavailable_backend_raises(backend, monkeypatch):
    lin = pruned_linear(32, 64, dtype=torch.float16)
    with pytest.raises(BackendUnavailableError, match=f"backend '{backend}' forced but unavailable: CUDA is not"):
        SparseLinear.from_linear(lin, backend=backend)
    monkeypatch.setenv(sl.ENV_BACKEND, backend)
    with pytest.raises(BackendUnavailableError, match="CUDA is not available"):
        SparseLinear.from_linear(lin)
    assert SparseLinear.from_linear(lin, backend="dense").backend == "dense"  # argument beats env


def test_bad_backend_and_candidates():
    lin = pruned_linear(8, 16)
    with pytest.raises(RiaInputError, match="backend must be one of"):
        SparseLinear.from_linear(lin, backend="sparse")
    with pytest.raises(RiaInputError, match="candidates must be sparse backends"):
        SparseLinear.from_linear(lin, candidates=["dense"])


def test_unavailable_reasons_name_the_limit():
    cpu = sl.backend_unavailable_reasons(torch.device("cpu"), torch.float16, 32, 64)
    assert cpu["dense"] is None and all(cpu[b] for b in sl.SPARSE_BACKENDS)
    if CUDA and torch.cuda.get_device_capability()[0] >= 8:
        r = sl.backend_unavailable_reasons(torch.device("cuda"), torch.float32, 32, 64)
        assert "float16/bfloat16" in r["cusparselt"]
        r = sl.backend_unavailable_reasons(torch.device("cuda"), torch.float16, 24, 64)
        assert "out_features % 16" in r["cusparselt"] and "out_features % 32" in r["cutlass"]


# --------------------------------------------------------------------------- choose_backend (injected timings)
AVAIL = {"cusparselt": None, "cutlass": None, "torch_semi_structured": None, "dense": None}


def test_choose_backend_forced():
    assert sl.choose_backend("cutlass", device_type="cuda", unavailable=AVAIL) == ("cutlass", "forced")
    with pytest.raises(BackendUnavailableError, match="forced but unavailable: extension not built"):
        sl.choose_backend("cusparselt", device_type="cuda", unavailable={**AVAIL, "cusparselt": "extension not built"})
    with pytest.raises(BackendUnavailableError, match="not prepared"):
        sl.choose_backend("cutlass", device_type="cuda", unavailable={"dense": None})
    with pytest.raises(RiaInputError, match="backend must be one of"):
        sl.choose_backend("fast", device_type="cuda", unavailable=AVAIL)


def test_choose_backend_auto_rules():
    fast_sparse = {"dense": 1.0, "cusparselt": 0.7, "cutlass": 0.6, "torch_semi_structured": 0.8}
    assert sl.choose_backend(None, device_type="cpu", unavailable=AVAIL, timings=fast_sparse)[0] == "dense"
    assert sl.choose_backend(None, device_type="cuda", unavailable=AVAIL, timings=fast_sparse)[0] == "cutlass"
    # the fastest backend is unavailable: the next one runs
    assert sl.choose_backend(None, device_type="cuda", unavailable={**AVAIL, "cutlass": "no kernel"},
                             timings=fast_sparse)[0] == "cusparselt"
    # dense measured faster (decode-sized): dense, never a slower sparse kernel
    decode = {"dense": 0.010, "cusparselt": 0.012, "cutlass": 0.011, "torch_semi_structured": 0.02}
    backend, why = sl.choose_backend(None, device_type="cuda", unavailable=AVAIL, timings=decode)
    assert backend == "dense" and "not 3% faster" in why
    # within the noise margin: dense
    close = {"dense": 1.0, "cusparselt": 0.99}
    assert sl.choose_backend(None, device_type="cuda", unavailable=AVAIL, timings=close)[0] == "dense"
    # no timings, no way to measure (compile / capture): dense
    backend, why = sl.choose_backend(None, device_type="cuda", unavailable=AVAIL)
    assert backend == "dense" and "timing is not possible" in why
    # no sparse candidate at all: dense, with the reasons
    backend, why = sl.choose_backend(None, device_type="cuda", unavailable={"dense": None, "cutlass": "K % 64"})
    assert backend == "dense" and "K % 64" in why


def test_choose_backend_measures_only_usable_candidates():
    seen = []

    def measure(cands):
        seen.append(list(cands))
        return {"dense": 2.0, "cusparselt": 1.0}

    unavailable = {"cusparselt": None, "cutlass": "built without CUTLASS", "dense": None}
    assert sl.choose_backend(None, device_type="cuda", unavailable=unavailable, measure=measure)[0] == "cusparselt"
    assert seen == [["cusparselt", "dense"]]


# --------------------------------------------------------------------------- the on-disk table
def test_tune_table_round_trip_and_merge(tmp_path):
    path = tmp_path / "t" / "sparse_linear.json"
    key = sl.shape_key(4096, 4096, torch.float16, False, 16)
    a = sl.TuneTable.load(path)
    assert a.get("dev", key) is None
    a.put("dev", key, {"ms": {"dense": 0.02, "cusparselt": 0.03}, "choice": "dense", "cslt_config": [3, 1, 0]})
    a.save()
    b = sl.TuneTable.load(path)  # another process adds an entry; a's later save must keep it
    key2 = sl.shape_key(4096, 4096, torch.float16, False, 1024)
    b.put("dev", key2, {"ms": {"dense": 1.0, "cusparselt": 0.6}, "choice": "cusparselt"})
    b.save()
    a.put("other", key, {"ms": {"dense": 1.0}})
    a.save()
    c = sl.TuneTable.load(path)
    assert c.get("dev", key)["cslt_config"] == [3, 1, 0]
    assert c.get("dev", key2)["choice"] == "cusparselt"
    assert c.get("other", key) == {"ms": {"dense": 1.0}}
    raw = json.loads(path.read_text())
    assert raw["version"] == sl.TuneTable.VERSION


def test_tune_table_ignores_bad_files(tmp_path, caplog):
    path = tmp_path / "sparse_linear.json"
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="ria_kernels"):
        assert sl.TuneTable.load(path).data == {}
    assert "unreadable" in caplog.text
    path.write_text(json.dumps({"version": 999, "sections": {"x": {}}}))
    assert sl.TuneTable.load(path).data == {}


def test_default_cache_path_env(tmp_path, monkeypatch):
    monkeypatch.setenv(sl.ENV_CACHE_DIR, str(tmp_path))
    assert sl.default_cache_path() == tmp_path / "sparse_linear.json"


def _fake_cuda_module(monkeypatch, table, n=32, k=64):
    """A SparseLinear whose selection state looks like an auto-mode CUDA module (no kernels run:
    only backend_for is called), to test the table plumbing on a CPU machine."""
    m = SparseLinear.from_linear(pruned_linear(n, k, dtype=torch.float16, bias=False))
    m._device = torch.device("cuda")
    m._section = "fake-gpu"
    m._forced, m.backend = None, "auto"
    m._unavailable = {"cusparselt": None, "cutlass": None, "dense": None}
    m._memo.clear()
    monkeypatch.setattr(sl, "_capturing", lambda device: False)
    sl.set_tune_table(table)
    return m


def test_measured_table_drives_auto_choice(monkeypatch, tmp_path):
    table = sl.TuneTable(tmp_path / "t.json")
    key = lambda t: sl.shape_key(32, 64, torch.float16, False, t)  # noqa: E731
    table.put("fake-gpu", key(1), {"ms": {"dense": 0.010, "cusparselt": 0.011, "cutlass": 0.012}})
    table.put("fake-gpu", key(1024), {"ms": {"dense": 0.30, "cusparselt": 0.20, "cutlass": 0.25},
                                      "cslt_config": [7, 2, 1]})
    m = _fake_cuda_module(monkeypatch, table)
    monkeypatch.setenv(sl.ENV_AUTOTUNE, "0")  # no timing for buckets without an entry
    assert m.backend_for(1) == "dense"              # dense measured faster at decode size
    assert m.backend_for(1000) == "cusparselt"      # bucket 1024
    assert m._memo[1024] == ("cusparselt", (7, 2, 1))
    assert m.backend_for(100) == "dense"            # bucket 128: no entry, no timing -> dense ...
    assert 128 not in m._memo                       # ... and not memoised: a later eager call may measure


def test_first_use_measures_and_persists(monkeypatch, tmp_path):
    table = sl.TuneTable(tmp_path / "t.json")
    m = _fake_cuda_module(monkeypatch, table)
    calls = []

    def fake_measure(bucket, backends):
        calls.append((bucket, tuple(backends)))
        entry = {"ms": {"dense": 1.0, "cutlass": 0.5, "cusparselt": 0.9}, "cslt_config": [1, 1, 0]}
        table.put(m._section, m._key(bucket), entry)
        table.save()
        return entry

    monkeypatch.setattr(m, "_measure", fake_measure)
    assert m.backend_for(300) == "cutlass"
    assert m.backend_for(500) == "cutlass"  # same bucket: memoised, not re-measured
    assert calls == [(512, ("cusparselt", "cutlass", "dense"))]
    assert sl.TuneTable.load(tmp_path / "t.json").get("fake-gpu", m._key(512))["ms"]["cutlass"] == 0.5
    # a new module of the same shape picks the persisted choice up at construction (compiled code sees it)
    sl.set_tune_table(sl.TuneTable.load(tmp_path / "t.json"))
    m2 = _fake_cuda_module(monkeypatch, sl.get_tune_table())
    m2._load_memo()
    assert m2._memo[512] == ("cutlass", None)


def test_tune_measures_ahead_and_remeasures(monkeypatch, tmp_path):
    table = sl.TuneTable(tmp_path / "t.json")
    m = _fake_cuda_module(monkeypatch, table)
    monkeypatch.setenv(sl.ENV_AUTOTUNE, "0")  # tune() measures even when timing on first use is off
    ms = {"dense": 1.0, "cusparselt": 2.0, "cutlass": 0.5}
    calls = []

    def fake_measure(bucket, backends):
        calls.append(bucket)
        entry = {"ms": dict(ms)}
        table.put(m._section, m._key(bucket), entry)
        return entry

    monkeypatch.setattr(m, "_measure", fake_measure)
    assert m.tune([3, 1000]) == {4: "cutlass", 1024: "cutlass"}
    assert m.tune([4]) == {4: "cutlass"} and calls == [4, 1024]  # memoised
    ms.update(cutlass=1.5)  # the GPU changed its mind: dense is now fastest
    assert m.tune([4], remeasure=True) == {4: "dense"} and calls == [4, 1024, 4]
    m._cslt, m._cutlass = torch.zeros(1), (torch.zeros(1), torch.zeros(1))  # stand-ins for compressed copies
    assert m.release_unused() == ["cusparselt"]  # cutlass still serves bucket 1024
    assert m._cslt is None and "released" in m._unavailable["cusparselt"]


def test_token_bucket():
    assert [sl.token_bucket(t) for t in (1, 2, 3, 8, 9, 129, 8191, 16384)] == [1, 2, 4, 8, 16, 256, 8192, 16384]


# --------------------------------------------------------------------------- the dense path (CPU)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lead", [(1,), (7,), (2, 7), (3, 1, 5)])
@pytest.mark.parametrize("bias", [False, True])
def test_dense_path_matches_masked_linear(dtype, lead, bias):
    k, n = 20, 12  # in_features divisible by 4 but not 16: dense only, any device
    lin = pruned_linear(n, k, bias=bias, dtype=dtype, seed=len(lead) + 3 * bias)
    m = SparseLinear.from_linear(lin)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(*lead, k, generator=g).to(dtype)
    y = m(x)
    assert y.shape == (*lead, n) and y.dtype == dtype and torch.isfinite(y).all()
    ref = sparse_mm_reference(x, lin.weight, lin.bias)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(y.float(), ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(y, F.linear(x, lin.weight, lin.bias))


def test_dense_path_noncontiguous_and_empty():
    lin = pruned_linear(8, 16, seed=4)
    m = SparseLinear.from_linear(lin)
    x = torch.randn(16, 6).T  # [6, 16], non-contiguous
    torch.testing.assert_close(m(x), sparse_mm_reference(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
    assert m(torch.randn(2, 0, 16)).shape == (2, 0, 8)


def test_forward_input_checks():
    m = SparseLinear.from_linear(pruned_linear(8, 16))
    with pytest.raises(RiaInputError, match="last dim in_features=16"):
        m(torch.randn(3, 12))
    with pytest.raises(RiaInputError, match="dtype"):
        m(torch.randn(3, 16, dtype=torch.float64))


def test_tune_on_cpu_is_dense():
    m = SparseLinear.from_linear(pruned_linear(24, 36, dtype=torch.bfloat16))
    assert m.tune([1, 7, 300]) == {1: "dense", 8: "dense", 512: "dense"}
    assert sl.tune_model(nn.Sequential(m), [4]) == {"0": {4: "dense"}}


def test_choice_logged_once(caplog):
    with caplog.at_level(logging.INFO, logger="ria_kernels"):
        SparseLinear.from_linear(pruned_linear(44, 52))
        SparseLinear.from_linear(pruned_linear(44, 52, seed=1))
    lines = [r.getMessage() for r in caplog.records if "SparseLinear [44x52" in r.getMessage()]
    assert len(lines) == 1 and "mode=dense" in lines[0]
    if not CUDA:
        assert "CUDA is not available" in lines[0]


def test_dense_path_under_torch_compile():
    torch._dynamo.reset()
    lin = pruned_linear(12, 32, seed=6)
    m = SparseLinear.from_linear(lin)
    cm = torch.compile(m, fullgraph=True)
    for lead in ((5,), (2, 3)):
        x = torch.randn(*lead, 32)
        torch.testing.assert_close(cm(x), sparse_mm_reference(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- GPU backends
def _skip_unless_backend(backend, n, k, dtype):
    if not CUDA:
        pytest.skip("needs a CUDA GPU")
    reason = sl.backend_unavailable_reasons(torch.device("cuda"), dtype, n, k, (backend,))[backend]
    if reason:
        pytest.skip(f"{backend} unavailable: {reason}")


def _gpu_case(tokens, dtype, bias, n=256, k=512, seed=0):
    lin = pruned_linear(n, k, bias=bias, dtype=dtype, seed=seed, device="cuda")
    g = torch.Generator().manual_seed(seed + tokens)
    x = torch.randn(tokens, k, generator=g).to(dtype).cuda()
    return lin, x


@needs_cuda
@pytest.mark.parametrize("backend", sl.SPARSE_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("tokens", TOKENS)
def test_backend_matches_reference(backend, dtype, bias, tokens):
    _skip_unless_backend(backend, 256, 512, dtype)
    lin, x = _gpu_case(tokens, dtype, bias)
    m = SparseLinear.from_linear(lin, backend=backend)
    assert m.backend == backend and m.weight is None  # forced sparse keeps no dense copy
    poison_allocator(tokens * 256 * 2)
    y = m(x)
    assert y.shape == (tokens, 256) and y.dtype == dtype
    assert_rel_close(y, sparse_mm_reference(x, lin.weight, lin.bias), dtype)
    x3 = x.view(1, tokens, 512)
    y3 = m(x3)  # leading dims: same kernel on the [tokens, K] view
    assert y3.shape == (1, tokens, 256)
    assert_rel_close(y3.view(tokens, 256), sparse_mm_reference(x, lin.weight, lin.bias), dtype)


@needs_cuda
@pytest.mark.parametrize("backend", sl.SPARSE_BACKENDS)
def test_backend_under_torch_compile(backend):
    _skip_unless_backend(backend, 256, 512, torch.bfloat16)
    torch._dynamo.reset()
    lin, x = _gpu_case(129, torch.bfloat16, True, seed=3)
    m = SparseLinear.from_linear(lin, backend=backend)
    m(x)  # eager first: searches the cuSPARSELt config for this bucket
    cm = torch.compile(m, fullgraph=backend != "torch_semi_structured")
    for t in (129, 200):  # same bucket
        xt = torch.randn(t, 512, device="cuda", dtype=torch.bfloat16)
        assert_rel_close(cm(xt), sparse_mm_reference(xt, lin.weight, lin.bias), torch.bfloat16)


@needs_cuda
@pytest.mark.parametrize("backend", sl.SPARSE_BACKENDS)
def test_backend_in_cuda_graph(backend):
    _skip_unless_backend(backend, 256, 512, torch.float16)
    lin, x = _gpu_case(8, torch.float16, True, seed=5)
    m = SparseLinear.from_linear(lin, backend=backend)
    new_x = torch.randn_like(x)
    static_y = cuda_graph_replay(m, x.clone(), new_x)  # config search + plan creation in the warm-up
    assert_rel_close(static_y, sparse_mm_reference(new_x, lin.weight, lin.bias), torch.float16)


@needs_cuda
def test_cusparselt_plan_cache_hit_on_second_call():
    _skip_unless_backend("cusparselt", 256, 512, torch.float16)
    lin, x = _gpu_case(64, torch.float16, True, seed=8)
    m = SparseLinear.from_linear(lin, backend="cusparselt")
    m(x)  # first call: searched config for the bucket, plan created
    h1, m1, s1 = sparse_mm.cslt_cache_stats()
    y = m(x)
    h2, m2, s2 = sparse_mm.cslt_cache_stats()
    assert (h2, m2, s2) == (h1 + 1, m1, s1)
    assert_rel_close(y, sparse_mm_reference(x, lin.weight, lin.bias), torch.float16)
    # the searched config was persisted: a new module (another process, same cache) does not search
    sl.set_tune_table(None)
    m_new = SparseLinear.from_linear(lin, backend="cusparselt")
    m_new(x)
    assert sparse_mm.cslt_cache_stats()[2] == s2


@needs_cuda
def test_auto_mode_tunes_and_never_picks_slower_sparse():
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("2:4 sparse tensor cores need compute capability >= 8.0")
    lin, x = _gpu_case(16, torch.float16, False, n=1024, k=1024, seed=9)
    m = SparseLinear.from_linear(lin)
    choices = m.tune([1, 16, 1024])
    table = sl.TuneTable.load()  # written to the test's cache dir
    for bucket, backend in choices.items():
        entry = table.get(m._section, m._key(bucket))
        assert entry is not None and "dense" in entry["ms"]
        if backend != "dense":
            assert entry["ms"][backend] <= entry["ms"]["dense"] * (1 - sl.SPARSE_MARGIN)
        else:
            assert all(entry["ms"][b] > entry["ms"]["dense"] * (1 - sl.SPARSE_MARGIN)
                       for b in entry["ms"] if b != "dense")
        xt = torch.randn(bucket, 1024, device="cuda", dtype=torch.float16)
        assert_rel_close(m(xt), sparse_mm_reference(xt, lin.weight, lin.bias), torch.float16)
    m2 = SparseLinear.from_linear(lin)
    assert {b: m2._memo[b][0] for b in choices} == choices  # loaded from the on-disk table
