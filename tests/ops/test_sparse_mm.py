"""The 2:4 sparse matmul ops of the CUDA extension: reference, wrappers' checks, fake
implementations (CPU, with a scratch op namespace), and every op on the GPU."""
import os
import shutil
import subprocess
import sys
import types

import pytest
import torch

from ria_kernels import BackendUnavailableError, RiaInputError
from ria_kernels.ops import sparse_mm
from ria_kernels.ops.sparse_mm import sparse_mm_reference
from conftest import SPARSE_MM_TOKENS, assert_rel_close, cuda_graph_replay, poison_allocator

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
TOKENS = SPARSE_MM_TOKENS  # tolerances: conftest.SPARSE_MM_REL (used by assert_rel_close)


def pruned_24(n, k, dtype=torch.float32, seed=0, device="cpu"):
    """Random [n, k] weight with exactly 2 kept of every 4 consecutive input weights."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    keep = torch.rand(n, k // 4, 4, generator=g).argsort(-1).argsort(-1) < 2
    return (w * keep.reshape(n, k)).to(dtype).to(device)


def _ext_reason():
    if not CUDA:
        return "needs a CUDA GPU"
    return None if sparse_mm.load_ops() else f"extension unavailable: {sparse_mm.extension_status()}"


def _skip_unless(backend):
    r = _ext_reason()
    if r:
        pytest.skip(r)
    if backend == "cusparselt" and not sparse_mm.cslt_available():
        pytest.skip("extension built without cuSPARSELt")
    if backend == "cutlass" and not sparse_mm.cutlass_available():
        pytest.skip("extension built without its CUTLASS kernel")
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        pytest.skip("2:4 sparse tensor cores need compute capability >= 8.0")


# --------------------------------------------------------------------------- CPU
def test_reference_matches_float64():
    w = pruned_24(12, 16, seed=1)
    x = torch.randn(2, 5, 16, dtype=torch.bfloat16)
    b = torch.randn(12, dtype=torch.bfloat16)
    a = torch.rand(12) + 0.5
    y = sparse_mm_reference(x, w, b, a)
    assert y.dtype == torch.float32 and y.shape == (2, 5, 12)
    exp = (x.double() @ w.double().T) * a.double() + b.double()
    torch.testing.assert_close(y.double(), exp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sparse_mm_reference(x, w).double(), x.double() @ w.double().T, rtol=1e-5, atol=1e-5)


def test_wrapper_input_checks():
    w = pruned_24(16, 32, torch.float16)
    with pytest.raises(RiaInputError, match="dtype must be float16 or bfloat16"):
        sparse_mm.cslt_compress(w.float())
    with pytest.raises(RiaInputError, match="2-D"):
        sparse_mm.cutlass_compress(w[0])
    if not CUDA:
        with pytest.raises(RiaInputError, match="CUDA tensor"):
            sparse_mm.cslt_compress(w)
    comp = torch.zeros(64, dtype=torch.uint8)
    x = torch.randn(3, 32, dtype=torch.float16)
    with pytest.raises(RiaInputError, match="x must be 2-D"):
        sparse_mm.cslt_mm(x[None], comp, 16)
    with pytest.raises(RiaInputError, match="x dtype"):
        sparse_mm.cslt_mm(x.float(), comp, 16)
    with pytest.raises(RiaInputError, match=r"bias must be \[16\]"):
        sparse_mm.cslt_mm(x, comp, 16, bias=torch.zeros(15, dtype=torch.float16))
    with pytest.raises(RiaInputError, match=r"alpha must be \[16\] float32"):
        sparse_mm.cslt_mm(x, comp, 16, alpha=torch.ones(16, dtype=torch.float16))
    with pytest.raises(RiaInputError, match="row-major contiguous"):
        sparse_mm.cslt_mm(torch.randn(32, 3, dtype=torch.float16).T, comp, 16)
    with pytest.raises(RiaInputError, match="config"):
        sparse_mm.cslt_mm(x, comp, 16, config=(0, 1))
    with pytest.raises(RiaInputError, match=r"values must be \[N, K/2\]"):
        sparse_mm.cutlass_sparse_mm(x, torch.zeros(16, 8, dtype=torch.float16), comp)


@pytest.mark.skipif(CUDA, reason="checks the no-CUDA message")
def test_ops_unavailable_without_cuda():
    x = torch.randn(3, 32, dtype=torch.float16)
    with pytest.raises(BackendUnavailableError, match="no CUDA device"):
        sparse_mm.cslt_mm(x, torch.zeros(64, dtype=torch.uint8), 16)
    assert not sparse_mm.cslt_available() and not sparse_mm.cutlass_available()
    assert sparse_mm.cslt_version() == 0
    assert "no CUDA" in sparse_mm.extension_status()


@pytest.fixture
def fresh_loader(monkeypatch):
    sparse_mm._reset_for_tests()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    yield
    monkeypatch.undo()
    sparse_mm._reset_for_tests()


@pytest.mark.skipif(CUDA, reason="fakes a CUDA machine without the extension")
def test_loader_reports_missing_build_module(fresh_loader, monkeypatch):
    import ria_kernels
    monkeypatch.delattr(ria_kernels, "_build", raising=False)
    monkeypatch.setitem(sys.modules, "ria_kernels._build", None)  # import raises ImportError
    assert not sparse_mm.load_ops()
    assert "ria_kernels._build is not importable" in sparse_mm.extension_status()


@pytest.mark.skipif(CUDA, reason="fakes a CUDA machine without the extension")
def test_loader_reports_unbuilt_extension(fresh_loader, monkeypatch, caplog):
    fake = types.ModuleType("ria_kernels._build")
    fake.load_extension = lambda: None
    fake.extension_status = lambda: "not built: nvcc missing"
    monkeypatch.setitem(sys.modules, "ria_kernels._build", fake)
    import ria_kernels
    monkeypatch.setattr(ria_kernels, "_build", fake, raising=False)
    with caplog.at_level("WARNING", logger="ria_kernels"):
        assert not sparse_mm.load_ops()
    assert sparse_mm.extension_status() == "not built: nvcc missing"
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "CUDA is available but the extension" in warned[0]
    assert "pip install --no-build-isolation -e ." in warned[0]
    with pytest.raises(BackendUnavailableError, match="nvcc missing"):
        sparse_mm.cslt_cache_stats()


_SCRATCH = "ria_kernels_fake_test"


@pytest.fixture(scope="module")
def scratch_ops():
    """The extension's schemas in a scratch namespace with CPU kernels (reference math on a
    dense copy), so the Python fakes can be exercised under torch.compile on a CPU machine."""
    lib = torch.library.Library(_SCRATCH, "DEF")
    lib.define("cslt_compress(Tensor weight) -> Tensor")
    lib.define("cslt_search(Tensor x, Tensor compressed, int out_features, Tensor? bias, Tensor? alpha) -> int[]")
    lib.define("cslt_mm(Tensor x, Tensor compressed, int out_features, Tensor? bias, Tensor? alpha, int alg_id, "
               "int split_k, int split_k_mode) -> Tensor")
    lib.define("cutlass_compress(Tensor weight) -> Tensor[]")
    lib.define("cutlass_sparse_mm(Tensor x, Tensor values, Tensor meta, Tensor? bias, Tensor? alpha) -> Tensor")

    def cslt_mm_cpu(x, comp, n, bias, alpha, alg, sk, skm):
        w = comp.view(x.dtype).view(n, -1)  # scratch "compression" = the raw weight bytes
        return sparse_mm_reference(x, w, bias, alpha).to(x.dtype)

    lib.impl("cslt_mm", cslt_mm_cpu, "CPU")
    lib.impl("cslt_compress", lambda w: w.contiguous().view(-1).view(torch.uint8).clone(), "CPU")
    sparse_mm._register_fakes(_SCRATCH)
    yield getattr(torch.ops, _SCRATCH)
    lib._destroy()


@pytest.mark.skipif(CUDA, reason="scratch CPU namespace only on CPU machines")
def test_fake_impls_shapes(scratch_ops):
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv
    with FakeTensorMode(shape_env=ShapeEnv()):
        x = torch.empty(7, 64, dtype=torch.bfloat16)
        w = torch.empty(48, 64, dtype=torch.bfloat16)
        comp = scratch_ops.cslt_compress(w)
        assert comp.dtype == torch.uint8 and comp.dim() == 1
        y = scratch_ops.cslt_mm(x, comp, 48, None, None, -1, 1, 0)
        assert y.shape == (7, 48) and y.dtype == torch.bfloat16
        values, meta = scratch_ops.cutlass_compress(w)
        assert values.shape == (48, 32) and values.dtype == torch.bfloat16
        y2 = scratch_ops.cutlass_sparse_mm(x, values, meta, None, None)
        assert y2.shape == (7, 48) and y2.dtype == torch.bfloat16
        with pytest.raises(RuntimeError, match="cannot be traced"):
            scratch_ops.cslt_search(x, comp, 48, None, None)


@pytest.mark.skipif(CUDA, reason="scratch CPU namespace only on CPU machines")
def test_fake_impls_under_torch_compile(scratch_ops):
    torch._dynamo.reset()
    w = pruned_24(32, 64, torch.float32, seed=3)
    comp = scratch_ops.cslt_compress(w)
    b = torch.randn(32)

    def f(x):
        return scratch_ops.cslt_mm(x, comp, 32, b, None, -1, 1, 0) * 2

    cf = torch.compile(f, fullgraph=True, dynamic=True)
    for t in (3, 9):
        x = torch.randn(t, 64)
        torch.testing.assert_close(cf(x), 2 * sparse_mm_reference(x, w, b), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------ capture refusal seam (C++, CPU)
_CAPTURE_TEST = r"""
#include "ria_capture.h"
#include <cstdio>
int main() {
  const char* what = "cuSPARSELt plan init";
  std::string none = ria::capture_refusal(cudaStreamCaptureStatusNone, what);
  std::string active = ria::capture_refusal(cudaStreamCaptureStatusActive, what);
  std::string invalid = ria::capture_refusal(cudaStreamCaptureStatusInvalidated, what);
  std::printf("none=[%s]\nactive=[%s]\ninvalidated=[%s]\n", none.c_str(), active.c_str(), invalid.c_str());
  return 0;
}
"""


def _cuda_include_dir():
    from torch.utils.cpp_extension import CUDA_HOME
    for home in (os.environ.get("CUDA_HOME"), CUDA_HOME, "/usr/local/cuda"):
        if home and os.path.isfile(os.path.join(home, "include", "driver_types.h")):
            return os.path.join(home, "include")
    return None


def test_capture_refusal_decision_compiled_on_cpu(tmp_path):
    """csrc/ria_capture.h: the decision the C++ ops make before plan init / search / compress while the
    stream is capturing, compiled with the host compiler and the CUDA headers and run on the CPU."""
    cxx, inc = shutil.which("g++") or shutil.which("c++"), _cuda_include_dir()
    if cxx is None or inc is None:
        pytest.skip("needs a host C++ compiler and the CUDA toolkit headers (driver_types.h)")
    src, exe = tmp_path / "capture_test.cpp", tmp_path / "capture_test"
    src.write_text(_CAPTURE_TEST)
    csrc = os.path.join(os.path.dirname(sparse_mm.__file__), "..", "..", "csrc")
    subprocess.run([cxx, "-std=c++17", "-I", csrc, "-I", inc, str(src), "-o", str(exe)], check=True,
                   capture_output=True, timeout=120)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=30).stdout
    lines = dict(line.split("=", 1) for line in out.splitlines())
    assert lines["none"] == "[]"  # not capturing: plan init / search may run
    for state, phrase in (("active", "is being captured into a CUDA graph"),
                          ("invalidated", "invalidated CUDA-graph capture")):
        msg = lines[state]
        assert msg.startswith("[ria_kernels: cuSPARSELt plan init cannot run while the current CUDA stream ")
        assert phrase in msg and "before capturing" in msg and "\n" not in msg


# --------------------------------------------------------------------------- GPU
def _case(t, dtype, bias, n=256, k=512, seed=0):
    w = pruned_24(n, k, dtype, seed=seed, device="cuda")
    g = torch.Generator().manual_seed(seed + t)
    x = torch.randn(t, k, generator=g).to(dtype).cuda()
    b = torch.randn(n, generator=g).to(dtype).cuda() if bias else None
    return w, x, b


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("tokens", TOKENS)
def test_cslt_mm_matches_reference(tokens, bias, dtype):
    _skip_unless("cusparselt")
    w, x, b = _case(tokens, dtype, bias)
    comp = sparse_mm.cslt_compress(w)
    alpha = torch.rand(w.shape[0], device="cuda") + 0.5
    for cfg_alpha in (None, alpha):
        ref = sparse_mm_reference(x, w, b, cfg_alpha)
        cfg = sparse_mm.cslt_search(x, comp, w.shape[0], b, cfg_alpha)
        assert len(cfg) == 3 and cfg[0] >= 0 and cfg[1] >= 1
        for config in (sparse_mm.AUTO_CONFIG, cfg, (0, 1, 0)):
            poison_allocator(tokens * w.shape[0] * 2)
            y = sparse_mm.cslt_mm(x, comp, w.shape[0], b, cfg_alpha, config)
            assert y.shape == (tokens, w.shape[0]) and y.dtype == dtype and y.is_contiguous()
            assert_rel_close(y, ref, dtype)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("tokens", TOKENS)
def test_cutlass_sparse_mm_matches_reference(tokens, bias, dtype):
    _skip_unless("cutlass")
    w, x, b = _case(tokens, dtype, bias)
    values, meta = sparse_mm.cutlass_compress(w)
    assert values.shape == (w.shape[0], w.shape[1] // 2) and values.dtype == dtype
    alpha = torch.rand(w.shape[0], device="cuda") + 0.5
    for a in (None, alpha):
        poison_allocator(tokens * w.shape[0] * 2)
        y = sparse_mm.cutlass_sparse_mm(x, values, meta, b, a)
        assert y.shape == (tokens, w.shape[0]) and y.dtype == dtype
        assert_rel_close(y, sparse_mm_reference(x, w, b, a), dtype)


@needs_cuda
def test_cslt_plan_and_search_cache():
    _skip_unless("cusparselt")
    w, x, b = _case(64, torch.float16, True, seed=5)
    comp = sparse_mm.cslt_compress(w)
    sparse_mm.cslt_clear_cache()
    assert sparse_mm.cslt_cache_stats() == (0, 0, 0)
    sparse_mm.cslt_mm(x, comp, w.shape[0], b)  # alg -1: search + plan miss
    h1, m1, s1 = sparse_mm.cslt_cache_stats()
    assert s1 == 1 and m1 >= 1
    y = sparse_mm.cslt_mm(x, comp, w.shape[0], b)  # cached config and plan
    h2, m2, s2 = sparse_mm.cslt_cache_stats()
    assert (h2, m2, s2) == (h1 + 1, m1, s1), "second call must hit the plan cache without searching"
    assert_rel_close(y, sparse_mm_reference(x, w, b), torch.float16)


@needs_cuda
@pytest.mark.parametrize("op", ["cusparselt", "cutlass"])
def test_ops_under_torch_compile(op):
    _skip_unless(op)
    torch._dynamo.reset()
    w, x, b = _case(129, torch.bfloat16, True, seed=7)
    if op == "cusparselt":
        comp = sparse_mm.cslt_compress(w)
        cfg = sparse_mm.cslt_search(x, comp, w.shape[0], b, None)
        fn = lambda x: torch.ops.ria_kernels.cslt_mm(x, comp, w.shape[0], b, None, *cfg) * 2  # noqa: E731
    else:
        values, meta = sparse_mm.cutlass_compress(w)
        fn = lambda x: sparse_mm.cutlass_mm_op(meta)(x, values, meta, b, None) * 2  # noqa: E731
    cf = torch.compile(fn, fullgraph=True)
    assert_rel_close(cf(x) / 2, sparse_mm_reference(x, w, b), torch.bfloat16)


@needs_cuda
@pytest.mark.parametrize("op", ["cusparselt", "cutlass"])
def test_ops_in_cuda_graph(op):
    _skip_unless(op)
    w, x, b = _case(8, torch.float16, True, seed=9)
    if op == "cusparselt":
        comp = sparse_mm.cslt_compress(w)
        cfg = sparse_mm.cslt_search(x, comp, w.shape[0], b, None)
        fn = lambda x: torch.ops.ria_kernels.cslt_mm(x, comp, w.shape[0], b, None, *cfg)  # noqa: E731
    else:
        values, meta = sparse_mm.cutlass_compress(w)
        fn = lambda x: sparse_mm.cutlass_mm_op(meta)(x, values, meta, b, None)  # noqa: E731
    new_x = torch.randn_like(x)
    static_y = cuda_graph_replay(fn, x.clone(), new_x)  # the plan is created in the warm-up, outside capture
    assert_rel_close(static_y, sparse_mm_reference(new_x, w, b), torch.float16)


@needs_cuda
def test_cslt_search_caches_the_searched_plan_itself():
    """cslt_search's plan is the one a call with the returned config runs (no second plan init, so split-K
    buffers and every other searched attribute are the ones that won)."""
    _skip_unless("cusparselt")
    w, x, b = _case(256, torch.float16, True, seed=11)
    comp = sparse_mm.cslt_compress(w)
    sparse_mm.cslt_clear_cache()
    cfg = sparse_mm.cslt_search(x, comp, w.shape[0], b, None)
    assert sparse_mm.cslt_cache_stats() == (0, 1, 1)  # the search built one plan
    y = sparse_mm.cslt_mm(x, comp, w.shape[0], b, None, cfg)
    assert sparse_mm.cslt_cache_stats() == (1, 1, 1), "the explicit searched config must reuse the searched plan"
    assert_rel_close(y, sparse_mm_reference(x, w, b), torch.float16)
    sparse_mm.cslt_mm(x, comp, w.shape[0], b)  # alg -1: the cached searched config, same plan
    assert sparse_mm.cslt_cache_stats() == (2, 1, 1)


@needs_cuda
def test_cslt_refuses_plan_init_and_search_inside_capture():
    _skip_unless("cusparselt")
    w, x, b = _case(24, torch.float16, True, seed=13)
    comp = sparse_mm.cslt_compress(w)
    sparse_mm.cslt_clear_cache()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for config in (sparse_mm.AUTO_CONFIG, (0, 1, 0)):  # search / plan init for an unseen shape
            with pytest.raises(RuntimeError, match="is being captured into a CUDA graph"):
                with torch.cuda.graph(torch.cuda.CUDAGraph(), stream=stream):
                    sparse_mm.cslt_mm(x, comp, w.shape[0], b, None, config)
    torch.cuda.current_stream().wait_stream(stream)
    assert sparse_mm.cslt_cache_stats()[1:] == (0, 0), "nothing may be planned or searched inside capture"


@needs_cuda
def test_cslt_mm_from_several_threads():
    """Thread-local cuSPARSELt handles: concurrent calls from worker threads match the reference."""
    import concurrent.futures
    _skip_unless("cusparselt")
    w, x, b = _case(64, torch.bfloat16, True, seed=17)
    comp = sparse_mm.cslt_compress(w)
    ref = sparse_mm_reference(x, w, b)

    def work(i):
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            ys = [sparse_mm.cslt_mm(x, comp, w.shape[0], b) for _ in range(4)]
        stream.synchronize()
        return ys

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for ys in pool.map(work, range(4)):
            for y in ys:
                assert_rel_close(y, ref, torch.bfloat16)
