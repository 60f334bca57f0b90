"""SparseLinear: one compressed weight per linear (memory modes, bytes held, .to / state_dict /
compile), pattern validation, backend dispatch (arg > env > auto, measured table against the compact
kernel), CUDA-graph capture rules and the tuner's L2 flush (behind seams on the CPU), signed zeros,
and every backend on the GPU."""
import json
import logging
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ria_kernels import BackendUnavailableError, RiaInputError, SparseLinear
from ria_kernels import sparse_linear as sl
from ria_kernels.sparse_linear import backends as sl_backends, module as sl_module, tuning as sl_tuning
from ria_kernels.ops import sparse_mm
from ria_kernels.ops.sparse24_mm import compress_24, decompress_24
from ria_kernels.ops.sparse_mm import sparse_mm_reference
from conftest import SPARSE_MM_TOKENS, assert_rel_close, cuda_graph_replay, poison_allocator
from sparse_fakes import FakeTensorCores

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
# CPU paths (compact reference, dense) vs the float32 reference: (rtol, atol) by dtype
TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3)}
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
    assert (m.in_features, m.out_features, m.backend, m.memory) == (16, 8, "sparse24", "compact")
    assert m.weight is None  # no dense copy
    assert set(dict(m.named_buffers())) == {"values", "meta"} and isinstance(m.bias, nn.Parameter)
    want = lin.weight.detach().clone()
    with torch.no_grad():
        lin.weight.zero_()
    torch.testing.assert_close(m.dense_weight(), want, rtol=0, atol=0)  # no aliasing of the source linear
    assert "memory=compact, meta=rowmajor, backend=sparse24" in repr(m)
    d = SparseLinear.from_linear(pruned_linear(8, 16), memory="dense")
    assert d.backend == "dense" and isinstance(d.weight, nn.Parameter) and not d.weight.requires_grad


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
@pytest.mark.parametrize("backend", sl.TENSOR_CORE_BACKENDS)
def test_forced_unavailable_backend_raises(backend, monkeypatch):
    lin = pruned_linear(32, 64, dtype=torch.float16)
    with pytest.raises(BackendUnavailableError, match=f"backend '{backend}' forced but unavailable: CUDA is not"):
        SparseLinear.from_linear(lin, backend=backend)
    monkeypatch.setenv(sl.ENV_BACKEND, backend)
    with pytest.raises(BackendUnavailableError, match="CUDA is not available"):
        SparseLinear.from_linear(lin)
    assert SparseLinear.from_linear(lin, backend="dense").backend == "dense"  # argument beats env


def test_bad_backend_and_old_memory_name(caplog, monkeypatch):
    from ria_kernels import _logging
    monkeypatch.setattr(_logging, "_seen", set())  # log_once: a test before this one may have logged it
    lin = pruned_linear(8, 16)
    with pytest.raises(RiaInputError, match="backend must be one of"):
        SparseLinear.from_linear(lin, backend="sparse")
    with caplog.at_level(logging.WARNING, logger="ria_kernels"):
        m = SparseLinear.from_linear(lin, memory="fast")  # the old name of the cuSPARSELt mode
    assert m.memory == "cusparselt"
    assert any("memory='fast' is now memory='cusparselt'" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("memory, backend, match", [
    ("compact", "cusparselt", "needs memory='cusparselt'"),
    ("compact", "dense", "needs memory='dense'"),
    ("fast", "dense", "needs memory='dense'"),
    ("cusparselt", "dense", "needs memory='dense'"),
    ("dense", "cutlass", "needs memory='compact' or 'cusparselt'"),
    ("dense", "torch_semi_structured", "needs memory='compact' or 'cusparselt'"),
    ("small", None, "memory must be one of"),
    (3, None, "memory must be one of"),
])
def test_memory_backend_contradictions(memory, backend, match):
    with pytest.raises(RiaInputError, match=match):
        SparseLinear.from_linear(pruned_linear(8, 16), memory=memory, backend=backend)


def test_resolve_memory_defaults():
    assert sl.resolve_memory(None, None) == sl.DEFAULT_MEMORY == "compact"
    assert sl.resolve_memory(None, "dense") == "dense"
    assert sl.resolve_memory(None, "cusparselt") == "cusparselt"
    assert sl.resolve_memory(None, "cutlass") == "compact"  # runs on the compact weight itself
    assert sl.resolve_memory(None, "torch_semi_structured") == "compact"
    assert sl.resolve_memory(None, "sparse24") == "compact"
    assert sl.resolve_memory("fast", "sparse24") == "cusparselt"
    assert sl.resolve_memory("cusparselt", "cutlass") == "cusparselt"


def test_unavailable_reasons_name_the_limit():
    cpu = sl.backend_unavailable_reasons(torch.device("cpu"), torch.float16, 32, 64)
    assert cpu["dense"] is None and cpu["sparse24"] is None and all(cpu[b] for b in sl.TENSOR_CORE_BACKENDS)
    if CUDA and torch.cuda.get_device_capability()[0] >= 8:
        r = sl.backend_unavailable_reasons(torch.device("cuda"), torch.float32, 32, 64)
        assert "float16/bfloat16" in r["cusparselt"]
        r = sl.backend_unavailable_reasons(torch.device("cuda"), torch.float16, 24, 64)
        assert "out_features % 16" in r["cusparselt"] and "out_features % 32" in r["cutlass"]


# --------------------------------------------------------------------------- choose_backend (injected timings)
AVAIL = {"sparse24": None, "cusparselt": None, "cutlass": None, "torch_semi_structured": None}


def test_choose_backend_forced():
    assert sl.choose_backend("cutlass", device_type="cuda", unavailable=AVAIL) == ("cutlass", "forced")
    with pytest.raises(BackendUnavailableError, match="forced but unavailable: extension not built"):
        sl.choose_backend("cusparselt", device_type="cuda", unavailable={**AVAIL, "cusparselt": "extension not built"})
    with pytest.raises(BackendUnavailableError, match="not prepared"):
        sl.choose_backend("dense", device_type="cuda", unavailable=AVAIL)
    with pytest.raises(RiaInputError, match="backend must be one of"):
        sl.choose_backend("fast", device_type="cuda", unavailable=AVAIL)


def test_choose_backend_auto_rules():
    prefill = {"sparse24": 1.0, "cusparselt": 0.7, "cutlass": 0.6, "torch_semi_structured": 0.8}
    assert sl.choose_backend(None, device_type="cpu", unavailable=AVAIL, timings=prefill)[0] == "sparse24"
    assert sl.choose_backend(None, device_type="cuda", unavailable=AVAIL, timings=prefill)[0] == "cutlass"
    # the fastest copy is not held: the next one runs
    assert sl.choose_backend(None, device_type="cuda", unavailable={**AVAIL, "cutlass": "not held"},
                             timings=prefill)[0] == "cusparselt"
    # the compact kernel measured faster (decode-sized): compact, never a slower tensor-core kernel
    decode = {"sparse24": 0.010, "cusparselt": 0.012, "cutlass": 0.011, "torch_semi_structured": 0.02}
    backend, why = sl.choose_backend(None, device_type="cuda", unavailable=AVAIL, timings=decode)
    assert backend == "sparse24" and "not 3% faster" in why
    close = {"sparse24": 1.0, "cusparselt": 0.99}  # within the noise margin: compact
    assert sl.choose_backend(None, device_type="cuda", unavailable=AVAIL, timings=close)[0] == "sparse24"
    # no timings, no way to measure (compile / capture): the compact kernel, never dense
    backend, why = sl.choose_backend(None, device_type="cuda", unavailable=AVAIL)
    assert backend == "sparse24" and "timing is not possible" in why
    # compact memory mode: no tensor-core copy at all, with the reasons
    backend, why = sl.choose_backend(None, device_type="cuda",
                                     unavailable={"sparse24": None, "cutlass": "memory='compact' holds none"})
    assert backend == "sparse24" and "holds none" in why
    # dense is never an automatic choice, even when timed faster
    assert sl.choose_backend(None, device_type="cuda", unavailable={**AVAIL, "dense": None},
                             timings={"sparse24": 1.0, "dense": 0.1, "cusparselt": 2.0})[0] == "sparse24"


def test_choose_backend_static_default_without_measurements():
    """Nothing measured, nothing measurable: CUTLASS (it reads the compact weight) from
    STATIC_TENSOR_CORE_MIN_TOKENS tokens up, the compact kernel below; never cuSPARSELt untimed."""
    low = sl.STATIC_TENSOR_CORE_MIN_TOKENS
    both = {"sparse24": None, "cutlass": None, "cusparselt": "memory='compact' holds no cuSPARSELt copy"}
    backend, why = sl.choose_backend(None, device_type="cuda", unavailable=both, bucket=low)
    assert backend == "cutlass" and "static default" in why
    assert sl.choose_backend(None, device_type="cuda", unavailable=both, bucket=4 * low)[0] == "cutlass"
    assert sl.choose_backend(None, device_type="cuda", unavailable=both, bucket=low // 2)[0] == "sparse24"
    assert sl.choose_backend(None, device_type="cuda", unavailable=both)[0] == "sparse24"  # no bucket given
    assert sl.choose_backend(None, device_type="cpu", unavailable=both, bucket=4 * low)[0] == "sparse24"
    cslt_only = {"sparse24": None, "cutlass": "not built", "cusparselt": None}
    assert sl.choose_backend(None, device_type="cuda", unavailable=cslt_only, bucket=4 * low)[0] == "sparse24"
    measured = {"sparse24": 1.0, "cutlass": 2.0}  # a measurement wins over the static default
    assert sl.choose_backend(None, device_type="cuda", unavailable=both, timings=measured,
                             bucket=4 * low)[0] == "sparse24"


def test_choose_backend_measures_only_usable_candidates():
    seen = []

    def measure(cands):
        seen.append(list(cands))
        return {"sparse24": 2.0, "cusparselt": 1.0}

    unavailable = {"sparse24": None, "cusparselt": None, "cutlass": "built without CUTLASS"}
    assert sl.choose_backend(None, device_type="cuda", unavailable=unavailable, measure=measure)[0] == "cusparselt"
    assert seen == [["cusparselt", "sparse24"]]


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


# --------------------------------------------------------------------------- a stand-in GPU (seams)
def _fast_module(monkeypatch, table, n=32, k=64, bias=False, runnable=("cusparselt",), dtype=torch.float16,
                 **kw):
    fake = FakeTensorCores(monkeypatch, runnable)
    m = SparseLinear.from_linear(pruned_linear(n, k, dtype=dtype, bias=bias), memory="cusparselt", **kw)
    return fake.as_gpu(m, monkeypatch, table), fake


def dense_linear_bytes(lin: nn.Linear) -> int:
    return sum(t.numel() * t.element_size() for t in lin.parameters())


# --------------------------------------------------------------------------- one copy in the device's order (#22)
def _one_copy_module(monkeypatch, layout, n=256, k=512, dtype=torch.float16, bias=False, memory=None, **kw):
    fake = FakeTensorCores(monkeypatch, runnable=("cutlass",), cutlass_layout=layout)
    lin = pruned_linear(n, k, dtype=dtype, bias=bias)
    return SparseLinear.from_linear(lin, memory=memory, **kw), lin, fake


@pytest.mark.parametrize("layout", ["sm80", "sm90"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_compact_mode_holds_one_copy_in_the_cutlass_order(monkeypatch, tmp_path, layout, dtype, bias):
    """FAKED: only that the extension's CUTLASS kernel can run here, which order it reads and its matmul
    (the float32 reference of what it is handed). Real: the layout, the bytes, the state_dict, the dispatch."""
    monkeypatch.setenv(sl.ENV_AUTOTUNE, "0")  # nothing timed: the static default decides
    m, lin, fake = _one_copy_module(monkeypatch, layout, dtype=dtype, bias=bias)
    values, meta = compress_24(lin.weight.detach())
    assert m.memory == "compact" and m.meta_layout == layout and m.backend == "auto"
    assert torch.equal(m.values, values) and torch.equal(m.compact_meta(), meta)
    assert torch.equal(m.meta, sl.compact_to_layout(meta, 256, 512, layout)) and not torch.equal(
        m.meta.view(torch.uint8).reshape(-1), meta.reshape(-1))  # really permuted
    held = m.held_bytes()
    assert set(held) == {"values", "meta"} | ({"bias"} if bias else set())  # no second buffer of any kind
    assert held["values"] + held["meta"] == 256 * (512 + 512 // 8)
    assert sum(held.values()) / dense_linear_bytes(lin) <= 0.57
    sd = m.state_dict()
    assert set(sd) == {"values", "meta"} | ({"bias"} if bias else set())
    assert sd["meta"].dtype == torch.uint8 and torch.equal(sd["meta"], meta)  # the checkpoint stays row-major
    fake.as_gpu(m, monkeypatch, sl.TuneTable(tmp_path / "t.json"))
    assert m.backend_for(1) == "sparse24" and m.backend_for(sl.STATIC_TENSOR_CORE_MIN_TOKENS // 2) == "sparse24"
    assert m.backend_for(sl.STATIC_TENSOR_CORE_MIN_TOKENS) == "cutlass" and m.backend_for(1000) == "cutlass"
    ref = lin.float()
    for tokens, backend in ((3, "sparse24"), (16, "cutlass"), (100, "cutlass")):
        x = torch.randn(tokens, 512, dtype=dtype)
        calls = len(fake.cutlass_calls)
        got = m(x)
        assert len(fake.cutlass_calls) == calls + (backend == "cutlass")
        assert_rel_close(got, ref(x.float()), dtype)
    assert all(dt == m.meta.dtype for _, dt in fake.cutlass_calls)  # CUTLASS got the module's own metadata


@pytest.mark.parametrize("layout", ["sm80", "sm90"])
def test_device_order_state_dict_round_trip_and_to(monkeypatch, layout):
    m, lin, _ = _one_copy_module(monkeypatch, layout, bias=True)
    m2, _, _ = _one_copy_module(monkeypatch, layout, bias=True)  # another weight, same shape and order
    m2.load_state_dict(m.state_dict())  # row-major in the dict, laid out again on load
    assert m2.meta_layout == layout and torch.equal(m2.meta, m.meta) and torch.equal(m2.values, m.values)
    assert torch.equal(m2.dense_weight(), lin.weight.detach())
    values, meta = compress_24(lin.weight.detach())
    sd = m2.state_dict()  # the bytes of the portable format, whatever order the module holds
    assert torch.equal(sd["values"], values) and torch.equal(sd["meta"], meta) and torch.equal(sd["bias"], lin.bias)
    m.to(torch.bfloat16)  # values cast; meta re-laid from its own order, unchanged
    assert m.meta_layout == layout and m.values.dtype == torch.bfloat16
    assert torch.equal(m.dense_weight(), lin.weight.detach().to(torch.bfloat16))


def test_second_cutlass_meta_where_the_compact_kernel_cannot_read_the_order(monkeypatch, tmp_path, caplog):
    """Until the compact kernel reads a CUTLASS order, the module keeps row-major meta and a second metadata
    buffer for CUTLASS (+1/16 of the dense bytes), and says so; release_unused() frees it when unused."""
    from ria_kernels import _logging
    monkeypatch.setattr(_logging, "_seen", set())
    monkeypatch.setattr(sl_module, "compact_kernel_reads", lambda device, layout: False)
    with caplog.at_level(logging.WARNING, logger="ria_kernels"):
        m, lin, fake = _one_copy_module(monkeypatch, "sm90")
    assert m.meta_layout == "rowmajor" and m.cutlass_meta is not None
    assert torch.equal(m.cutlass_meta, sl.compact_to_layout(m.meta, 256, 512, "sm90"))
    assert any("cannot read sm90 metadata yet" in r.getMessage() for r in caplog.records)
    held = m.held_bytes()
    assert set(held) == {"values", "meta", "cutlass_meta"}
    assert sum(held.values()) / dense_linear_bytes(lin) <= 0.63 and set(m.state_dict()) == {"values", "meta"}
    monkeypatch.setenv(sl.ENV_AUTOTUNE, "0")
    fake.as_gpu(m, monkeypatch, sl.TuneTable(tmp_path / "t.json"))
    x = torch.randn(80, 512, dtype=torch.float16)
    assert_rel_close(m(x), lin.float()(x.float()), torch.float16)
    assert fake.cutlass_calls == [(80, torch.uint8)]
    m._memo.clear()
    m._memo[1] = ("sparse24", None)
    assert m.release_unused() == ["cutlass"] and m.cutlass_meta is None and m.backend == "sparse24"


def test_dense_mode_and_forced_compact_keep_their_meaning_with_cutlass(monkeypatch):
    d, _, _ = _one_copy_module(monkeypatch, "sm90", memory="dense")
    assert d.meta_layout == "rowmajor" and d.backend == "dense"  # the F.linear reference keeps the plain format
    f, _, _ = _one_copy_module(monkeypatch, "sm90", backend="sparse24")
    assert f.backend == "sparse24" and "backend 'sparse24' forced" in f._unavailable["cutlass"]
    c, _, _ = _one_copy_module(monkeypatch, "sm80", backend="cutlass")
    assert c.memory == "compact" and c.backend == "cutlass" and c.meta_layout == "sm80"
    r, _, _ = _one_copy_module(monkeypatch, "sm80", n=48, k=96)  # a shape the sm80 kernel does not take
    assert r.meta_layout == "rowmajor" and r.backend == "sparse24"
    p, _, _ = _one_copy_module(monkeypatch, "sm90", n=72, k=144)  # sm90 would pad its metadata to 128 x 256
    assert p.meta_layout == "rowmajor" and "needs padding" in p._unavailable["cutlass"]
    assert sum(p.held_bytes().values()) == 72 * (144 + 144 // 8)


# --------------------------------------------------------------------------- bytes held (one compressed weight)
@pytest.mark.parametrize("dtype, bound", [(torch.float16, 0.57), (torch.bfloat16, 0.57), (torch.float32, 0.57)])
@pytest.mark.parametrize("bias", [False, True])
def test_compact_bytes(dtype, bound, bias):
    lin = pruned_linear(256, 512, bias=bias, dtype=dtype)
    m = SparseLinear.from_linear(lin, memory="compact")
    held = m.held_bytes()
    assert set(held) == {"values", "meta"} | ({"bias"} if bias else set())
    ratio = sum(held.values()) / dense_linear_bytes(lin)
    assert ratio <= bound, held
    if dtype != torch.float32:  # values K/2 * 2 bytes + indices K/8 bytes per row
        assert held["values"] + held["meta"] == 256 * (512 + 512 // 8)


@pytest.mark.parametrize("bias", [False, True])
def test_fast_bytes_with_fake_cusparselt(monkeypatch, tmp_path, bias):
    """FAKED: the cuSPARSELt copy is a uint8 buffer of cuSPARSELt's documented compressed size (cslt_bytes);
    what is real is everything the module holds besides it, and that it holds exactly one such copy."""
    m, _ = _fast_module(monkeypatch, sl.TuneTable(tmp_path / "t.json"), n=256, k=512, bias=bias)
    lin = pruned_linear(256, 512, dtype=torch.float16, bias=bias)
    held = m.held_bytes()
    assert set(held) == {"values", "meta", "cslt_weight"} | ({"bias"} if bias else set())
    assert m.weight is None and m.backend == "auto"
    assert sum(held.values()) / dense_linear_bytes(lin) <= 1.15
    assert set(m.state_dict()) == {"values", "meta"} | ({"bias"} if bias else set())  # the copy is not saved


def test_cusparselt_mode_on_cpu_holds_compact_only(caplog):
    with caplog.at_level(logging.INFO, logger="ria_kernels"):
        m = SparseLinear.from_linear(pruned_linear(48, 96, dtype=torch.float16), memory="cusparselt")
    assert m.memory == "cusparselt" and m.backend == "sparse24"
    assert set(m.held_bytes()) == {"values", "meta", "bias"} and m.meta_layout == "rowmajor"
    if not CUDA:
        assert any("SparseLinear [48x96" in r.getMessage() and "CUDA is not available" in r.getMessage()
                   for r in caplog.records), "the missing tensor-core copy must be logged"


def test_cusparselt_mode_on_cpu_warns_and_says_compact_only(caplog, monkeypatch):
    """Issue #25 item 5: memory='cusparselt' (formerly 'fast') where no copy can be held is a WARNING (seen
    without -v) and the module's repr says it, instead of silently running as 'compact'."""
    from ria_kernels import _logging
    monkeypatch.setattr(_logging, "_seen", set())  # log_once: a test before this one may have logged it
    with caplog.at_level(logging.WARNING, logger="ria_kernels"):
        m = SparseLinear.from_linear(pruned_linear(48, 96, dtype=torch.float32), memory="cusparselt")
    if CUDA:
        pytest.skip("a CPU-only check: on CUDA the copy is held")
    assert m.cusparselt_without_copy and "no cuSPARSELt copy here" in repr(m)
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("memory='cusparselt' on cpu" in t and "holds no cuSPARSELt copy" in t and "memory='compact'" in t
               for t in msgs), msgs
    assert not SparseLinear.from_linear(pruned_linear(48, 96, dtype=torch.float32)).cusparselt_without_copy


@needs_cuda
def test_fast_mode_bytes_on_gpu():
    _skip_unless_backend("cusparselt", 256, 512, torch.float16)
    lin = pruned_linear(256, 512, dtype=torch.float16, device="cuda", bias=False)
    m = SparseLinear.from_linear(lin, memory="fast")
    assert "cslt_weight" in m.held_bytes()
    assert sum(m.held_bytes().values()) / dense_linear_bytes(lin) <= 1.15


# --------------------------------------------------------------------------- .to / state_dict / compile
def test_state_dict_round_trip_and_to_dtype():
    lin = pruned_linear(24, 32, seed=2)
    m = SparseLinear.from_linear(lin)
    sd = m.state_dict()
    assert set(sd) == {"values", "meta", "bias"}
    other = SparseLinear.from_linear(pruned_linear(24, 32, seed=9))
    other.load_state_dict(sd)
    x = torch.randn(5, 32)
    torch.testing.assert_close(other(x), m(x), rtol=0, atol=0)
    meta_dtype = m.meta.dtype
    m.to(torch.bfloat16)
    assert m.values.dtype == torch.bfloat16 and m.meta.dtype == meta_dtype and m.bias.dtype == torch.bfloat16
    ref = sparse_mm_reference(x.bfloat16(), lin.weight.bfloat16(), lin.bias.bfloat16())
    torch.testing.assert_close(m(x.bfloat16()).float(), ref, rtol=2e-2, atol=2e-2)


def test_from_compressed_matches_from_linear():
    lin = pruned_linear(16, 32, seed=5)
    values, meta = compress_24(lin.weight.detach())
    m = SparseLinear.from_compressed(values, meta, lin.bias)
    x = torch.randn(3, 32)
    torch.testing.assert_close(m(x), SparseLinear.from_linear(lin)(x), rtol=0, atol=0)
    with pytest.raises(RiaInputError, match="values must be a 2-D"):
        SparseLinear.from_compressed(values.reshape(-1), meta)
    with pytest.raises(RiaInputError, match="meta must be a 2-D tensor with 16 rows"):
        SparseLinear.from_compressed(values, meta[:3])


# --------------------------------------------------------------------------- signed zeros (#12 item 9)
def _with_negative_zeros(lin):
    with torch.no_grad():
        w = lin.weight
        w.copy_(torch.where(w == 0, torch.full_like(w, -0.0), w))
    assert bool((torch.signbit(lin.weight) & (lin.weight == 0)).any())
    return lin


def has_negative_zero(t: torch.Tensor) -> bool:
    return bool((torch.signbit(t) & (t == 0)).any())


def test_positive_zeros():
    t = torch.tensor([-0.0, 0.0, -1.5, 2.0, -0.0])
    out = sl.positive_zeros(t)
    assert not has_negative_zero(out) and torch.equal(out, t) and has_negative_zero(t)  # input untouched


def test_every_compression_gets_positive_zeros(monkeypatch, tmp_path):
    lin = _with_negative_zeros(pruned_linear(32, 64, dtype=torch.float16, bias=False))
    m = SparseLinear.from_linear(lin)  # the compact format
    assert not has_negative_zero(m.values) and not has_negative_zero(m.dense_weight())
    # the real _compress_for_backend hands every extension compressor a normalised weight
    seen = []
    monkeypatch.setattr(sparse_mm, "cslt_compress", lambda w: seen.append(("cslt", w)) or torch.zeros(1))
    monkeypatch.setattr(sparse_mm, "cutlass_compress",
                        lambda w: seen.append(("cutlass", w)) or (torch.zeros(1), torch.zeros(1)))

    class FakeSemi:
        @staticmethod
        def from_dense(w):
            seen.append(("torch", w))
            return w

    monkeypatch.setattr(sl_backends, "_torch_semi_class", lambda dtype: FakeSemi)
    for backend in sl.COPY_BACKENDS:
        sl_backends._compress_for_backend(backend, lin.weight.detach())
    sl.torch_semi_structured(lin.weight.detach())
    assert [name for name, _ in seen] == ["cslt", "torch", "torch"]
    with pytest.raises(RiaInputError, match="'cutlass' holds no copy of its own"):
        sl_backends._compress_for_backend("cutlass", lin.weight.detach())  # it reads the compact weight
    for name, w in seen:
        assert not has_negative_zero(w), name
        torch.testing.assert_close(w, lin.weight.detach(), rtol=0, atol=0)


def test_pruning_leaves_no_negative_zeros():
    from conftest import make_calibration, make_tiny_model
    from ria_kernels import prune_model
    model = make_tiny_model("llama", layers=1)
    prune_model(model, make_calibration(2, 8), method="magnitude", sparsity="2:4", progress=False)
    lin = model.model.layers[0].mlp.down_proj.weight
    assert bool((lin == 0).any())
    assert not any(has_negative_zero(p) for n, p in model.named_parameters() if n.endswith("proj.weight"))


# --------------------------------------------------------------------------- measured table (stand-in GPU)
def test_measured_table_drives_auto_choice(monkeypatch, tmp_path):
    table = sl.TuneTable(tmp_path / "t.json")
    key = lambda t: sl.shape_key(32, 64, torch.float16, False, t)  # noqa: E731
    table.put("fake-gpu", key(1), {"ms": {"sparse24": 0.010, "cusparselt": 0.013}})
    table.put("fake-gpu", key(1024), {"ms": {"sparse24": 0.30, "cusparselt": 0.20}, "cslt_config": [7, 2, 1]})
    m, _ = _fast_module(monkeypatch, table)
    monkeypatch.setenv(sl.ENV_AUTOTUNE, "0")  # no timing for buckets without an entry
    assert m.backend_for(1) == "sparse24"           # compact measured faster at decode size
    assert m.backend_for(1000) == "cusparselt"      # bucket 1024
    assert m._memo[1024] == ("cusparselt", (7, 2, 1))
    assert m.backend_for(100) == "sparse24"         # bucket 128: no entry, no timing -> compact ...
    assert 128 not in m._memo                       # ... and not memoised: a later eager call may measure


def test_first_use_measures_and_persists(monkeypatch, tmp_path):
    table = sl.TuneTable(tmp_path / "t.json")
    m, _ = _fast_module(monkeypatch, table)
    calls = []

    def fake_measure(bucket, backends):
        calls.append((bucket, tuple(backends)))
        entry = {"ms": {"sparse24": 1.0, "cusparselt": 0.5}, "cslt_config": [1, 1, 0]}
        table.put(m._section, m._key(bucket), entry)
        table.save()
        return entry

    monkeypatch.setattr(m, "_measure", fake_measure)
    assert m.backend_for(300) == "cusparselt"
    assert m.backend_for(500) == "cusparselt"  # same bucket: memoised, not re-measured
    assert calls == [(512, ("cusparselt", "sparse24"))]
    assert sl.TuneTable.load(tmp_path / "t.json").get("fake-gpu", m._key(512))["ms"]["cusparselt"] == 0.5
    # a new module of the same shape picks the persisted choice up (compiled code sees it)
    m2, _ = _fast_module(monkeypatch, sl.TuneTable.load(tmp_path / "t.json"))
    m2._load_memo()
    assert m2._memo[512] == ("cusparselt", (1, 1, 0))


def test_tune_times_cutlass_on_the_compact_weight_and_keeps_every_buffer(monkeypatch, tmp_path):
    """Issue 22: cuSPARSELt mode's tune() times CUTLASS too -- on the compact weight itself (metadata in the
    sm90 order), so no transient copy is built, nothing is freed, and the bytes stay compact + cuSPARSELt."""
    table = sl.TuneTable(tmp_path / "t.json")
    m, fake = _fast_module(monkeypatch, table, n=256, k=512, runnable=("cusparselt", "cutlass"))
    assert m._held_copies() == ["cusparselt"] and m.meta_layout == "sm90"
    before = m.held_bytes()
    ms = {1: {"sparse24": 1.0, "cusparselt": 2.0, "cutlass": 1.5},
          64: {"sparse24": 1.0, "cusparselt": 0.9, "cutlass": 0.5},
          1024: {"sparse24": 1.0, "cusparselt": 0.4, "cutlass": 0.3},
          4096: {"sparse24": 1.0, "cusparselt": 0.5, "cutlass": 1.2}}
    measured = []

    def fake_measure(bucket, backends):
        measured.append((bucket, tuple(backends)))
        entry = {"ms": {b: ms[bucket][b] for b in backends}, "cslt_config": [2, 1, 0]}
        table.put(m._section, m._key(bucket), entry)
        return entry

    monkeypatch.setattr(m, "_measure", fake_measure)
    got = m.tune([1, 64, 1000, 4096])
    assert [b for _, b in measured] == [("cusparselt", "cutlass", "sparse24")] * 4
    assert got == {1: "sparse24", 64: "cutlass", 1024: "cutlass", 4096: "cusparselt"}
    assert m.held_bytes() == before and not fake.compressed[1:]  # one cuSPARSELt compression, at build time


def test_tune_remeasures_and_release_unused(monkeypatch, tmp_path):
    table = sl.TuneTable(tmp_path / "t.json")
    m, _ = _fast_module(monkeypatch, table)
    monkeypatch.setenv(sl.ENV_AUTOTUNE, "0")  # tune() measures even when timing on first use is off
    ms = {"sparse24": 1.0, "cusparselt": 0.5}
    calls = []

    def fake_measure(bucket, backends):
        calls.append(bucket)
        entry = {"ms": dict(ms), "cslt_config": [0, 1, 0]}
        table.put(m._section, m._key(bucket), entry)
        return entry

    monkeypatch.setattr(m, "_measure", fake_measure)
    assert m.tune([3, 1000]) == {4: "cusparselt", 1024: "cusparselt"}
    assert m.tune([4]) == {4: "cusparselt"} and calls == [4, 1024]  # memoised
    ms.update(cusparselt=1.5)  # the GPU changed its mind
    assert m.tune([4, 1024], remeasure=True) == {4: "sparse24", 1024: "sparse24"}
    assert m.release_unused() == ["cusparselt"] and m.cslt_weight is None
    assert "released" in m._unavailable["cusparselt"] and m.backend == "sparse24"
    assert m.tune([4]) == {4: "sparse24"}


def test_token_bucket():
    assert [sl.token_bucket(t) for t in (1, 2, 3, 8, 9, 129, 8191, 16384)] == [1, 2, 4, 8, 16, 256, 8192, 16384]


# --------------------------------------------------------------------------- CUDA-graph capture (#12 item 5)
def test_capture_never_searches_and_uses_premade_plans(monkeypatch, tmp_path):
    table = sl.TuneTable(tmp_path / "t.json")
    key = lambda t: sl.shape_key(32, 64, torch.float16, False, t)  # noqa: E731
    table.put("fake-gpu", key(16), {"ms": {"sparse24": 1.0, "cusparselt": 0.5}, "cslt_config": [3, 1, 0]})
    m, fake = _fast_module(monkeypatch, table)
    monkeypatch.setattr(m, "_measure", lambda *a: pytest.fail("timed inside a capture"))
    monkeypatch.setattr(m, "_search_cslt", lambda *a: pytest.fail("searched inside a capture"))
    lin_ref = m.dense_weight()
    x = torch.randn(12, 64, dtype=torch.float16)
    monkeypatch.setattr(sl_module, "_capturing", lambda device: True)
    # bucket 16 is tuned for cuSPARSELt but no plan was made for 12 tokens (padded 16): compact kernel
    assert m.backend_for(12) == "sparse24"
    assert m._memo[16] == ("cusparselt", (3, 1, 0))  # the tuned choice itself is kept for later
    y = m(x)
    assert fake.cslt_calls == []
    torch.testing.assert_close(y.float(), sparse_mm_reference(x, lin_ref), rtol=2e-3, atol=2e-3)
    # an untuned bucket under capture: the compact kernel, not memoised, nothing timed
    assert m.backend_for(100) == "sparse24" and 128 not in m._memo
    # eager warm-up at 12 tokens makes the plan; the capture then replays it
    monkeypatch.setattr(sl_module, "_capturing", lambda device: False)
    m(x)
    assert fake.cslt_calls == [(12, (3, 1, 0))]
    monkeypatch.setattr(sl_module, "_capturing", lambda device: True)
    assert m.backend_for(12) == "cusparselt" and m.backend_for(14) == "cusparselt"  # same padded count 16
    assert m.backend_for(9) == "cusparselt"
    assert m._plan_key(9, (3, 1, 0)) == m._plan_key(16, (3, 1, 0))


def test_capture_forced_cusparselt_refuses_without_plan(monkeypatch, tmp_path):
    table = sl.TuneTable(tmp_path / "t.json")
    fake = FakeTensorCores(monkeypatch)
    m = fake.as_gpu(SparseLinear.from_linear(pruned_linear(32, 64, dtype=torch.float16, bias=False),
                                             backend="cusparselt"), monkeypatch, table, capturing=True)
    assert m.memory == "cusparselt" and m.backend == "cusparselt"
    monkeypatch.setattr(m, "_search_cslt", lambda *a: pytest.fail("searched inside a capture"))
    with pytest.raises(BackendUnavailableError, match="no cuSPARSELt config was searched.*CUDA-graph capture"):
        m(torch.randn(4, 64, dtype=torch.float16))
    # searched eagerly, but no plan for this token count yet: still refused inside the capture
    monkeypatch.setattr(sl_module, "_capturing", lambda device: False)
    monkeypatch.setattr(m, "_search_cslt", lambda t: (5, 1, 0))
    assert m.backend_for(4) == "cusparselt" and m._memo[4] == ("cusparselt", (5, 1, 0))
    monkeypatch.setattr(sl_module, "_capturing", lambda device: True)
    with pytest.raises(BackendUnavailableError, match="no cuSPARSELt plan was made for 4 tokens"):
        m(torch.randn(4, 64, dtype=torch.float16))
    monkeypatch.setattr(sl_module, "_capturing", lambda device: False)
    assert m.prepare_capture([4]) == {4: "cusparselt"}  # eager run at the exact count makes the plan
    monkeypatch.setattr(sl_module, "_capturing", lambda device: True)
    m(torch.randn(4, 64, dtype=torch.float16))
    assert fake.cslt_calls == [(4, (5, 1, 0)), (4, (5, 1, 0))]


# --------------------------------------------------------------------------- the tuner's L2 flush (#12 item 7)
class FakeEvent:
    """A CUDA event stand-in: records its position in a shared log; elapsed = scripted per rep."""

    def __init__(self, log, durations):
        self.log, self.durations = log, durations

    def record(self):
        self.log.append("record")
        self.at = len(self.log)

    def elapsed_time(self, other):
        return self.durations[(other.at, self.at)] if (other.at, self.at) in self.durations else float(other.at - self.at)


def test_time_ms_flushes_l2_before_every_timed_call():
    log = []
    calls = iter(range(1000))

    def fn():
        log.append(f"fn{next(calls)}")

    flushes = []

    def flush():
        flushes.append(len(log))
        log.append("flush")

    ms = sl_tuning._time_ms(fn, flush=flush, target_ms=0.0, min_reps=7, max_reps=7,
                     new_event=lambda: FakeEvent(log, {}), synchronize=lambda: log.append("sync"))
    timed = [i for i, e in enumerate(log) if e.startswith("fn")][2:]  # after warm-up and the estimate
    assert len(timed) == 7
    for i in timed:  # every timed call: flush, start event, the call, end event -- the flush not timed
        assert log[i - 2] == "flush" and log[i - 1] == "record" and log[i + 1] == "record"
    assert ms == 2.0  # median of single-call intervals (record, fn, record)


def test_l2_flusher_buffer_exceeds_l2(monkeypatch):
    monkeypatch.setattr(sl_tuning, "l2_cache_bytes", lambda device: 1 << 20)
    monkeypatch.setattr(sl_tuning, "_FLUSH_BUFFERS", {})
    flush = sl.l2_flusher(torch.device("cpu"))
    (buf,) = sl_tuning._FLUSH_BUFFERS.values()
    assert buf.numel() * buf.element_size() == 2 << 20 > sl_tuning.l2_cache_bytes("cpu")
    buf.fill_(7)
    flush()  # writes the whole buffer
    assert int(buf.max()) == 0
    assert sl.l2_flusher(torch.device("cpu")).__self__ is buf  # allocated once


def test_measure_times_every_candidate_with_the_flush(monkeypatch, tmp_path):
    table = sl.TuneTable(tmp_path / "t.json")
    m, _ = _fast_module(monkeypatch, table)
    monkeypatch.setattr(m, "_search_cslt", lambda t: (1, 1, 0))
    flush = object()
    monkeypatch.setattr(sl_module, "l2_flusher", lambda device: flush)
    seen = []

    def fake_time(fn, *, flush):
        seen.append(flush)
        fn()  # runs the backend on the example (fake cuSPARSELt / compact reference)
        return {0: 0.5, 1: 1.0}[len(seen) - 1]

    monkeypatch.setattr(sl_module, "_time_ms", fake_time)
    entry = m._measure(8, ["cusparselt", "sparse24"])
    assert seen == [flush, flush]
    assert entry["ms"] == {"cusparselt": 0.5, "sparse24": 1.0} and entry["choice"] == "cusparselt"
    assert entry["cslt_config"] == [1, 1, 0]


# --------------------------------------------------------------------------- the CPU paths
@pytest.mark.parametrize("memory", ["compact", "dense"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lead", [(1,), (7,), (2, 7), (3, 1, 5)])
@pytest.mark.parametrize("bias", [False, True])
def test_cpu_path_matches_masked_linear(dtype, lead, bias, memory):
    k, n = 20, 12  # in_features divisible by 4 but not 16
    lin = pruned_linear(n, k, bias=bias, dtype=dtype, seed=len(lead) + 3 * bias)
    m = SparseLinear.from_linear(lin, memory=memory)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(*lead, k, generator=g).to(dtype)
    y = m(x)
    assert y.shape == (*lead, n) and y.dtype == dtype and torch.isfinite(y).all()
    ref = sparse_mm_reference(x, lin.weight, lin.bias)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(y.float(), ref, rtol=rtol, atol=atol)


def test_cpu_path_noncontiguous_and_empty():
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
    with pytest.raises(RiaInputError, match="weight dtype must be one of"):
        SparseLinear.from_linear(pruned_linear(8, 16, dtype=torch.float64))


def test_tune_on_cpu_is_compact():
    m = SparseLinear.from_linear(pruned_linear(24, 36, dtype=torch.bfloat16), memory="fast")
    assert m.tune([1, 7, 300]) == {1: "sparse24", 8: "sparse24", 512: "sparse24"}
    assert sl.tune_model(nn.Sequential(m), [4]) == {"0": {4: "sparse24"}}


def test_choice_logged_once(caplog):
    with caplog.at_level(logging.INFO, logger="ria_kernels"):
        SparseLinear.from_linear(pruned_linear(44, 52))
        SparseLinear.from_linear(pruned_linear(44, 52, seed=1))
        SparseLinear.from_linear(pruned_linear(44, 52, seed=1))(torch.randn(3, 52))
    lines = [r.getMessage() for r in caplog.records if "SparseLinear [44x52" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "memory=compact, backend=sparse24" in lines[0] and "tokens<=4: backend=sparse24" in lines[1]


@pytest.mark.parametrize("memory", ["compact", "dense"])
def test_cpu_path_under_torch_compile(memory):
    torch._dynamo.reset()
    lin = pruned_linear(12, 32, seed=6)
    m = SparseLinear.from_linear(lin, memory=memory)
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


GPU_BACKENDS = ("sparse24", *sl.TENSOR_CORE_BACKENDS)


@needs_cuda
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("tokens", TOKENS)
def test_backend_matches_reference(backend, dtype, bias, tokens):
    _skip_unless_backend(backend, 256, 512, dtype)
    lin, x = _gpu_case(tokens, dtype, bias)
    m = SparseLinear.from_linear(lin, backend=backend)
    assert m.backend == backend and m.weight is None  # a forced sparse backend keeps no dense copy
    poison_allocator(tokens * 256 * 2)
    y = m(x)
    assert y.shape == (tokens, 256) and y.dtype == dtype
    assert_rel_close(y, sparse_mm_reference(x, lin.weight, lin.bias), dtype)
    x3 = x.view(1, tokens, 512)
    y3 = m(x3)  # leading dims: same kernel on the [tokens, K] view
    assert y3.shape == (1, tokens, 256)
    assert_rel_close(y3.view(tokens, 256), sparse_mm_reference(x, lin.weight, lin.bias), dtype)


@needs_cuda
@pytest.mark.parametrize("backend", GPU_BACKENDS)
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
@pytest.mark.parametrize("backend", GPU_BACKENDS)
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
def test_fast_mode_tunes_and_never_picks_slower_than_compact():
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("2:4 sparse tensor cores need compute capability >= 8.0")
    lin, x = _gpu_case(16, torch.float16, False, n=1024, k=1024, seed=9)
    m = SparseLinear.from_linear(lin, memory="fast")
    choices = m.tune([1, 16, 1024])
    assert len(m._held_copies()) <= 1 and m.weight is None
    assert sum(m.held_bytes().values()) <= 1.15 * lin.weight.numel() * lin.weight.element_size()
    table = sl.TuneTable.load()  # written to the test's cache dir
    for bucket, backend in choices.items():
        entry = table.get(m._section, m._key(bucket))
        assert entry is not None and "sparse24" in entry["ms"]
        if backend != "sparse24":
            assert entry["ms"][backend] <= entry["ms"]["sparse24"] * (1 - sl.SPARSE_MARGIN)
        xt = torch.randn(bucket, 1024, device="cuda", dtype=torch.float16)
        assert_rel_close(m(xt), sparse_mm_reference(xt, lin.weight, lin.bias), torch.float16)


@needs_cuda
def test_fast_mode_in_cuda_graph_untuned_bucket_runs_compact():
    """An untuned bucket captured in a graph runs the compact kernel (no search / plan in the capture)."""
    _skip_unless_backend("cusparselt", 256, 512, torch.float16)
    lin, x = _gpu_case(8, torch.float16, True, seed=12)
    m = SparseLinear.from_linear(lin, memory="fast")
    new_x = torch.randn_like(x)
    os_env = os.environ.get(sl.ENV_AUTOTUNE)
    os.environ[sl.ENV_AUTOTUNE] = "0"
    try:
        static_y = cuda_graph_replay(m, x.clone(), new_x)
    finally:
        if os_env is None:
            del os.environ[sl.ENV_AUTOTUNE]
        else:
            os.environ[sl.ENV_AUTOTUNE] = os_env
    assert m.backend_for(8) == "sparse24"
    assert_rel_close(static_y, sparse_mm_reference(new_x, lin.weight, lin.bias), torch.float16)


def test_forced_compact_kernel_holds_no_copy(monkeypatch, tmp_path):
    FakeTensorCores(monkeypatch, runnable=("cusparselt",))
    m = SparseLinear.from_linear(pruned_linear(32, 64, dtype=torch.float16), memory="fast", backend="sparse24")
    assert m.backend == "sparse24" and m._held_copies() == [] and set(m.held_bytes()) == {"values", "meta", "bias"}
    auto = SparseLinear.from_linear(pruned_linear(32, 64, dtype=torch.float16), memory="fast")
    assert auto._held_copies() == ["cusparselt"]


@pytest.mark.parametrize("meta_dtype, arch", [(torch.uint8, "sm90"), (torch.int16, "sm80")])
def test_cutlass_matmul_picks_the_tile_by_token_count_and_passes_a_workspace(monkeypatch, meta_dtype, arch):
    """The hot path's config choice (sparse_mm.cutlass_config_for) and workspace handling, with the extension's
    op and its workspace-size query stood in for (no GPU here)."""
    calls = []
    monkeypatch.setattr(sparse_mm, "cutlass_mm_op", lambda meta: lambda *a: calls.append(a) or "y")
    monkeypatch.setattr(sparse_mm, "cutlass_workspace_size", lambda *a: 4096)
    monkeypatch.setattr(sl_backends, "_sm_count", lambda device: 132)
    values = torch.zeros(256, 256, dtype=torch.float16)
    meta = torch.zeros(4, 4, dtype=meta_dtype)
    for t in (1, 16, 40, 64, 65, 1000):
        calls.clear()
        assert sl_backends._cutlass_matmul(torch.zeros(t, 512, dtype=torch.float16), values, meta, None) == "y"
        (args,) = calls
        config, split_k = sparse_mm.cutlass_config_for(arch, t, 256, 512, 132)
        if config == 0:
            assert t > 64 and len(args) == 5  # the prefill tile: no workspace
        else:
            assert t <= 64 and args[5:7] == (config, split_k)
            assert args[7].dtype == torch.uint8 and args[7].numel() == 4096
